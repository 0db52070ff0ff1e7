"""A TEST STAND-IN for the KubeRay operator (v1.7.0): what it does with RayService objects, in Python.

It is NOT KubeRay and it runs no Go code: no KubeRay operator can be built or run in this test environment, so this
module re-implements, from reading KubeRay v1.7.0's source (github.com/ray-project/kuberay, ray-operator/controllers/
ray/...), the part of the RayService and RayCluster controllers the platform depends on, against the real API server
of :class:`tests.k8s.cluster.Cluster`. A background thread reconciles the RayServices (and RayClusters) of the given
namespaces every ``interval`` seconds (KubeRay is event-driven with a 2 s requeue; polling gives the same result a
little later)::

    with KubeRayStandIn(cluster, ["demo"], proxy_healthy=lambda pod: True, dashboard=FakeDashboards()) as kuberay:
        ...                                   # RayService -> RayCluster -> Pods, Services, serve config, status
        print(kuberay.dump())                 # state + errors, for failure messages

Reproduced (KubeRay source file in brackets, paths under ray-operator/controllers/ray/):

* RayCluster ``<rayservice>-<5 random chars>`` built from ``rayClusterConfig`` with KubeRay's labels/annotations
  (hash of the spec without replicas/min/max/workersToDelete/tolerations/schedulingGates, number of worker groups,
  KubeRay version) and a controller ownerReference to the RayService [rayservice_controller.go
  constructRayClusterForRayService, utils/util.go GenerateHashWithoutReplicasAndWorkersToDelete].
* Ray pods: head ``<cluster>-head-xxxxx`` and, per worker group, ``<cluster>-<group>-worker-xxxxx`` (replicas clamped
  to min/max, times numOfHosts), KubeRay's labels (ray.io/cluster, node-type, group, is-ray-node, identifier, serve,
  worker-group-replica-index, app.kubernetes.io/name|created-by + the template's), the Ray container's command
  replaced by ``/bin/bash -c -- "ulimit -n ...; ray start ..."`` with flags from rayStartParams and the container's
  resources, the injected env vars (incl. the fieldRef ones), the /dev/shm and /tmp/ray emptyDirs, the metrics port,
  liveness/readiness probes when the template has none, the ``wait-gcs-ready`` init container of workers, the
  autoscaler sidecar (+ autoscalerOptions) and its ServiceAccount/Role/RoleBinding when enableInTreeAutoscaling
  [common/pod.go, common/rbac.go, raycluster_controller.go buildHeadPod/buildWorkerPod/reconcilePods].
* Services: the RayCluster's head Service ``<cluster>-head-svc`` (headless, ports from the head container's ports),
  the RayService's ``<rayservice>-head-svc`` and serve Service (default ``<rayservice>-serve-svc`` or
  spec.serveService, selector always {ray.io/cluster: <serving cluster>, ray.io/serve: "true"}), created once a
  cluster's Serve apps are all RUNNING and re-pointed only when the serving cluster changes [common/service.go,
  rayservice_controller.go reconcileServices].
* The ray.io/serve label of the head pod from its Serve proxy health (GET http://<podIP>:<serve port>/-/healthz, 2 s),
  always "false" with excludeHeadPodFromServeSvc [rayservice_controller.go updateHeadPodServeLabel].
* Serve config: when the head pod is Ready, GET http://<head>:<dashboard port>/api/serve/applications/?api_type=
  declarative, and PUT the serveConfigV2 YAML converted to JSON when nothing was submitted to that cluster yet, the
  config differs from the cached one, or the cluster reports no application (an EMPTY serveConfigV2 is PUT as ``{}``
  on every reconcile, because KubeRay never caches an empty config) [rayservice_controller.go reconcileServe,
  checkIfNeedSubmitServeApplications, updateServeDeployment; utils/dashboardclient/dashboard_httpclient.go].
* Status like KubeRay v1.x: activeServiceStatus/pendingServiceStatus {rayClusterName, applicationStatuses,
  rayClusterStatus}, numServeEndpoints (ready endpoints of the serve Service's EndpointSlices), conditions Ready /
  UpgradeInProgress, serviceStatus "Running" iff Ready, observedGeneration [rayservice_controller.go calculateStatus,
  calculateConditions]; the RayCluster's own status (state, replicas, endpoints, head, HeadPodReady/
  RayClusterProvisioned conditions) [raycluster_controller.go calculateStatus].
* Upgrades: a rayClusterConfig change whose hash differs -> (upgradeStrategy NewCluster, the default) a pending
  cluster, served once all its apps are RUNNING, then the Services switch to it, it becomes active and the old cluster
  is deleted rayClusterDeletionDelaySeconds (default 60) later; upgradeStrategy None -> nothing; worker groups
  appended at the end -> the cluster is updated in place. Like KubeRay, a change of replicas/minReplicas/maxReplicas
  ALONE is NOT propagated to the RayCluster (the autoscaler owns them; kuberay#2331, "intended behaviour"); a
  RayCluster whose replicas change (autoscaler, kubectl) is scaled by adding/removing worker pods (removal only without
  in-tree autoscaling) [rayservice_controller.go shouldPrepareNewCluster, shouldUpdateCluster,
  cleanUpRayClusterInstance; raycluster_controller.go reconcilePods].
* The ray.io/rayservice-finalizer: a deleted RayService first deletes its RayClusters, then loses the finalizer; the
  garbage collector removes the Services and pods through the ownerReferences [rayservice_controller.go Reconcile].

Simplified or left out (on purpose):

* The dashboard and proxy are reached at the head/worker POD IP (no cluster DNS here) instead of the head Service's
  FQDN; the generated ``ray start --address=<cluster>-head-svc.<ns>.svc.cluster.local:6379`` still uses the FQDN.
* ``proxy_healthy`` also decides the ray.io/serve label of WORKER pods (``label_workers_by_proxy_health``, default on):
  KubeRay keeps workers at "true" and lets their readiness probe (which includes the proxy check) take them out of the
  endpoints; kubelet stand-ins run no probes, so this emulates that probe.
* The hash is KubeRay's idea (same excluded fields, sha1 + base32hex) over canonical JSON, not byte-equal to Go's.
* Not simulated: GCS fault tolerance (only the ray.io/ft-enabled annotation), auth/TLS options, history server,
  ingress/route, NewClusterWithIncrementalUpgrade (treated as NewCluster), suspend, the initializing-timeout
  annotation, events (``events`` is a plain log), desiredCPU/GPU status fields, KubeRay's scale expectations.
* Optional (constructor flags): the autoscaler sidecar can be left out (``autoscaler_sidecar=False``; everything else,
  e.g. --no-monitor and the ServiceAccount, stays as KubeRay makes it), as can the ``wait-gcs-ready`` init container
  and the probe injection (KubeRay's ENABLE_INIT_CONTAINER_INJECTION / ENABLE_PROBES_INJECTION operator env vars).

Only the standard library is used; serveConfigV2 is parsed with PyYAML when it is importable (the test venv has it),
otherwise it must be JSON (JSON is YAML). Hooks let object-level tests, whose fake kubelet runs nothing, decide what
the Ray processes would answer: ``proxy_healthy(pod) -> bool`` and ``dashboard(raycluster, head_pod, url) -> client``
(see :class:`FakeDashboards`). No failing call stops the loop: errors are collected in ``errors``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import math
import random
import re
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from fractions import Fraction
from typing import Any, Protocol

from tests.k8s.cluster import Cluster, KubeError, now_rfc3339, pod_is_ready

# ---- KubeRay constants (utils/constant.go, utils/util.go, v1.7.0) -------------------------------------------------
KUBERAY_VERSION = "v1.7.0"
RAY_CLUSTER_LABEL = "ray.io/cluster"
RAY_NODE_TYPE_LABEL = "ray.io/node-type"
RAY_GROUP_LABEL = "ray.io/group"
RAY_NODE_LABEL = "ray.io/is-ray-node"
RAY_ID_LABEL = "ray.io/identifier"
RAY_SERVE_LABEL = "ray.io/serve"
RAY_ORIGINATED_NAME_LABEL = "ray.io/originated-from-cr-name"
RAY_ORIGINATED_CRD_LABEL = "ray.io/originated-from-crd"
RAY_HEADLESS_SVC_LABEL = "ray.io/headless-worker-svc"
RAY_REPLICA_NAME_LABEL = "ray.io/worker-group-replica-name"
RAY_REPLICA_INDEX_LABEL = "ray.io/worker-group-replica-index"
RAY_HOST_INDEX_LABEL = "ray.io/replica-host-index"
HASH_ANNOTATION = "ray.io/hash-without-replicas-and-workers-to-delete"
NUM_WORKER_GROUPS_ANNOTATION = "ray.io/num-worker-groups"
KUBERAY_VERSION_ANNOTATION = "ray.io/kuberay-version"
FT_ENABLED_ANNOTATION = "ray.io/ft-enabled"
OVERWRITE_CMD_ANNOTATION = "ray.io/overwrite-container-cmd"
ENABLE_SERVE_SERVICE_ANNOTATION = "ray.io/enable-serve-service"
RAYSERVICE_FINALIZER = "ray.io/rayservice-finalizer"
APP_NAME_LABEL = "app.kubernetes.io/name"
CREATED_BY_LABEL = "app.kubernetes.io/created-by"
APPLICATION_NAME = "kuberay"
COMPONENT_NAME = "kuberay-operator"
HEAD_GROUP = "headgroup"
MANAGED_BY_KUBERAY = "ray.io/kuberay-operator"

DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
DEFAULT_METRICS_PORT = 8080
DEFAULT_AGENT_PORT = 52365
DEFAULT_SERVING_PORT = 8000
DEFAULT_DELETION_DELAY = 60.0
HTTP_TIMEOUT = 2.0  # RayHTTPClientDirectTimeoutSeconds

RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
RAY_CONTAINER = 0

API = "/apis/ray.io/v1/namespaces"


class Requeue(Exception):
    """An expected transient state (e.g. a cluster's head pod not created yet): KubeRay returns an error and requeues;
    the stand-in logs it in ``events`` instead of ``errors``."""


# ---- resource quantities (k8s.io/apimachinery resource.Quantity) ------------------------------------------------
_SUFFIXES = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(([eE][+-]?[0-9]+)|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def parse_quantity(q: Any) -> Fraction:
    """A Kubernetes quantity ("500m", "4Gi", 2, "1e3") as an exact fraction."""
    if isinstance(q, bool):
        raise ValueError(f"not a quantity: {q!r}")
    if isinstance(q, int):
        return Fraction(q)
    if isinstance(q, float):
        return Fraction(str(q))
    m = _QUANTITY.match(str(q).strip())
    if not m:
        raise ValueError(f"not a quantity: {q!r}")
    number, suffix, exponent = Fraction(m.group(1)), m.group(2) or "", m.group(3)
    if exponent:
        return number * Fraction(10) ** int(exponent[1:])
    return number * _SUFFIXES[suffix]


def quantity_value(q: Any) -> int:
    """resource.Quantity.Value(): the value rounded UP to an integer ("500m" -> 1)."""
    return math.ceil(parse_quantity(q))


def _go_float(x: float) -> Any:
    """A float as Go's encoding/json writes it (1.0 -> 1)."""
    return int(x) if float(x).is_integer() and abs(x) < 1e21 else x


def go_json(obj: Any) -> str:
    """json.Marshal of a map[string]any: sorted keys, compact, UTF-8, HTML characters escaped as Go does."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def is_gpu_resource(name: str) -> bool:
    """utils/resources.go IsGPUResourceKey."""
    return name.endswith("gpu") or bool(re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", name))


CUSTOM_ACCELERATORS = {"aws.amazon.com/neuroncore": "neuron_cores", "google.com/tpu": "TPU"}


# ---- names (utils/util.go) --------------------------------------------------------------------------------------
def rand_string(n: int = 5, rng: random.Random | None = None) -> str:
    r = rng or random
    return "".join(r.choice(RAND_ALPHABET) for _ in range(n))


def check_name(s: str) -> str:
    """utils.CheckName: at most 50 characters (cut from the front), no leading digit or punctuation."""
    if len(s) > 50:
        s = s[len(s) - 50 :]
    if s and (s[0].isdigit() or not s[0].isalnum()):
        s = "r" + s[1:]
    return s


def check_label(s: str) -> str:
    """utils.CheckLabel: at most 63 characters (cut from the front), no leading punctuation."""
    if len(s) > 63:
        s = s[len(s) - 63 :]
    if s and not s[0].isalnum():
        s = "r" + s[1:]
    return s


def pod_name_prefix(prefix: str, node_type: str) -> str:
    """utils.PodName(prefix, nodeType, isGenerateName=true): the generateName of a Ray pod."""
    return (prefix[:50] + "-" + node_type).lower() + "-"


def head_service_name(cluster: dict) -> str:
    """utils.GenerateHeadServiceName(RayClusterCRD, ...)."""
    hs = (cluster["spec"]["headGroupSpec"].get("headService") or {}).get("metadata") or {}
    return hs.get("name") or f"{cluster['metadata']['name']}-head-svc"


def head_fqdn(cluster: dict, domain: str = "cluster.local") -> str:
    return f"{head_service_name(cluster)}.{cluster['metadata']['namespace']}.svc.{domain}"


def serve_service_name(rs: dict) -> str:
    """common.RayServiceServeServiceNamespacedName."""
    custom = ((rs["spec"].get("serveService") or {}).get("metadata") or {}).get("name")
    return custom or f"{rs['metadata']['name']}-serve-svc"


def head_port(cluster_spec: dict) -> str:
    return (cluster_spec["headGroupSpec"].get("rayStartParams") or {}).get("port", str(DEFAULT_GCS_PORT))


def autoscaling_enabled(cluster_spec: dict) -> bool:
    return bool(cluster_spec.get("enableInTreeAutoscaling"))


def autoscaler_version(cluster_spec: dict) -> str | None:
    return (cluster_spec.get("autoscalerOptions") or {}).get("version")


def ft_enabled(cluster: dict) -> bool:
    ann = cluster["metadata"].get("annotations") or {}
    annotated = ann.get(FT_ENABLED_ANNOTATION, "").lower() == "true"
    return annotated or cluster["spec"].get("gcsFaultToleranceOptions") is not None


def desired_replicas(group: dict) -> int:
    """utils.GetWorkerGroupDesiredReplicas: replicas clamped to [minReplicas, maxReplicas], times numOfHosts."""
    if group.get("suspend"):
        return 0
    lo = group.get("minReplicas") or 0
    hi = group.get("maxReplicas") if group.get("maxReplicas") is not None else 2**31 - 1
    replicas = group.get("replicas")
    n = lo if replicas is None or replicas < lo else min(replicas, hi)
    return n * num_of_hosts(group)


def num_of_hosts(group: dict) -> int:
    return max(1, int(group.get("numOfHosts") or 1))  # the real CRD defaults it to 1


def _env_exists(name: str, env: list[dict]) -> bool:
    return any(e.get("name") == name for e in env)


def _find_port(container: dict, name: str, default: int) -> int:
    for p in container.get("ports") or []:
        if p.get("name") == name:
            return int(p["containerPort"])
    return default


def _owner_ref(obj: dict, kind: str | None = None) -> dict:
    return {
        "apiVersion": obj.get("apiVersion") or "ray.io/v1",
        "kind": kind or obj["kind"],
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if not m:
        return False
    return tuple(int(g or 0) for g in m.groups()) >= minimum


# ---- hashing (utils/util.go GenerateHashWithoutReplicasAndWorkersToDelete) -------------------------------------
def _prune_empty(obj: Any) -> Any:
    """Drop null/empty values, as Go's omitempty does when KubeRay marshals the typed spec."""
    if isinstance(obj, dict):
        out = {k: _prune_empty(v) for k, v in obj.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(obj, list):
        return [_prune_empty(v) for v in obj]
    return obj


def cluster_spec_hash(spec: dict) -> str:
    """Hash of a RayClusterSpec without the fields that must not roll out a new cluster: worker replicas/min/max,
    workersToDelete, tolerations and scheduling gates of all templates, upgradeStrategy (and suspend, which KubeRay
    clears before hashing a RayService's spec). sha1 + base32hex like KubeRay; the JSON is canonical, not Go's."""
    s = copy.deepcopy(spec)
    s.pop("suspend", None)
    s.pop("upgradeStrategy", None)
    head_spec = (s.get("headGroupSpec") or {}).get("template", {}).get("spec") or {}
    head_spec.pop("tolerations", None)
    head_spec.pop("schedulingGates", None)
    for g in s.get("workerGroupSpecs") or []:
        for k in ("replicas", "minReplicas", "maxReplicas"):
            g.pop(k, None)
        (g.get("scaleStrategy") or {}).pop("workersToDelete", None)
        tspec = (g.get("template") or {}).get("spec") or {}
        tspec.pop("tolerations", None)
        tspec.pop("schedulingGates", None)
    digest = hashlib.sha1(go_json(_prune_empty(s)).encode()).digest()  # not for security, as in KubeRay
    return base64.b32hexencode(digest).decode()


def _hash_first_groups(spec: dict, n: int) -> str:
    s = copy.deepcopy(spec)
    s["workerGroupSpecs"] = (s.get("workerGroupSpecs") or [])[:n]
    return cluster_spec_hash(s)


# ---- ray start (common/pod.go) ----------------------------------------------------------------------------------
def convert_param_map(params: dict[str, str]) -> str:
    """convertParamMap: sorted flags; "true"/"false" values are switches (except log-color, include-dashboard,
    include-log-monitor); each flag is written as " --flag " or " --flag=value " (hence the double spaces)."""
    out = []
    for key in sorted(params):
        value = str(params[key])
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard", "include-log-monitor"):
            if value.lower() == "true":
                out.append(f" --{key} ")
        else:
            out.append(f" --{key}={value} ")
    return "".join(out)


def _update_params_from_group(params: dict[str, str], group: dict) -> None:
    """updateRayStartParamsResources / updateRayStartParamsLabels: the group's top-level resources and labels."""
    extra: dict[str, Any] = {}
    for name, qty in (group.get("resources") or {}).items():
        try:
            q = parse_quantity(qty)
        except ValueError:
            continue
        low = name.lower()
        if low == "cpu":
            params["num-cpus"] = str(math.ceil(q))
        elif low == "memory":
            params["memory"] = str(math.ceil(q))
        elif is_gpu_resource(low):
            params["num-gpus"] = str(math.ceil(q))
        else:
            extra[name] = _go_float(float(q))
    if extra:
        params["resources"] = f"'{go_json(extra)}'"
    labels = group.get("labels") or {}
    if labels:
        params["labels"] = ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def set_missing_params(params: dict[str, str], node_type: str, port: str, fqdn: str) -> dict[str, str]:
    """setMissingRayStartParams."""
    if node_type == "worker" and "address" not in params:
        params["address"] = f"{fqdn}:{port}"
    if node_type == "head" and "dashboard-host" not in params:
        params["dashboard-host"] = "0.0.0.0"
    params.setdefault("metrics-export-port", str(DEFAULT_METRICS_PORT))
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(DEFAULT_AGENT_PORT))
    return params


def ray_start_command(node_type: str, params: dict[str, str], resources: dict | None) -> str:
    """generateRayStartCommand: --num-cpus (limit, else request), --memory (limit), --num-gpus (first GPU limit) and
    the first custom accelerator from the container's resources when rayStartParams lacks them. Mutates params."""
    resources = resources or {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if "num-cpus" not in params:
        for src in (limits, requests):
            if "cpu" in src and parse_quantity(src["cpu"]) != 0:
                params["num-cpus"] = str(quantity_value(src["cpu"]))
                break
    if "memory" not in params and "memory" in limits and parse_quantity(limits["memory"]) != 0:
        params["memory"] = str(quantity_value(limits["memory"]))
    if limits:
        res_map: dict[str, Any] = {}
        if "resources" in params:
            res_map = json.loads(params["resources"].strip("'\"` "))
        custom_added = any(v in res_map for v in CUSTOM_ACCELERATORS.values())
        for key in sorted(limits):
            value = parse_quantity(limits[key])
            if "num-gpus" not in params and is_gpu_resource(key) and value != 0:
                params["num-gpus"] = str(math.ceil(value))
            if not custom_added and key in CUSTOM_ACCELERATORS and value != 0:
                if CUSTOM_ACCELERATORS[key] not in res_map:
                    res_map[CUSTOM_ACCELERATORS[key]] = _go_float(float(value))
                    params["resources"] = f"'{go_json(res_map)}'"
                custom_added = True
    flags = convert_param_map(params)
    return f"ray start --head {flags}" if node_type == "head" else f"ray start {flags}"


def container_command() -> list[str]:
    """utils.GetContainerCommand (ENABLE_LOGIN_SHELL unset)."""
    return ["/bin/bash", "-c", "--"]


def _field_env(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _wait_gcs_ready_script(fqdn: str, port: str) -> str:
    """The args of KubeRay's wait-gcs-ready init container, byte for byte (Go raw string with its tab indentation)."""
    t = "\t"
    lines = [
        "SECONDS=0",
        "while true; do",
        t + "if (( SECONDS <= 120 )); then",
        2 * t + f"if ray health-check --address {fqdn}:{port} > /dev/null 2>&1; then",
        3 * t + 'echo "GCS is ready."',
        3 * t + "break",
        2 * t + "fi",
        2 * t + 'echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."',
        t + "else",
        2 * t + f"if ray health-check --address {fqdn}:{port}; then",
        3 * t + 'echo "GCS is ready. Any error messages above can be safely ignored."',
        3 * t + "break",
        2 * t + "fi",
        2 * t + 'echo "$SECONDS seconds elapsed: Still waiting for GCS to be ready. For troubleshooting, refer to the '
        'FAQ at https://docs.ray.io/en/master/cluster/kubernetes/troubleshooting.html."',
        t + "fi",
        t + "sleep 5",
        "done",
    ]
    return "\n" + "".join(5 * t + line + "\n" for line in lines) + 4 * t


def build_autoscaler_container(image: str, options: dict | None) -> dict:
    """BuildAutoscalerContainer + mergeAutoscalerOverrides."""
    cmd = "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) --cluster-namespace $(RAY_CLUSTER_NAMESPACE)"
    c: dict[str, Any] = {
        "name": "autoscaler",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            _field_env("RAY_CLUSTER_NAME", f"metadata.labels['{RAY_CLUSTER_LABEL}']"),
            _field_env("RAY_CLUSTER_NAMESPACE", "metadata.namespace"),
            _field_env("RAY_HEAD_POD_NAME", "metadata.name"),
            {"name": "KUBERAY_CRD_VER", "value": "v1"},
            {"name": "KUBERAY_GEN_AUTOSCALER_START_CMD", "value": cmd},
        ],
        "command": container_command(),
        "args": [cmd],
        "resources": {
            "limits": {"cpu": "500m", "memory": "512Mi"},
            "requests": {"cpu": "500m", "memory": "512Mi"},
        },
    }
    o = copy.deepcopy(options or {})
    if o.get("resources") is not None:
        c["resources"] = o["resources"]
    for key in ("image", "imagePullPolicy"):
        if o.get(key) is not None:
            c[key] = o[key]
    for key in ("env", "envFrom", "volumeMounts"):
        if o.get(key):
            c[key] = [*(c.get(key) or []), *o[key]]
    if o.get("securityContext") is not None:
        c["securityContext"] = o["securityContext"]
    for key in ("command", "args"):
        if o.get(key):
            c[key] = o[key]
    return c


def _add_empty_dir(container: dict, pod_spec: dict, name: str, path: str, medium: str) -> None:
    """addEmptyDir: mount (and if needed create) an emptyDir unless something is already mounted at ``path``."""
    mounts = container.setdefault("volumeMounts", [])
    if any(m.get("mountPath") == path for m in mounts):
        return
    volumes = pod_spec.setdefault("volumes", [])
    if not any(v.get("name") == name for v in volumes):
        empty_dir: dict[str, Any] = {"medium": medium} if medium else {}
        if medium == "Memory":
            res = container.get("resources") or {}
            size = (res.get("limits") or {}).get("memory") or (res.get("requests") or {}).get("memory")
            if size is not None:
                empty_dir["sizeLimit"] = size
        volumes.append({"name": name, "emptyDir": empty_dir})
    mounts.append({"name": name, "mountPath": path})


def _probes(container: dict, node_type: str, from_rayservice: bool, params: dict[str, str], ray_version: str) -> None:
    """initLivenessAndReadinessProbe: only fills probes the template leaves empty."""

    def port(key: str, default: int) -> int:
        try:
            return int(params.get(key, default))
        except ValueError:
            return default

    wget = "wget --tries 1 -T {} -q -O- http://localhost:{}/{} | grep success"
    agent = port("dashboard-agent-listen-port", DEFAULT_AGENT_PORT)
    commands = [wget.format(2, agent, "api/local_raylet_healthz")]
    if node_type == "head":
        commands.append(wget.format(10, port("dashboard-port", DEFAULT_DASHBOARD_PORT), "api/gcs_healthz"))
    http = _version_at_least(ray_version, (2, 53, 0))
    action: dict[str, Any] = (
        {"httpGet": {"path": "/api/healthz", "port": agent}}
        if http
        else {"exec": {"command": ["bash", "-c", " && ".join(commands)]}}
    )
    timeout = 5 if node_type == "head" else 2
    if container.get("livenessProbe") is None:
        container["livenessProbe"] = {
            "initialDelaySeconds": 30, "timeoutSeconds": timeout, "periodSeconds": 5, "successThreshold": 1,
            "failureThreshold": 120, **copy.deepcopy(action),
        }  # fmt: skip
    if container.get("readinessProbe") is None:
        probe = {
            "initialDelaySeconds": 10, "timeoutSeconds": timeout, "periodSeconds": 5, "successThreshold": 1,
            "failureThreshold": 10, **copy.deepcopy(action),
        }  # fmt: skip
        if from_rayservice and node_type == "worker":
            probe["failureThreshold"] = 1
            serve_port = _find_port(container, "serve", DEFAULT_SERVING_PORT)
            commands.append(wget.format(10, serve_port, "-/healthz"))
            probe.pop("httpGet", None)
            probe["exec"] = {"command": ["bash", "-c", " && ".join(commands)]}
        container["readinessProbe"] = probe


def _label_pod(node_type: str, cluster_name: str, group: str, override: dict[str, str]) -> dict[str, str]:
    """labelPod."""
    labels = {
        RAY_NODE_LABEL: "yes",
        RAY_CLUSTER_LABEL: cluster_name,
        RAY_NODE_TYPE_LABEL: node_type,
        RAY_GROUP_LABEL: group,
        RAY_ID_LABEL: check_label(f"{cluster_name}-{node_type}"),
        APP_NAME_LABEL: APPLICATION_NAME,
        CREATED_BY_LABEL: COMPONENT_NAME,
    }
    for k, v in override.items():
        if k not in (RAY_NODE_TYPE_LABEL, RAY_GROUP_LABEL, RAY_CLUSTER_LABEL):
            labels[k] = v
    return labels


class PodOptions:
    """Knobs of the pod builder (KubeRay operator flags/env vars and the stand-in's own)."""

    def __init__(
        self,
        *,
        autoscaler_sidecar: bool = True,
        inject_wait_gcs_ready: bool = True,
        inject_probes: bool = True,
        cluster_domain: str = "cluster.local",
    ):
        self.autoscaler_sidecar = autoscaler_sidecar
        self.inject_wait_gcs_ready = inject_wait_gcs_ready
        self.inject_probes = inject_probes
        self.cluster_domain = cluster_domain


def build_pod(
    cluster: dict,
    node_type: str,
    group: dict | None = None,
    *,
    replica_index: int = 0,
    replica_name: str = "",
    host_index: int = 0,
    options: PodOptions | None = None,
) -> dict:
    """The Pod KubeRay creates for the head (``group=None``) or a worker of ``group`` of a RayCluster object
    (DefaultHeadPodTemplate / DefaultWorkerPodTemplate + BuildPod + SetControllerReference)."""
    opts = options or PodOptions()
    spec = cluster["spec"]
    meta_c = cluster["metadata"]
    name, ns = meta_c["name"], meta_c["namespace"]
    from_rayservice = (meta_c.get("labels") or {}).get(RAY_ORIGINATED_CRD_LABEL) == "RayService"
    grp = spec["headGroupSpec"] if node_type == "head" else group
    assert grp is not None
    tmpl = copy.deepcopy(grp.get("template") or {})
    meta = tmpl.setdefault("metadata", {})
    pspec = tmpl.setdefault("spec", {})
    containers = pspec.setdefault("containers", [])
    if not containers:
        raise ValueError(f"RayCluster {ns}/{name}: the {node_type} template has no container")
    ray = containers[RAY_CONTAINER]
    fqdn = head_fqdn(cluster, opts.cluster_domain)
    port = head_port(spec)
    params = {k: str(v) for k, v in (grp.get("rayStartParams") or {}).items()}
    autoscaling = autoscaling_enabled(spec)
    version = autoscaler_version(spec)

    meta["namespace"] = ns
    if node_type == "head":
        meta["generateName"] = pod_name_prefix(name, "head")
    else:
        meta["generateName"] = pod_name_prefix(f"{name}-{grp['groupName']}", "worker")
        if opts.inject_wait_gcs_ready:
            pspec.setdefault("initContainers", []).append(
                {
                    "name": "wait-gcs-ready",
                    "image": ray.get("image"),
                    **({"imagePullPolicy": ray["imagePullPolicy"]} if ray.get("imagePullPolicy") else {}),
                    "command": container_command(),
                    "args": [_wait_gcs_ready_script(fqdn, port)],
                    **{k: copy.deepcopy(ray[k]) for k in ("securityContext", "env", "volumeMounts") if ray.get(k)},
                    "resources": {
                        "limits": {"cpu": "200m", "memory": "256Mi"},
                        "requests": {"cpu": "200m", "memory": "256Mi"},
                    },
                }
            )
        meta.pop("name", None)
    _update_params_from_group(params, grp)
    merged = {**(meta.get("labels") or {}), **(grp.get("labels") or {})}
    labels = _label_pod(node_type, name, HEAD_GROUP if node_type == "head" else grp["groupName"], merged)
    if node_type == "worker":
        labels[RAY_REPLICA_INDEX_LABEL] = str(replica_index)  # RayMultiHostIndexing (Beta, on by default)
        if num_of_hosts(grp) > 1:
            labels[RAY_REPLICA_NAME_LABEL] = replica_name
            labels[RAY_HOST_INDEX_LABEL] = str(host_index)
    meta["labels"] = labels
    set_missing_params(params, node_type, port, fqdn)
    annotations = meta.setdefault("annotations", {})
    if (meta_c.get("annotations") or {}).get(OVERWRITE_CMD_ANNOTATION, "").lower() == "true":
        annotations[OVERWRITE_CMD_ANNOTATION] = "true"

    autoscaler: dict | None = None
    if node_type == "head" and autoscaling:
        params["no-monitor"] = "true"
        pspec["serviceAccountName"] = check_name(pspec.get("serviceAccountName") or name)
        autoscaler = build_autoscaler_container(ray.get("image", ""), spec.get("autoscalerOptions"))
        if opts.autoscaler_sidecar:
            containers.append(autoscaler)
        if version in ("v1", "v2"):
            v2 = str(version == "v2").lower()
            ray.setdefault("env", []).append({"name": "RAY_enable_autoscaler_v2", "value": v2})
            if version == "v2":
                pspec["restartPolicy"] = "Never"
    if node_type == "head":
        annotations[FT_ENABLED_ANNOTATION] = str(ft_enabled(cluster)).lower()
    elif ft_enabled(cluster) and not _env_exists("RAY_gcs_rpc_server_reconnect_timeout_s", ray.get("env") or []):
        ray.setdefault("env", []).append({"name": "RAY_gcs_rpc_server_reconnect_timeout_s", "value": "600"})
    if _find_port(ray, "metrics", -1) == -1:
        ray.setdefault("ports", []).append({"name": "metrics", "containerPort": DEFAULT_METRICS_PORT})
    if node_type == "worker" and autoscaling and version == "v2":
        pspec["restartPolicy"] = "Never"

    # BuildPod
    if from_rayservice:
        labels[RAY_SERVE_LABEL] = "false" if node_type == "head" else "true"
    if "plasma-directory" not in params:
        _add_empty_dir(ray, pspec, "shared-mem", "/dev/shm", "Memory")
    if node_type == "head" and autoscaling:
        _add_empty_dir(ray, pspec, "ray-logs", "/tmp/ray", "")
        if opts.autoscaler_sidecar and autoscaler is not None:
            _add_empty_dir(containers[-1], pspec, "ray-logs", "/tmp/ray", "")
    cmd = "".join(f" {v} " for v in ray.get("command") or []) + "".join(f" {v} " for v in ray.get("args") or [])
    start = ray_start_command(node_type, params, ray.get("resources"))
    if annotations.get(OVERWRITE_CMD_ANNOTATION, "").lower() != "true" and "ray start" not in cmd:
        generated = "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; " + start
        ray["command"] = container_command()
        ray["args"] = [f"{cmd} && {generated}" if cmd else generated]
    for init in pspec.get("initContainers") or []:
        init.setdefault("env", []).extend(
            [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
        )
    _set_container_env(ray, node_type, fqdn, port, start, from_rayservice)
    if opts.inject_probes:
        _probes(ray, node_type, from_rayservice, params, spec.get("rayVersion") or "")
    meta["ownerReferences"] = [_owner_ref(cluster)]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": pspec}


def _set_container_env(ray: dict, node_type: str, fqdn: str, port: str, start: str, from_rayservice: bool) -> None:
    """setContainerEnvVars."""
    env = ray.setdefault("env", [])
    ip = "127.0.0.1"
    if node_type == "worker":
        ip = fqdn
        env += [{"name": "FQ_RAY_IP", "value": fqdn}, {"name": "RAY_IP", "value": fqdn.split(".")[0]}]
    env += [
        _field_env("RAY_CLUSTER_NAME", f"metadata.labels['{RAY_CLUSTER_LABEL}']"),
        _field_env("RAY_CLUSTER_NAMESPACE", "metadata.namespace"),
        _field_env("RAY_CLOUD_INSTANCE_ID", "metadata.name"),
        _field_env("RAY_NODE_TYPE_NAME", f"metadata.labels['{RAY_GROUP_LABEL}']"),
        {"name": "KUBERAY_GEN_RAY_START_CMD", "value": start},
    ]
    if not _env_exists("RAY_PORT", env):
        env.append({"name": "RAY_PORT", "value": port})
    if from_rayservice:
        for name, value in (
            ("RAY_timeout_ms_task_wait_for_death_info", "0"),
            ("RAY_gcs_server_request_timeout_seconds", "5"),
            ("RAY_SERVE_KV_TIMEOUT_S", "5"),
        ):
            if not _env_exists(name, env):
                env.append({"name": name, "value": value})
    if not _env_exists("RAY_ADDRESS", env):
        env.append({"name": "RAY_ADDRESS", "value": f"{ip}:{port}"})
    if not _env_exists("RAY_USAGE_STATS_KUBERAY_IN_USE", env):
        env.append({"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"})
    if node_type == "head":
        crd = "RayService" if from_rayservice else "RayCluster"
        tags = f"kuberay_version={KUBERAY_VERSION};kuberay_crd={crd}"
        env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS", "value": tags})
    if not _env_exists("RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", env):
        env.append({"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"})


# ---- Services (common/service.go) -------------------------------------------------------------------------------
def service_ports(cluster: dict) -> dict[str, int]:
    """getServicePorts: the head container's ports by name (unnamed: "<port>-port"), KubeRay's defaults when it has
    none, plus metrics:8080 when missing."""
    ports: dict[str, int] = {}
    for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][RAY_CONTAINER].get("ports") or []:
        ports[p.get("name") or f"{p['containerPort']}-port"] = int(p["containerPort"])
    if not ports:
        ports = {
            "client": DEFAULT_CLIENT_PORT, "gcs-server": DEFAULT_GCS_PORT, "dashboard": DEFAULT_DASHBOARD_PORT,
            "metrics": DEFAULT_METRICS_PORT, "serve": DEFAULT_SERVING_PORT,
        }  # fmt: skip
    ports.setdefault("metrics", DEFAULT_METRICS_PORT)
    return ports


def _head_service_labels(cluster: dict) -> dict[str, str]:
    name = cluster["metadata"]["name"]
    return {
        RAY_CLUSTER_LABEL: name,
        RAY_NODE_TYPE_LABEL: "head",
        RAY_ID_LABEL: check_label(f"{name}-head"),
        APP_NAME_LABEL: APPLICATION_NAME,
        CREATED_BY_LABEL: COMPONENT_NAME,
    }


def _user_service(svc: dict) -> dict:
    out = copy.deepcopy(svc)
    meta = out.setdefault("metadata", {})
    for k in ("resourceVersion", "uid", "creationTimestamp", "selfLink", "managedFields", "ownerReferences"):
        meta.pop(k, None)
    out.setdefault("spec", {})
    out.pop("status", None)
    out["apiVersion"], out["kind"] = "v1", "Service"
    return out


def build_head_service(cluster: dict, labels: dict | None = None, annotations: dict | None = None) -> dict:
    """BuildServiceForHeadPod: ``<cluster>-head-svc``, headless (ClusterIP None + publishNotReadyAddresses) unless a
    serviceType other than ClusterIP is set; selector = KubeRay's head labels, overridden by ``labels``."""
    labels = labels or {}
    defaults = _head_service_labels(cluster)
    selector = {k: labels.get(k, v) for k, v in defaults.items()}
    spec = cluster["spec"]
    svc_type = spec["headGroupSpec"].get("serviceType") or ""
    ports = [{"name": n, "port": p, "appProtocol": "tcp"} for n, p in service_ports(cluster).items()]
    name, ns = head_service_name(cluster), cluster["metadata"]["namespace"]
    custom = spec["headGroupSpec"].get("headService")
    if custom:
        svc = _user_service(custom)
        svc["spec"]["selector"] = selector
        svc["metadata"]["annotations"] = {**(svc["metadata"].get("annotations") or {}), **(annotations or {})}
        svc["spec"]["ports"] = [*(svc["spec"].get("ports") or []), *ports]
        svc["metadata"]["labels"] = {**(svc["metadata"].get("labels") or {}), **selector}
        svc["metadata"].setdefault("name", name)
        svc["metadata"]["namespace"] = ns
        if not svc["spec"].get("type") and svc_type:
            svc["spec"]["type"] = svc_type
        return svc
    svc_spec: dict[str, Any] = {"selector": selector, "ports": sorted(ports, key=lambda p: p["name"])}
    if svc_type:
        svc_spec["type"] = svc_type
    if svc_type in ("", "ClusterIP"):
        svc_spec["clusterIP"] = "None"
        svc_spec["publishNotReadyAddresses"] = True
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(selector), "annotations": dict(annotations or {})},
        "spec": svc_spec,
    }


def build_rayservice_head_service(rs: dict, cluster: dict) -> dict:
    """BuildHeadServiceForRayService: ``<rayservice>-head-svc``. NB like KubeRay, its selector keeps
    app.kubernetes.io/name=kuberay even when the pod template overrides that label (then it selects no pod)."""
    svc = build_head_service(cluster)
    name = rs["metadata"]["name"]
    svc["metadata"] = {
        "name": f"{name}-head-svc",
        "namespace": rs["metadata"]["namespace"],
        "labels": {
            RAY_ORIGINATED_NAME_LABEL: name,
            RAY_ORIGINATED_CRD_LABEL: "RayService",
            RAY_NODE_TYPE_LABEL: "head",
            RAY_ID_LABEL: check_label(f"{name}-head"),
        },
        "annotations": {},
    }
    return svc


def build_serve_service(rs: dict | None, cluster: dict) -> dict:
    """BuildServeService: the Service over the pods labelled ray.io/serve=true of ``cluster``; for a RayService
    ``<rayservice>-serve-svc`` or spec.serveService (its name/labels/annotations/type/ports; ports merged with the
    head container's ``serve``/``serve-*`` ports), selector always {ray.io/cluster, ray.io/serve: "true"}."""
    is_rs = rs is not None
    owner = rs if is_rs else cluster
    name, ns = owner["metadata"]["name"], owner["metadata"]["namespace"]
    crd = "RayService" if is_rs else "RayCluster"
    labels = {RAY_ORIGINATED_NAME_LABEL: name, RAY_ORIGINATED_CRD_LABEL: crd, RAY_SERVE_LABEL: f"{name}-serve"}
    selector = {RAY_CLUSTER_LABEL: cluster["metadata"]["name"]}
    if is_rs:
        selector[RAY_SERVE_LABEL] = "true"
    cluster_spec = rs["spec"]["rayClusterConfig"] if is_rs else cluster["spec"]
    svc_type = cluster_spec["headGroupSpec"].get("serviceType") or ""
    ports = [
        {"name": n, "port": p}
        for n, p in sorted(service_ports(cluster).items())
        if n == "serve" or n.startswith("serve-")
    ]
    custom = rs["spec"].get("serveService") if is_rs else None
    if not ports and not custom:
        raise ValueError(
            "Please specify a port named 'serve' (or with the prefix 'serve-', e.g. 'serve-grpc') in the Ray head "
            "container; otherwise, the Kubernetes service for Ray Serve will not be created."
        )
    if custom:
        svc = _user_service(custom)
        svc["spec"]["selector"] = selector
        svc["metadata"].setdefault("annotations", {})
        if ports:
            user = {p.get("name"): p for p in svc["spec"].get("ports") or []}
            svc["spec"]["ports"] = [user.get(p["name"], p) for p in ports]
        svc["metadata"]["labels"] = {**(svc["metadata"].get("labels") or {}), **labels}
        svc["metadata"].setdefault("name", f"{name}-serve-svc")
        svc["metadata"]["namespace"] = ns
        if not svc["spec"].get("type") and svc_type:
            svc["spec"]["type"] = svc_type
        return svc
    spec: dict[str, Any] = {"selector": selector, "ports": ports}
    if svc_type:
        spec["type"] = svc_type
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{name}-serve-svc", "namespace": ns, "labels": labels},
        "spec": spec,
    }


def construct_ray_cluster(rs: dict, cluster_name: str) -> dict:
    """constructRayClusterForRayService."""
    meta = rs["metadata"]
    spec = rs["spec"]["rayClusterConfig"]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {
            "name": cluster_name,
            "namespace": meta["namespace"],
            "labels": {
                **(meta.get("labels") or {}),
                RAY_ORIGINATED_NAME_LABEL: meta["name"],
                RAY_ORIGINATED_CRD_LABEL: "RayService",
            },
            "annotations": {
                **(meta.get("annotations") or {}),
                HASH_ANNOTATION: cluster_spec_hash(spec),
                NUM_WORKER_GROUPS_ANNOTATION: str(len(spec.get("workerGroupSpecs") or [])),
                KUBERAY_VERSION_ANNOTATION: KUBERAY_VERSION,
            },
            "ownerReferences": [_owner_ref(rs, "RayService")],
        },
        "spec": copy.deepcopy(spec),
    }


# ---- the dashboard and the Serve proxy --------------------------------------------------------------------------
class DashboardClient(Protocol):
    def get_serve_details(self) -> dict: ...

    def update_deployments(self, config_json: bytes) -> None: ...


class HttpDashboardClient:
    """KubeRay's RayDashboardClient, the two Serve calls (utils/dashboardclient/dashboard_httpclient.go)."""

    def __init__(self, url: str, timeout: float = HTTP_TIMEOUT):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{method} {self.url}{path} failed: {exc.code} {exc.read()[:2000]!r}") from None

    def get_serve_details(self) -> dict:
        raw = self._call("GET", "/api/serve/applications/?" + urllib.parse.urlencode({"api_type": "declarative"}))
        return json.loads(raw)

    def update_deployments(self, config_json: bytes) -> None:
        self._call("PUT", "/api/serve/applications/", config_json)


def http_proxy_healthy(pod: dict, timeout: float = HTTP_TIMEOUT) -> bool:
    """CheckProxyActorHealth: GET http://<podIP>:<serve port>/-/healthz answers 200."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return False
    port = _find_port(pod["spec"]["containers"][RAY_CONTAINER], "serve", DEFAULT_SERVING_PORT)
    try:
        with urllib.request.urlopen(f"http://{ip}:{port}/-/healthz", timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


class FakeDashboards:
    """Simulated Ray dashboards for object-level tests (the fake kubelet runs no Ray): pass an instance as the
    ``dashboard`` hook. Per RayCluster it records the Serve configs PUT to it (``submitted``) and answers GET with the
    applications of the last config, each in ``status`` (``set_status`` per cluster/app, ``default_status`` for the
    rest), deployments HEALTHY when the app is RUNNING else UPDATING. ``fail(cluster)`` makes its calls raise."""

    def __init__(self, default_status: str = "RUNNING"):
        self.default_status = default_status
        self.submitted: dict[str, list[dict]] = {}
        self.gets: dict[str, int] = {}
        self._status: dict[tuple[str, str | None], tuple[str, str]] = {}
        self._failing: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, raycluster: dict, head_pod: dict, url: str) -> _FakeDashboard:
        return _FakeDashboard(self, raycluster["metadata"]["name"])

    def set_status(self, cluster: str, status: str, app: str | None = None, message: str = "") -> None:
        with self._lock:
            self._status[(cluster, app)] = (status, message)

    def fail(self, cluster: str, failing: bool = True) -> None:
        with self._lock:
            (self._failing.add if failing else self._failing.discard)(cluster)

    def last_config(self, cluster: str) -> dict | None:
        with self._lock:
            configs = self.submitted.get(cluster) or []
            return copy.deepcopy(configs[-1]) if configs else None

    def details(self, cluster: str) -> dict:
        with self._lock:
            if cluster in self._failing:
                raise ConnectionRefusedError(f"fake dashboard of {cluster} is failing")
            self.gets[cluster] = self.gets.get(cluster, 0) + 1
            configs = self.submitted.get(cluster) or []
            apps = {}
            for app in (configs[-1].get("applications") or []) if configs else []:
                app_name = app.get("name") or "default"
                status, message = self._status.get(
                    (cluster, app_name), self._status.get((cluster, None), (self.default_status, ""))
                )
                dep_status = "HEALTHY" if status == "RUNNING" else "UPDATING"
                apps[app_name] = {
                    "name": app_name,
                    "status": status,
                    "message": message,
                    "route_prefix": app.get("route_prefix"),
                    "deployments": {
                        d["name"]: {"name": d["name"], "status": dep_status, "message": ""}
                        for d in app.get("deployments") or []
                        if d.get("name")
                    },
                }
            return {"applications": apps, "deploy_mode": "MULTI_APP"}

    def put(self, cluster: str, config_json: bytes) -> None:
        with self._lock:
            if cluster in self._failing:
                raise ConnectionRefusedError(f"fake dashboard of {cluster} is failing")
            self.submitted.setdefault(cluster, []).append(json.loads(config_json))


class _FakeDashboard:
    def __init__(self, fakes: FakeDashboards, cluster: str):
        self.fakes, self.cluster = fakes, cluster

    def get_serve_details(self) -> dict:
        return self.fakes.details(self.cluster)

    def update_deployments(self, config_json: bytes) -> None:
        self.fakes.put(self.cluster, config_json)


def serve_config_json(serve_config_v2: str) -> bytes:
    """updateServeDeployment: the serveConfigV2 YAML as the JSON body KubeRay PUTs (sorted keys, as Go marshals a
    map); an empty config is ``{}``."""
    try:
        import yaml  # type: ignore[import-untyped]

        data = yaml.safe_load(serve_config_v2) if serve_config_v2.strip() else {}
    except ImportError:
        data = json.loads(serve_config_v2) if serve_config_v2.strip() else {}
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"serveConfigV2 is not a mapping: {type(data).__name__}")
    return go_json(data).encode()


def app_statuses(details: dict) -> tuple[bool, dict[str, dict]]:
    """getAndCheckServeStatus: (all apps RUNNING and at least one, applicationStatuses for the RayService status)."""
    ready = True
    apps: dict[str, dict] = {}
    for name, app in (details.get("applications") or {}).items():
        status = app.get("status") or ""
        entry: dict[str, Any] = {"status": status}
        if app.get("message"):
            entry["message"] = app["message"]
        deps = {}
        for dep_name, dep in (app.get("deployments") or {}).items():
            d = {"status": dep.get("status") or ""}
            if dep.get("message"):
                d["message"] = dep["message"]
            deps[dep_name] = {k: v for k, v in d.items() if v}
        if deps:
            entry["serveDeploymentStatuses"] = deps
        if status != "RUNNING":
            ready = False
        apps[name or "default"] = entry
    if not apps:
        ready = False
    return ready, apps


# ---- conditions (apimachinery meta.SetStatusCondition) ----------------------------------------------------------
def set_condition(conditions: list[dict], type_: str, status: str, reason: str, message: str, generation: int) -> None:
    for c in conditions:
        if c.get("type") == type_:
            if c.get("status") != status:
                c["status"] = status
                c["lastTransitionTime"] = now_rfc3339()
            c["reason"], c["message"], c["observedGeneration"] = reason, message, generation
            return
    conditions.append(
        {
            "type": type_,
            "status": status,
            "reason": reason,
            "message": message,
            "observedGeneration": generation,
            "lastTransitionTime": now_rfc3339(),
        }
    )


def condition_true(conditions: list[dict] | None, type_: str) -> bool:
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions or [])


def _find_condition(conditions: list[dict] | None, type_: str) -> dict | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def _running_and_ready(pod: dict) -> bool:
    return (pod.get("status") or {}).get("phase") == "Running" and pod_is_ready(pod)


def _ray_container_terminated(pod: dict) -> bool:
    name = pod["spec"]["containers"][RAY_CONTAINER]["name"]
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == name:
            return bool((cs.get("state") or {}).get("terminated"))
    return False


def should_delete_pod(pod: dict) -> bool:
    """shouldDeletePod: terminal pods, and running pods whose Ray container ended and will not restart."""
    phase = (pod.get("status") or {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        return True
    return phase == "Running" and _ray_container_terminated(pod) and pod["spec"].get("restartPolicy") == "Never"


# ---- the controller ---------------------------------------------------------------------------------------------
class KubeRayStandIn:
    """Reconciles the RayServices and RayClusters of ``namespaces`` like KubeRay's operator (see the module docstring
    for what is reproduced and what is simplified). Use as a context manager (background thread) or call
    :meth:`reconcile_once` yourself.

    Hooks / options:
      proxy_healthy(pod) -> bool: is the pod's Serve proxy healthy (decides its ray.io/serve label); default: real
          GET http://<podIP>:<serve port>/-/healthz with a 2 s timeout.
      dashboard(raycluster, head_pod, url) -> client with get_serve_details() -> dict (the JSON of GET
          /api/serve/applications/) and update_deployments(config_json: bytes): default :class:`HttpDashboardClient`
          on http://<head pod IP>:<dashboard port>; :class:`FakeDashboards` simulates them.
      autoscaler_sidecar: create the autoscaler container KubeRay adds with enableInTreeAutoscaling (default True).
      label_workers_by_proxy_health: also set workers' ray.io/serve from proxy_healthy (default True; KubeRay: always
          "true", their readiness probe does the check).
      zero_downtime: KubeRay's ENABLE_ZERO_DOWNTIME (default True) when upgradeStrategy.type is unset.
      inject_wait_gcs_ready / inject_probes: KubeRay's ENABLE_INIT_CONTAINER_INJECTION / ENABLE_PROBES_INJECTION.
      use_finalizer: add ray.io/rayservice-finalizer like KubeRay (default True); stop() removes it again from the
          RayServices still carrying it, so a stopped stand-in never blocks a namespace deletion.
    """

    def __init__(
        self,
        cluster: Cluster,
        namespaces: Iterable[str],
        *,
        interval: float = 0.5,
        proxy_healthy: Callable[[dict], bool] | None = None,
        dashboard: Callable[[dict, dict, str], DashboardClient] | None = None,
        autoscaler_sidecar: bool = True,
        label_workers_by_proxy_health: bool = True,
        zero_downtime: bool = True,
        inject_wait_gcs_ready: bool = True,
        inject_probes: bool = True,
        use_finalizer: bool = True,
        cluster_domain: str = "cluster.local",
        http_timeout: float = HTTP_TIMEOUT,
        seed: int | None = None,
    ):
        self.cluster = cluster
        self.namespaces = list(namespaces)
        self.interval = interval
        self.http_timeout = http_timeout
        self.proxy_healthy = proxy_healthy or (lambda pod: http_proxy_healthy(pod, self.http_timeout))
        self.dashboard = dashboard or (lambda rc, head, url: HttpDashboardClient(url, self.http_timeout))
        self.label_workers_by_proxy_health = label_workers_by_proxy_health
        self.zero_downtime = zero_downtime
        self.use_finalizer = use_finalizer
        self.pod_options = PodOptions(
            autoscaler_sidecar=autoscaler_sidecar,
            inject_wait_gcs_ready=inject_wait_gcs_ready,
            inject_probes=inject_probes,
            cluster_domain=cluster_domain,
        )
        self.errors: list[str] = []
        self.events: list[str] = []
        self.passes = 0
        self._rng = random.Random(seed)
        self._serve_configs: dict[tuple[str, str], dict[str, str]] = {}  # (ns, rayservice) -> cluster -> config
        self._deletion_due: dict[tuple[str, str], float] = {}  # (ns, raycluster) -> monotonic deadline
        self._notes: set[str] = set()
        self._slice_version = ""  # discovery.k8s.io version serving EndpointSlices (v1beta1 on Kubernetes 1.20)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()

    # ---- lifecycle ---------------------------------------------------------------------------------------------
    def __enter__(self) -> KubeRayStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> KubeRayStandIn:
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="kuberay-stand-in", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(30)
            self._thread = None
        if self.use_finalizer:
            for ns in self.namespaces:
                with contextlib.suppress(Exception):
                    for rs in self._list(f"{API}/{ns}/rayservices"):
                        self._set_finalizer(rs, present=False)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.reconcile_once()
            self._stop.wait(self.interval)

    # ---- recording ---------------------------------------------------------------------------------------------
    def _event(self, msg: str) -> None:
        with self._lock:
            self.events.append(f"{time.strftime('%H:%M:%S')} {msg}")
            del self.events[:-500]

    def _error(self, what: str, exc: BaseException) -> None:
        detail = str(exc) if isinstance(exc, KubeError | ValueError | RuntimeError) else repr(exc)
        if not isinstance(exc, KubeError | ValueError | OSError):
            detail += "\n" + "".join(traceback.format_exception(exc)[-3:])
        with self._lock:
            self.errors.append(f"{time.strftime('%H:%M:%S')} {what}: {detail}")
            del self.errors[:-200]

    def _note_once(self, key: str, msg: str) -> None:
        if key not in self._notes:
            self._notes.add(key)
            self._event(msg)

    # ---- API helpers -------------------------------------------------------------------------------------------
    def _list(self, path: str, selector: str | None = None) -> list[dict]:
        return self.cluster.get(path, **({"labelSelector": selector} if selector else {}))["items"]

    def _merge_patch(self, path: str, body: dict) -> Any:
        return self.cluster.api("PATCH", path, body, content_type="application/merge-patch+json")

    def _create(self, path: str, obj: dict) -> dict:
        return self.cluster.api("POST", path, obj)

    def _delete(self, path: str, propagation: str | None = None) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            self.cluster.api("DELETE", path, body)
        except KubeError as exc:
            if exc.status != 404:
                raise

    # ---- one pass ----------------------------------------------------------------------------------------------
    def reconcile_once(self) -> None:
        """One reconcile of every RayService, then every RayCluster, of the namespaces; never raises."""
        self.passes += 1
        for ns in self.namespaces:
            try:
                self._reconcile_namespace(ns)
            except Exception as exc:  # keep going
                if isinstance(exc, KubeError) and exc.status == 404:
                    continue  # namespace gone
                self._error(f"namespace {ns}", exc)

    def _reconcile_namespace(self, ns: str) -> None:
        for rs in self._list(f"{API}/{ns}/rayservices"):
            try:
                self._reconcile_rayservice(rs)
            except Requeue as exc:
                self._note_once(f"requeue {ns}/{rs['metadata']['name']} {exc}", f"{ns}/{rs['metadata']['name']}: {exc}")
            except Exception as exc:
                if isinstance(exc, KubeError) and exc.status == 409:
                    continue  # changed meanwhile: next pass
                self._error(f"RayService {ns}/{rs['metadata']['name']}", exc)
        pods = self._list(f"/api/v1/namespaces/{ns}/pods", RAY_CLUSTER_LABEL)
        services = self._list(f"/api/v1/namespaces/{ns}/services")
        for rc in self._list(f"{API}/{ns}/rayclusters"):
            try:
                self._reconcile_raycluster(rc, pods, services)
            except Requeue as exc:
                self._note_once(f"requeue {ns}/{rc['metadata']['name']} {exc}", f"{ns}/{rc['metadata']['name']}: {exc}")
            except Exception as exc:
                if isinstance(exc, KubeError) and exc.status == 409:
                    continue
                self._error(f"RayCluster {ns}/{rc['metadata']['name']}", exc)

    # ==== RayCluster controller (raycluster_controller.go) =======================================================
    def _reconcile_raycluster(self, rc: dict, all_pods: list[dict], services: list[dict]) -> None:
        meta = rc["metadata"]
        name, ns = meta["name"], meta["namespace"]
        if meta.get("deletionTimestamp"):
            return
        managed = rc["spec"].get("managedBy")
        if managed and managed != MANAGED_BY_KUBERAY:
            return
        pods = [p for p in all_pods if (p["metadata"].get("labels") or {}).get(RAY_CLUSTER_LABEL) == name]
        reconcile_error: Exception | None = None
        try:
            if autoscaling_enabled(rc["spec"]):
                self._reconcile_autoscaler_rbac(rc)
            self._reconcile_head_service(rc, services)
            if any(num_of_hosts(g) > 1 for g in rc["spec"].get("workerGroupSpecs") or []):
                self._reconcile_headless_service(rc, services)
            if (meta.get("annotations") or {}).get(ENABLE_SERVE_SERVICE_ANNOTATION) == "true":
                self._ensure_service(ns, build_serve_service(None, rc), rc, services)
            self._reconcile_pods(rc, pods)
        except Exception as exc:
            reconcile_error = exc
        try:
            self._update_cluster_status(rc)
        finally:
            if reconcile_error is not None:
                raise reconcile_error

    def _ensure_service(self, ns: str, svc: dict, owner: dict, services: list[dict]) -> dict:
        existing = next((s for s in services if s["metadata"]["name"] == svc["metadata"]["name"]), None)
        if existing:
            return existing
        svc["metadata"]["ownerReferences"] = [_owner_ref(owner)]
        created = self._create(f"/api/v1/namespaces/{ns}/services", svc)
        services.append(created)
        self._event(f"{ns}: created Service {svc['metadata']['name']}")
        return created

    def _reconcile_autoscaler_rbac(self, rc: dict) -> None:
        ns, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        labels = {RAY_CLUSTER_LABEL: name, APP_NAME_LABEL: APPLICATION_NAME, CREATED_BY_LABEL: COMPONENT_NAME}
        template_sa = rc["spec"]["headGroupSpec"]["template"].get("spec", {}).get("serviceAccountName")
        sa_name = template_sa or name
        if not self.cluster.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa_name}", missing_ok=True):
            if template_sa:
                raise RuntimeError(
                    f"If users specify ServiceAccountName for the head Pod, they need to create a ServiceAccount "
                    f"themselves. However, ServiceAccount {sa_name} is not found."
                )
            sa = {"apiVersion": "v1", "kind": "ServiceAccount",
                  "metadata": {"name": check_name(sa_name), "labels": labels, "ownerReferences": [_owner_ref(rc)]}}
            self._create_ignore_exists(f"/api/v1/namespaces/{ns}/serviceaccounts", sa)
        rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
        if not self.cluster.get(f"{rbac}/roles/{check_name(name)}", missing_ok=True):
            role = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": check_name(name), "labels": labels, "ownerReferences": [_owner_ref(rc)]},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                    {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["patch"]},
                    {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]},
                ],
            }
            self._create_ignore_exists(f"{rbac}/roles", role)
        if not self.cluster.get(f"{rbac}/rolebindings/{check_name(name)}", missing_ok=True):
            rb = {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": check_name(name), "labels": labels, "ownerReferences": [_owner_ref(rc)]},
                "subjects": [{"kind": "ServiceAccount", "name": check_name(sa_name), "namespace": ns}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": check_name(name)},
            }
            self._create_ignore_exists(f"{rbac}/rolebindings", rb)

    def _create_ignore_exists(self, path: str, obj: dict) -> None:
        try:
            self._create(path, obj)
            self._event(f"created {obj['kind']} {obj['metadata']['name']}")
        except KubeError as exc:
            if exc.status != 409:
                raise

    def _reconcile_head_service(self, rc: dict, services: list[dict]) -> None:
        want = _head_service_labels(rc)
        keys = (RAY_CLUSTER_LABEL, RAY_NODE_TYPE_LABEL, RAY_ID_LABEL)
        found = [s for s in services if all((s["metadata"].get("labels") or {}).get(k) == want[k] for k in keys)]
        if len(found) > 1:
            raise RuntimeError(f"{len(found)} head services found {[s['metadata']['name'] for s in found]}")
        if found:
            return
        labels = {}
        tmpl_labels = (rc["spec"]["headGroupSpec"]["template"].get("metadata") or {}).get("labels") or {}
        if APP_NAME_LABEL in tmpl_labels:
            labels[APP_NAME_LABEL] = tmpl_labels[APP_NAME_LABEL]
        svc = build_head_service(rc, labels, rc["spec"].get("headServiceAnnotations"))
        self._ensure_service(rc["metadata"]["namespace"], svc, rc, services)

    def _reconcile_headless_service(self, rc: dict, services: list[dict]) -> None:
        name = rc["metadata"]["name"]
        if any((s["metadata"].get("labels") or {}).get(RAY_HEADLESS_SVC_LABEL) == name for s in services):
            return
        svc = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": f"{name}-headless", "labels": {RAY_HEADLESS_SVC_LABEL: name}},
            "spec": {
                "clusterIP": "None",
                "selector": {RAY_CLUSTER_LABEL: name, RAY_NODE_TYPE_LABEL: "worker"},
                "type": "ClusterIP",
                "publishNotReadyAddresses": True,
            },
        }
        self._ensure_service(rc["metadata"]["namespace"], svc, rc, services)

    def _pods_path(self, rc: dict) -> str:
        return f"/api/v1/namespaces/{rc['metadata']['namespace']}/pods"

    def _create_pod(self, rc: dict, pod: dict) -> None:
        created = self._create(self._pods_path(rc), pod)
        meta = rc["metadata"]
        self._event(f"{meta['namespace']}/{meta['name']}: created pod {created['metadata']['name']}")

    def _delete_pod(self, rc: dict, pod: dict, reason: str) -> None:
        self._delete(f"{self._pods_path(rc)}/{pod['metadata']['name']}")
        self._event(f"{rc['metadata']['namespace']}/{rc['metadata']['name']}: deleted pod {pod['metadata']['name']}"
                    f" ({reason})")

    def _reconcile_pods(self, rc: dict, pods: list[dict]) -> None:
        spec = rc["spec"]
        if spec.get("suspend"):
            for p in pods:
                if not p["metadata"].get("deletionTimestamp"):
                    self._delete_pod(rc, p, "suspended")
            return
        heads = [p for p in pods if p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "head"]
        if len(heads) > 1:
            raise RuntimeError(f"{len(heads)} head pods found {[p['metadata']['name'] for p in heads]}")
        if heads:
            if should_delete_pod(heads[0]) and not heads[0]["metadata"].get("deletionTimestamp"):
                self._delete_pod(rc, heads[0], "terminated head")
                raise Requeue("deleted the terminated head pod")
        else:
            self._create_pod(rc, build_pod(rc, "head", options=self.pod_options))
        for group in spec.get("workerGroupSpecs") or []:
            gname = group["groupName"]
            group_pods = [p for p in pods if p["metadata"]["labels"].get(RAY_GROUP_LABEL) == gname
                          and p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "worker"]
            if group.get("suspend"):
                for p in group_pods:
                    if not p["metadata"].get("deletionTimestamp"):
                        self._delete_pod(rc, p, "worker group suspended")
                continue
            if num_of_hosts(group) > 1:
                self._reconcile_multi_host(rc, group, group_pods)
                continue
            unhealthy = [p for p in group_pods if should_delete_pod(p) and not p["metadata"].get("deletionTimestamp")]
            for p in unhealthy:
                self._delete_pod(rc, p, "terminated worker")
            if unhealthy:
                raise Requeue(f"deleted {len(unhealthy)} unhealthy worker pods")
            deleted = set()
            for pod_name in (group.get("scaleStrategy") or {}).get("workersToDelete") or []:
                self._delete(f"{self._pods_path(rc)}/{pod_name}")
                deleted.add(pod_name)
            running = [p for p in group_pods if p["metadata"]["name"] not in deleted]
            diff = desired_replicas(group) - len(running)
            if diff > 0:
                used = {int(p["metadata"]["labels"].get(RAY_REPLICA_INDEX_LABEL, -1)) for p in running}
                index = 0
                for _ in range(diff):
                    while index in used:
                        index += 1
                    used.add(index)
                    self._create_pod(rc, build_pod(rc, "worker", group, replica_index=index, options=self.pod_options))
            elif diff < 0 and not autoscaling_enabled(spec):
                for p in running[:-diff]:
                    self._delete_pod(rc, p, "scale down")

    def _reconcile_multi_host(self, rc: dict, group: dict, pods: list[dict]) -> None:
        hosts = num_of_hosts(group)
        replicas: dict[str, list[dict]] = {}
        for p in pods:
            if RAY_REPLICA_NAME_LABEL in p["metadata"]["labels"]:
                replicas.setdefault(p["metadata"]["labels"][RAY_REPLICA_NAME_LABEL], []).append(p)
        for rname, plist in replicas.items():
            if len(plist) < hosts:
                for p in plist:
                    self._delete_pod(rc, p, f"incomplete multi-host replica {rname}")
                raise Requeue(f"cleaned up incomplete replica group {rname}")
        for rname, plist in list(replicas.items()):
            if any(should_delete_pod(p) for p in plist):
                for p in plist:
                    self._delete_pod(rc, p, f"unhealthy multi-host replica {rname}")
                del replicas[rname]
        want = desired_replicas(group) // hosts
        create = want - len(replicas)
        used = {int(pl[0]["metadata"]["labels"].get(RAY_REPLICA_INDEX_LABEL, -1)) for pl in replicas.values()}
        index = 0
        for _ in range(max(create, 0)):
            while index in used:
                index += 1
            used.add(index)
            rname = f"{group['groupName']}-{rand_string(5, self._rng)}"
            for host in range(hosts):
                pod = build_pod(rc, "worker", group, replica_index=index, replica_name=rname, host_index=host,
                                options=self.pod_options)
                self._create_pod(rc, pod)
        if create < 0 and not autoscaling_enabled(rc["spec"]):
            for rname in list(replicas)[:-create]:
                for p in replicas[rname]:
                    self._delete_pod(rc, p, "scale down")

    def _update_cluster_status(self, rc: dict) -> None:
        """calculateStatus (the parts the RayService controller and tests read)."""
        ns, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        pods = self._list(f"/api/v1/namespaces/{ns}/pods", f"{RAY_CLUSTER_LABEL}={name}")
        old = rc.get("status") or {}
        st = copy.deepcopy(old)
        workers = [p for p in pods if p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "worker"]
        heads = [p for p in pods if p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "head"]
        groups = rc["spec"].get("workerGroupSpecs") or []
        st["observedGeneration"] = rc["metadata"].get("generation", 0)
        st["readyWorkerReplicas"] = sum(1 for p in workers if _running_and_ready(p))
        st["availableWorkerReplicas"] = sum(1 for p in workers if (p.get("status") or {}).get("phase") == "Running")
        st["desiredWorkerReplicas"] = sum(desired_replicas(g) for g in groups)
        st["minWorkerReplicas"] = sum((g.get("minReplicas") or 0) * num_of_hosts(g) for g in groups
                                      if not g.get("suspend"))
        st["maxWorkerReplicas"] = min(2**31 - 1, sum(
            (g.get("maxReplicas") if g.get("maxReplicas") is not None else 2**31 - 1) * num_of_hosts(g)
            for g in groups if not g.get("suspend")))
        all_ready = bool(pods) and all(
            (p.get("status") or {}).get("phase") == "Running" and pod_is_ready(p) for p in pods
        )
        if len(pods) == st["desiredWorkerReplicas"] + 1 and all_ready and old.get("state") != "ready":
            st["state"] = "ready"
            st.pop("reason", None)
            st.setdefault("stateTransitionTimes", {})["ready"] = now_rfc3339()
        conds = st.setdefault("conditions", [])
        if not heads:
            _set_cluster_condition(conds, "HeadPodReady", "False", "HeadPodNotFound", "Head Pod not found")
        else:
            ready = _find_condition((heads[0].get("status") or {}).get("conditions"), "Ready") or {}
            status = ready.get("status") or "False"
            reason = ready.get("reason") or ("HeadPodRunningAndReady" if status == "True" else "Unknown")
            _set_cluster_condition(conds, "HeadPodReady", status, reason, ready.get("message") or "")
        if not condition_true(conds, "RayClusterProvisioned"):
            if all_ready:
                _set_cluster_condition(conds, "RayClusterProvisioned", "True", "AllPodRunningAndReadyFirstTime",
                                       "All Ray Pods are ready for the first time")
            else:
                _set_cluster_condition(conds, "RayClusterProvisioned", "False", "RayClusterPodsProvisioning",
                                       "RayCluster Pods are being provisioned for first time")
        _set_cluster_condition(conds, "RayClusterSuspended", "False", "RayClusterSuspended", "")
        _set_cluster_condition(conds, "RayClusterSuspending", "False", "RayClusterSuspending", "")
        svc = self.cluster.get(f"/api/v1/namespaces/{ns}/services/{head_service_name(rc)}", missing_ok=True)
        head: dict[str, str] = {}
        if heads:
            head["podName"] = heads[0]["metadata"]["name"]
            if (heads[0].get("status") or {}).get("podIP"):
                head["podIP"] = heads[0]["status"]["podIP"]
        if svc:
            head["serviceName"] = svc["metadata"]["name"]
            ip = svc["spec"].get("clusterIP")
            ip = head.get("podIP", "") if ip == "None" else ip
            if ip:
                head["serviceIP"] = ip
            eps = {}
            for p in svc["spec"].get("ports") or []:
                if p.get("name"):
                    eps[p["name"]] = str(p.get("nodePort") or p.get("targetPort") or p["port"])
            st["endpoints"] = eps
        st["head"] = head
        for k in ("readyWorkerReplicas", "availableWorkerReplicas", "desiredWorkerReplicas", "minWorkerReplicas",
                  "maxWorkerReplicas", "observedGeneration"):
            if not st[k]:
                del st[k]
        if _strip_times(st) != _strip_times(old):
            st["lastUpdateTime"] = now_rfc3339()
            body = {**rc, "status": st}
            self.cluster.api("PUT", f"{API}/{ns}/rayclusters/{name}/status", body)

    # ==== RayService controller (rayservice_controller.go) ========================================================
    def _rs_path(self, rs: dict) -> str:
        return f"{API}/{rs['metadata']['namespace']}/rayservices/{rs['metadata']['name']}"

    def _set_finalizer(self, rs: dict, present: bool) -> None:
        fins = list(rs["metadata"].get("finalizers") or [])
        if (RAYSERVICE_FINALIZER in fins) == present:
            return
        fins = [*fins, RAYSERVICE_FINALIZER] if present else [f for f in fins if f != RAYSERVICE_FINALIZER]
        self._merge_patch(
            self._rs_path(rs),
            {"metadata": {"resourceVersion": rs["metadata"]["resourceVersion"], "finalizers": fins or None}},
        )

    def _reconcile_rayservice(self, rs: dict) -> None:
        meta, spec = rs["metadata"], rs["spec"]
        ns, name = meta["namespace"], meta["name"]
        key = (ns, name)
        if spec.get("managedBy") and spec["managedBy"] != MANAGED_BY_KUBERAY:
            return
        status = copy.deepcopy(rs.get("status") or {})
        original = copy.deepcopy(status)
        active_name = (status.get("activeServiceStatus") or {}).get("rayClusterName", "")
        pending_name = (status.get("pendingServiceStatus") or {}).get("rayClusterName", "")
        # cleanUpServeConfigCache
        cache = self._serve_configs.setdefault(key, {})
        for cname in list(cache):
            if cname not in (active_name, pending_name):
                del cache[cname]
        clusters = self._list(
            f"{API}/{ns}/rayclusters", f"{RAY_ORIGINATED_NAME_LABEL}={name},{RAY_ORIGINATED_CRD_LABEL}=RayService"
        )
        to_clean = self._clean_up_clusters(rs, clusters, active_name, pending_name)
        if meta.get("deletionTimestamp"):
            if not to_clean and self.use_finalizer:
                self._set_finalizer(rs, present=False)
                self._event(f"{ns}/{name}: no RayCluster left, removed the finalizer")
            return
        if self.use_finalizer and RAYSERVICE_FINALIZER not in (meta.get("finalizers") or []):
            self._set_finalizer(rs, present=True)
            return
        problem = validate_rayservice(rs)
        if problem:
            conds = status.setdefault("conditions", [])
            set_condition(conds, "Ready", "False", "ValidationFailed", problem, status.get("observedGeneration", 0))
            self._write_status(rs, original, status)
            return
        if spec.get("suspend"):
            self._note_once(f"suspend {ns}/{name}", f"{ns}/{name}: spec.suspend is not simulated by the stand-in")
            return
        if ((spec.get("upgradeStrategy") or {}).get("type")) == "NewClusterWithIncrementalUpgrade":
            self._note_once(f"incremental {ns}/{name}",
                            f"{ns}/{name}: NewClusterWithIncrementalUpgrade is simulated as NewCluster")

        by_name = {c["metadata"]["name"]: c for c in clusters}
        active = by_name.get(active_name) if active_name else None
        pending = by_name.get(pending_name) if pending_name else None
        active, pending = self._reconcile_ray_clusters(rs, status, active, pending)

        exclude_head = bool(spec.get("excludeHeadPodFromServeSvc"))
        self._update_serve_labels(active, exclude_head)
        self._update_serve_labels(pending, exclude_head)

        active_ready = pending_ready = False
        active_apps = pending_apps = None
        if pending is not None:
            pending_ready, pending_apps = self._reconcile_serve(rs, pending)
        if active is not None and pending is None and not self._should_prepare_new_cluster(rs, status, active, None,
                                                                                           False):
            active_ready, active_apps = self._reconcile_serve(rs, active)

        head_svc = serve_svc = None
        if pending_ready or active_ready:
            target = pending if pending_ready else active
            assert target is not None
            head_svc = self._reconcile_service(rs, build_rayservice_head_service(rs, target))
            serve_svc = self._reconcile_service(rs, build_serve_service(rs, target))
        self._calculate_status(rs, status, head_svc, serve_svc, active, pending, active_apps, pending_apps)
        self._write_status(rs, original, status)

    def _clean_up_clusters(self, rs: dict, clusters: list[dict], active: str, pending: str) -> bool:
        """cleanUpRayClusterInstance: dangling clusters are deleted rayClusterDeletionDelaySeconds after they were
        first seen dangling (all of them, at once, when the RayService is being deleted)."""
        ns = rs["metadata"]["namespace"]
        deleting = bool(rs["metadata"].get("deletionTimestamp"))
        delay = rs["spec"].get("rayClusterDeletionDelaySeconds")
        delay = DEFAULT_DELETION_DELAY if delay is None else float(delay)
        to_clean = False
        for c in clusters:
            cname = c["metadata"]["name"]
            if not deleting and cname in (active, pending):
                continue
            to_clean = True
            due = self._deletion_due.get((ns, cname))
            if deleting or (due is not None and time.monotonic() >= due):
                self._delete(f"{API}/{ns}/rayclusters/{cname}", "Background")
                self._event(f"{ns}/{rs['metadata']['name']}: deleted RayCluster {cname}")
            elif due is None:
                self._deletion_due[(ns, cname)] = time.monotonic() + delay
                self._event(f"{ns}/{rs['metadata']['name']}: RayCluster {cname} scheduled for deletion in {delay:g}s")
        return to_clean

    def _reconcile_ray_clusters(
        self, rs: dict, status: dict, active: dict | None, pending: dict | None
    ) -> tuple[dict | None, dict | None]:
        """reconcileRayCluster: create the pending cluster named in the status; update active/pending in place when
        only worker groups were appended (or the KubeRay version changed)."""
        ns = rs["metadata"]["namespace"]
        pending_name = (status.get("pendingServiceStatus") or {}).get("rayClusterName", "")
        if pending_name and pending is None:
            created = self._create(f"{API}/{ns}/rayclusters", construct_ray_cluster(rs, pending_name))
            self._event(f"{ns}/{rs['metadata']['name']}: created RayCluster {pending_name}")
            return active, created
        upgrading = condition_true(status.get("conditions"), "UpgradeInProgress")
        for cluster, is_active in ((active, True), (pending, False)):
            if cluster is None or not self._should_update_cluster(rs, cluster, is_active, upgrading):
                continue
            goal = construct_ray_cluster(rs, cluster["metadata"]["name"])
            updated = copy.deepcopy(cluster)
            suspend = updated["spec"].get("suspend")
            updated["spec"] = goal["spec"]
            if suspend is not None:
                updated["spec"]["suspend"] = suspend
            else:
                updated["spec"].pop("suspend", None)
            updated["metadata"]["labels"] = goal["metadata"]["labels"]
            updated["metadata"]["annotations"] = goal["metadata"]["annotations"]
            cname = cluster["metadata"]["name"]
            result = self.cluster.api("PUT", f"{API}/{ns}/rayclusters/{cname}", updated)
            self._event(f"{ns}/{rs['metadata']['name']}: updated RayCluster {cname} in place")
            if is_active:
                active = result
            else:
                pending = result
        return active, pending

    @staticmethod
    def _hash_equal(rs: dict, cluster: dict, partial: bool) -> bool:
        ann = cluster["metadata"].get("annotations") or {}
        goal = rs["spec"]["rayClusterConfig"]
        if not partial:
            return ann.get(HASH_ANNOTATION) == cluster_spec_hash(goal)
        try:
            n = int(ann.get(NUM_WORKER_GROUPS_ANNOTATION, ""))
        except ValueError:
            return True
        if len(goal.get("workerGroupSpecs") or []) < n:
            return ann.get(HASH_ANNOTATION) == ""
        return ann.get(HASH_ANNOTATION) == _hash_first_groups(goal, n)

    def _should_update_cluster(self, rs: dict, cluster: dict, is_active: bool, upgrading: bool) -> bool:
        if is_active:
            if upgrading:
                return False
            if (cluster["metadata"].get("annotations") or {}).get(KUBERAY_VERSION_ANNOTATION) != KUBERAY_VERSION:
                return True
        if self._hash_equal(rs, cluster, partial=False):
            return False
        return self._hash_equal(rs, cluster, partial=True)

    def _should_prepare_new_cluster(
        self, rs: dict, status: dict, active: dict | None, pending: dict | None, pending_serving: bool
    ) -> bool:
        if pending_serving:
            return False
        if active is None and pending is None:
            return True
        cluster = pending if pending is not None else active
        assert cluster is not None
        if self._hash_equal(rs, cluster, False) or self._hash_equal(rs, cluster, True):
            return False
        strategy = (rs["spec"].get("upgradeStrategy") or {}).get("type")
        if strategy is not None:
            return strategy in ("NewCluster", "NewClusterWithIncrementalUpgrade")
        return self.zero_downtime

    def _head_pod(self, rc: dict) -> dict | None:
        ns, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        heads = self._list(f"/api/v1/namespaces/{ns}/pods", f"{RAY_CLUSTER_LABEL}={name},{RAY_NODE_TYPE_LABEL}=head")
        if len(heads) > 1:
            raise RuntimeError(f"found multiple heads in cluster {ns}/{name}")
        return heads[0] if heads else None

    def _update_serve_labels(self, rc: dict | None, exclude_head: bool) -> None:
        """updateHeadPodServeLabel (+ the workers, see label_workers_by_proxy_health)."""
        if rc is None:
            return
        ns, name = rc["metadata"]["namespace"], rc["metadata"]["name"]
        pods = self._list(f"/api/v1/namespaces/{ns}/pods", f"{RAY_CLUSTER_LABEL}={name}")
        heads = [p for p in pods if p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "head"]
        if not heads:
            raise Requeue(f"found 0 head. cluster name {name}, namespace {ns}")
        targets = list(heads)
        if self.label_workers_by_proxy_health:
            targets += [p for p in pods if p["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "worker"]
        for pod in targets:
            if pod["metadata"].get("deletionTimestamp"):
                continue
            is_head = pod["metadata"]["labels"].get(RAY_NODE_TYPE_LABEL) == "head"
            new = "false"
            if not (is_head and exclude_head):
                try:
                    new = str(bool(self.proxy_healthy(pod))).lower()
                except Exception as exc:  # a failing hook means unhealthy, as a failing request does
                    self._error(f"proxy_healthy({pod['metadata']['name']})", exc)
            if pod["metadata"]["labels"].get(RAY_SERVE_LABEL) != new:
                self._merge_patch(f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}",
                                  {"metadata": {"labels": {RAY_SERVE_LABEL: new}}})
                self._event(f"{ns}/{name}: {RAY_SERVE_LABEL}={new} on {pod['metadata']['name']}")

    def _reconcile_serve(self, rs: dict, rc: dict) -> tuple[bool, dict[str, dict] | None]:
        """reconcileServe: (all apps RUNNING, applicationStatuses) of a cluster; submits the serve config."""
        ns, cname = rc["metadata"]["namespace"], rc["metadata"]["name"]
        if not condition_true((rc.get("status") or {}).get("conditions"), "HeadPodReady"):
            return False, None
        svc = self.cluster.get(f"/api/v1/namespaces/{ns}/services/{head_service_name(rc)}", missing_ok=True)
        if svc is None:
            raise Requeue(f"head service of {cname} not found")
        port = next((p["port"] for p in svc["spec"].get("ports") or [] if p.get("name") == "dashboard"), None)
        if port is None:
            raise RuntimeError(f"RayCluster {ns}/{cname}: dashboard port is not found in its head service")
        head = self._head_pod(rc)
        ip = ((head or {}).get("status") or {}).get("podIP")
        if head is None or not ip:
            return False, None
        client = self.dashboard(rc, head, f"http://{ip}:{port}")
        cache = self._serve_configs.setdefault((ns, rs["metadata"]["name"]), {})
        cached = cache.get(cname, "")
        try:
            details = client.get_serve_details()
        except Exception as exc:
            raise RuntimeError(f"failed to get Serve application statuses from {cname}'s dashboard: {exc}") from None
        ready, apps = app_statuses(details)
        config = rs["spec"].get("serveConfigV2") or ""
        if not cached or not apps or cached != config:
            try:
                client.update_deployments(serve_config_json(config))
            except Exception as exc:
                raise RuntimeError(f"fail to create / update Serve applications on {cname}: {exc}") from exc
            if config:
                cache[cname] = config
            self._note_once(f"submit {ns}/{cname} {hashlib.sha1(config.encode()).hexdigest()}",
                            f"{ns}/{rs['metadata']['name']}: submitted the serve config to {cname}")
        return ready, apps

    def _reconcile_service(self, rs: dict, svc: dict) -> dict:
        """reconcileServices: create, or re-point (spec replaced, clusterIP kept) when the serving cluster changed."""
        ns = rs["metadata"]["namespace"]
        path = f"/api/v1/namespaces/{ns}/services"
        old = self.cluster.get(f"{path}/{svc['metadata']['name']}", missing_ok=True)
        if old is None:
            svc["metadata"]["ownerReferences"] = [_owner_ref(rs, "RayService")]
            created = self._create(path, svc)
            self._event(f"{ns}/{rs['metadata']['name']}: created Service {svc['metadata']['name']} -> "
                        f"{svc['spec']['selector'][RAY_CLUSTER_LABEL]}")
            return created
        if (old["spec"].get("selector") or {}).get(RAY_CLUSTER_LABEL) == svc["spec"]["selector"][RAY_CLUSTER_LABEL]:
            return old
        new_spec = copy.deepcopy(svc["spec"])
        new_spec["clusterIP"] = old["spec"].get("clusterIP")
        updated = self.cluster.api("PUT", f"{path}/{old['metadata']['name']}", {**old, "spec": new_spec})
        self._event(f"{ns}/{rs['metadata']['name']}: Service {old['metadata']['name']} now selects "
                    f"{svc['spec']['selector'][RAY_CLUSTER_LABEL]}")
        return updated

    def _num_serve_endpoints(self, ns: str, svc_name: str) -> int:
        """calculateNumServeEndpointsFromSlices: distinct ready pods in the Service's EndpointSlices."""
        for version in [self._slice_version] if self._slice_version else ["v1", "v1beta1"]:
            try:
                slices = self._list(f"/apis/discovery.k8s.io/{version}/namespaces/{ns}/endpointslices",
                                    f"kubernetes.io/service-name={svc_name}")
            except KubeError as exc:
                if exc.status == 404:
                    continue
                raise
            self._slice_version = version
            uids = set()
            for s in slices:
                for ep in s.get("endpoints") or []:
                    uid = (ep.get("targetRef") or {}).get("uid")
                    if (ep.get("conditions") or {}).get("ready") and uid:
                        uids.add(uid)
            return len(uids)
        return 0

    def _calculate_status(
        self,
        rs: dict,
        status: dict,
        head_svc: dict | None,
        serve_svc: dict | None,
        active: dict | None,
        pending: dict | None,
        active_apps: dict | None,
        pending_apps: dict | None,
    ) -> None:
        """calculateStatus + calculateConditions."""
        ns, name = rs["metadata"]["namespace"], rs["metadata"]["name"]
        gen = rs["metadata"].get("generation", 0)
        status["observedGeneration"] = gen
        act = status.setdefault("activeServiceStatus", {})
        pen = status.setdefault("pendingServiceStatus", {})
        for entry, cluster, apps in ((act, active, active_apps), (pen, pending, pending_apps)):
            entry["rayClusterStatus"] = copy.deepcopy((cluster or {}).get("status") or {})
            if apps:
                entry["applicationStatuses"] = apps
            else:
                entry.pop("applicationStatuses", None)
        pending_serving = False
        if head_svc is not None and serve_svc is not None:
            points_to = head_svc["spec"]["selector"][RAY_CLUSTER_LABEL]
            if points_to != serve_svc["spec"]["selector"][RAY_CLUSTER_LABEL]:
                raise RuntimeError("headSvc and serveSvc are not pointing to the same cluster")
            pending_name, active_name = pen.get("rayClusterName", ""), act.get("rayClusterName", "")
            if points_to not in (pending_name, active_name):
                raise RuntimeError("clusterName from services is not equal to pendingCluster or activeCluster")
            if active_name != points_to:
                self._event(f"{ns}/{name}: promoted {pending_name} to active (was {active_name or 'none'})")
                status["activeServiceStatus"] = act = pen
                status["pendingServiceStatus"] = pen = {}
            pending_serving = points_to == pending_name
        if self._should_prepare_new_cluster(rs, status, active, pending, pending_serving):
            new = f"{name}-{rand_string(5, self._rng)}"
            status["pendingServiceStatus"] = pen = {"rayClusterName": new}
            self._event(f"{ns}/{name}: preparing a new RayCluster {new}")
        n = self._num_serve_endpoints(ns, serve_service_name(rs))
        if n:
            status["numServeEndpoints"] = n
        else:
            status.pop("numServeEndpoints", None)
        conds = status.setdefault("conditions", [])
        if not conds:
            msg = "RayService is initializing"
            set_condition(conds, "Ready", "False", "Initializing", msg, gen)
            set_condition(conds, "UpgradeInProgress", "False", "Initializing", msg, gen)
        if n > 0:
            msg = "Number of serve endpoints is greater than 0"
            set_condition(conds, "Ready", "True", "NonZeroServeEndpoints", msg, gen)
        elif condition_true(conds, "Ready"):
            set_condition(conds, "Ready", "False", "ZeroServeEndpoints", "Number of serve endpoints dropped to 0", gen)
        a, p = act.get("rayClusterName"), pen.get("rayClusterName")
        if a and p:
            set_condition(conds, "UpgradeInProgress", "True", "BothActivePendingClustersExist",
                          "Both active and pending Ray clusters exist", gen)
        elif a:
            set_condition(conds, "UpgradeInProgress", "False", "NoPendingCluster",
                          "Active Ray cluster exists and no pending Ray cluster", gen)
        else:
            cond = _find_condition(conds, "UpgradeInProgress")
            if cond is None or cond.get("reason") not in ("Initializing", "InitializingTimeout"):
                set_condition(conds, "UpgradeInProgress", "Unknown", "NoActiveCluster",
                              "No active Ray cluster exists, and the RayService is not initializing. Please open a "
                              "GitHub issue in the KubeRay repository.", gen)
        if condition_true(conds, "Ready"):
            status["serviceStatus"] = "Running"
        else:
            status.pop("serviceStatus", None)

    def _write_status(self, rs: dict, original: dict, status: dict) -> None:
        if _status_key(original) == _status_key(status):
            return
        status["lastUpdateTime"] = now_rfc3339()
        self.cluster.api("PUT", f"{self._rs_path(rs)}/status", {**rs, "status": status})

    # ---- debugging ---------------------------------------------------------------------------------------------
    def dump(self) -> str:
        """A readable snapshot for failure messages: errors, recent events, RayServices, RayClusters, Ray pods,
        Services and their endpoints in the namespaces. Never raises."""
        out: list[str] = [f"KubeRay stand-in: {self.passes} passes, {len(self.errors)} errors"]
        with self._lock:
            out += ["errors:", *("  " + e for e in self.errors[-20:])]
            out += ["events:", *("  " + e for e in self.events[-40:])]
        for ns in self.namespaces:
            try:
                for rs in self._list(f"{API}/{ns}/rayservices"):
                    st = rs.get("status") or {}
                    summary = {
                        "serviceStatus": st.get("serviceStatus"),
                        "numServeEndpoints": st.get("numServeEndpoints"),
                        "active": _service_status_summary(st.get("activeServiceStatus")),
                        "pending": _service_status_summary(st.get("pendingServiceStatus")),
                        "conditions": [(c["type"], c["status"], c["reason"]) for c in st.get("conditions") or []],
                    }
                    out.append(f"RayService {ns}/{rs['metadata']['name']}: {json.dumps(summary)}")
                for rc in self._list(f"{API}/{ns}/rayclusters"):
                    st = rc.get("status") or {}
                    out.append(f"RayCluster {ns}/{rc['metadata']['name']}: state={st.get('state')} "
                               f"ready workers={st.get('readyWorkerReplicas', 0)}/{st.get('desiredWorkerReplicas', 0)}"
                               f"{' DELETING' if rc['metadata'].get('deletionTimestamp') else ''}")
                for p in self._list(f"/api/v1/namespaces/{ns}/pods"):
                    labels = p["metadata"].get("labels") or {}
                    out.append(f"  pod {p['metadata']['name']}: {p.get('status', {}).get('phase')} "
                               f"ready={pod_is_ready(p)} ip={p.get('status', {}).get('podIP')} "
                               f"cluster={labels.get(RAY_CLUSTER_LABEL)} serve={labels.get(RAY_SERVE_LABEL)}"
                               f"{' TERMINATING' if p['metadata'].get('deletionTimestamp') else ''}")
                for s in self._list(f"/api/v1/namespaces/{ns}/services"):
                    ep = self.cluster.get(f"/api/v1/namespaces/{ns}/endpoints/{s['metadata']['name']}",
                                          missing_ok=True) or {}
                    addrs = [a.get("targetRef", {}).get("name") for sub in ep.get("subsets") or []
                             for a in sub.get("addresses") or []]
                    out.append(f"  svc {s['metadata']['name']}: selector={s['spec'].get('selector')} endpoints={addrs}")
            except Exception as exc:
                out.append(f"  (dump of {ns} failed: {exc!r})")
        return "\n".join(out)


def _set_cluster_condition(conds: list[dict], type_: str, status: str, reason: str, message: str) -> None:
    for c in conds:
        if c.get("type") == type_:
            if c.get("status") != status:
                c["lastTransitionTime"] = now_rfc3339()
            c.update(status=status, reason=reason, message=message)
            return
    conds.append({"type": type_, "status": status, "reason": reason, "message": message,
                  "lastTransitionTime": now_rfc3339()})


def _strip_times(st: dict) -> dict:
    s = copy.deepcopy(st)
    s.pop("lastUpdateTime", None)
    return s


def _status_key(st: dict) -> str:
    """What KubeRay's InconsistentRayServiceStatuses compares: everything but timestamps and rayClusterStatus."""
    s = copy.deepcopy(st)
    s.pop("lastUpdateTime", None)
    for k in ("activeServiceStatus", "pendingServiceStatus"):
        (s.get(k) or {}).pop("rayClusterStatus", None)
    for c in s.get("conditions") or []:
        c.pop("lastTransitionTime", None)
    return json.dumps(s, sort_keys=True)


def _service_status_summary(entry: dict | None) -> dict:
    entry = entry or {}
    return {
        "cluster": entry.get("rayClusterName"),
        "apps": {k: v.get("status") for k, v in (entry.get("applicationStatuses") or {}).items()},
    }


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def validate_rayservice(rs: dict) -> str | None:
    """The part of ValidateRayServiceMetadata / ValidateRayServiceSpec that applies here; the message or None."""
    name = rs["metadata"]["name"]
    if len(name) > 47:
        return "The RayService metadata is invalid: RayService name should be no more than 47 characters"
    if not _DNS1035.match(name):
        return "The RayService metadata is invalid: RayService name should be a valid DNS1035 label"
    spec = rs["spec"]
    head = spec["rayClusterConfig"]["headGroupSpec"]
    if ((head.get("headService") or {}).get("metadata") or {}).get("name"):
        return ("The RayService spec is invalid: spec.rayClusterConfig.headGroupSpec.headService.metadata.name "
                "should not be set")
    if not (head.get("template") or {}).get("spec", {}).get("containers"):
        return "The RayService spec is invalid: headGroupSpec should have at least one container"
    for g in spec["rayClusterConfig"].get("workerGroupSpecs") or []:
        if not (g.get("template") or {}).get("spec", {}).get("containers"):
            group = g.get("groupName")
            return f"The RayService spec is invalid: worker group {group} should have at least one container"
    strategy = (spec.get("upgradeStrategy") or {}).get("type")
    if strategy is not None and strategy not in ("None", "NewCluster", "NewClusterWithIncrementalUpgrade"):
        return (f"The RayService spec is invalid: Spec.UpgradeStrategy.Type value {strategy} is invalid, valid options "
                "are NewClusterWithIncrementalUpgrade, NewCluster, or None")
    delay = spec.get("rayClusterDeletionDelaySeconds")
    if delay is not None and delay < 0:
        return ("The RayService spec is invalid: Spec.RayClusterDeletionDelaySeconds should be a non-negative integer, "
                f"got {delay}")
    return None

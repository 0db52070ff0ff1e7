"""The KubeRay stand-in (tests/k8s/kuberay_standin.py): the pods/Services it builds are KubeRay's, and on the real
API server (fake kubelet: pods become Ready, nothing runs; simulated dashboards and proxies) a RayService becomes a
RayCluster, Ray pods, the head and serve Services whose real Endpoints follow the serving cluster, through an upgrade,
and everything goes away with the RayService (garbage collector)."""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.k8s.cluster import Cluster, KubeError, pod_is_ready, wait_for
from tests.k8s.kuberay_standin import (
    HASH_ANNOTATION,
    FakeDashboards,
    KubeRayStandIn,
    PodOptions,
    build_pod,
    build_serve_service,
    cluster_spec_hash,
    construct_ray_cluster,
    serve_config_json,
)

pytestmark = pytest.mark.k8s

IMAGE = "rayproject/ray:2.60.0"
SERVE_CONFIG = """\
proxy_location: EveryNode
http_options: {host: 0.0.0.0, port: 8000}
applications:
- name: gateway
  import_path: serving.app:gateway_builder
  route_prefix: /
  deployments:
  - name: gateway
    num_replicas: 1
- name: engine-a
  import_path: serving.app:engine_builder
  route_prefix: null
  deployments:
  - name: engine-a
"""
HEAD_ARGS = (
    "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; ray start --head  --block  --dashboard-agent-listen-port=52365 "
    " --dashboard-host=0.0.0.0  --memory=4294967296  --metrics-export-port=8080  --num-cpus=2 "
)


def worker_args(cluster_name: str, ns: str) -> str:
    return (
        f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; ray start  --address={cluster_name}-head-svc.{ns}.svc."
        "cluster.local:6379  --block  --dashboard-agent-listen-port=52365  --memory=2147483648 "
        " --metrics-export-port=8080  --num-cpus=1 "
    )


def rayservice(name: str, *, replicas: int = 2, **spec: Any) -> dict:
    head = {
        "name": "ray-head",
        "image": IMAGE,
        "ports": [
            {"name": "gcs", "containerPort": 6379},
            {"name": "dashboard", "containerPort": 8265},
            {"name": "client", "containerPort": 10001},
            {"name": "serve", "containerPort": 8000},
        ],
        "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "4Gi"}},
    }
    worker = {
        "name": "ray-worker",
        "image": IMAGE,
        "ports": [{"name": "serve", "containerPort": 8000}],
        "resources": {"limits": {"cpu": "500m", "memory": "2Gi"}, "requests": {"cpu": "500m", "memory": "2Gi"}},
    }
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "serving"}},
        "spec": {
            "serveConfigV2": SERVE_CONFIG,
            "rayClusterConfig": {
                "rayVersion": "2.60.0",
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {
                        "metadata": {"labels": {"serving.dev/ray-node": "head"}},
                        "spec": {"containers": [head]},
                    },
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu",
                        "replicas": replicas,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": {
                            "metadata": {"labels": {"serving.dev/ray-node": "worker"}},
                            "spec": {"containers": [worker]},
                        },
                    }
                ],
            },
            **spec,
        },
    }


# ------------------------------------------------------------------------------------------------------ helpers


def rs_path(ns: str, name: str = "") -> str:
    return f"/apis/ray.io/v1/namespaces/{ns}/rayservices" + (f"/{name}" if name else "")


def get_rs(c: Cluster, ns: str, name: str) -> dict:
    return c.get(rs_path(ns, name))


def patch_rs(c: Cluster, ns: str, name: str, body: dict) -> dict:
    return c.api("PATCH", rs_path(ns, name), body, content_type="application/merge-patch+json")


def clusters(c: Cluster, ns: str) -> dict[str, dict]:
    items = c.get(f"/apis/ray.io/v1/namespaces/{ns}/rayclusters")["items"]
    return {i["metadata"]["name"]: i for i in items}


def ray_pods(c: Cluster, ns: str, cluster_name: str) -> list[dict]:
    return c.get(f"/api/v1/namespaces/{ns}/pods", labelSelector=f"ray.io/cluster={cluster_name}")["items"]


def live(pods: list[dict]) -> set[str]:
    return {p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp")}


def endpoint_pods(c: Cluster, ns: str, svc: str) -> set[str]:
    """Pods the real endpoints controller lists as ready addresses of a Service."""
    ep = c.get(f"/api/v1/namespaces/{ns}/endpoints/{svc}", missing_ok=True) or {}
    return {a["targetRef"]["name"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}


def active_name(rs: dict) -> str:
    return (rs.get("status") or {}).get("activeServiceStatus", {}).get("rayClusterName", "")


def pending_name(rs: dict) -> str:
    return (rs.get("status") or {}).get("pendingServiceStatus", {}).get("rayClusterName", "")


def conditions(rs: dict) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (rs.get("status") or {}).get("conditions") or []}


_gc_ready: set[str] = set()


def wait_until_gc_knows_ray_kinds(c: Cluster, ns: str, timeout: float = 60) -> None:
    """The garbage collector learns about CRD kinds at its 30 s discovery resync, and retries dependents it could
    not resolve meanwhile with exponential backoff. The CRDs here are registered just after the control plane
    started, so before relying on ownerReferences to ray.io objects wait (once per cluster) until a FRESH probe
    ConfigMap owned by a missing RayCluster / RayService is collected promptly."""
    if c.server in _gc_ready:
        return
    deadline = time.monotonic() + timeout
    for kind in ("RayCluster", "RayService"):
        while True:
            name = f"gc-probe-{kind.lower()}-{uuid.uuid4().hex[:8]}"
            owner = {"apiVersion": "ray.io/v1", "kind": kind, "name": "gone", "uid": str(uuid.uuid4())}
            c.api("POST", f"/api/v1/namespaces/{ns}/configmaps",
                  {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [owner]}})
            try:
                wait_for(lambda n=name: c.get(f"/api/v1/namespaces/{ns}/configmaps/{n}", missing_ok=True) is None,
                         3, 0.2, f"GC to collect {name}")
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
    _gc_ready.add(c.server)


class Harness:
    def __init__(self, c: Cluster, ns: str, kuberay: KubeRayStandIn, fakes: FakeDashboards, unhealthy: set[str]):
        self.c, self.ns, self.kuberay, self.fakes, self.unhealthy = c, ns, kuberay, fakes, unhealthy

    def until(self, fn: Callable[[], Any], what: str, timeout: float = 30) -> Any:
        try:
            return wait_for(fn, timeout, 0.2, what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.kuberay.dump()}") from None

    def create(self, rs: dict) -> dict:
        return self.c.api("POST", rs_path(self.ns), rs)

    def running(self, name: str) -> dict:
        """Wait until the RayService is Running and return it."""

        def check() -> dict | None:
            rs = get_rs(self.c, self.ns, name)
            return rs if rs.get("status", {}).get("serviceStatus") == "Running" else None

        return self.until(check, f"RayService {name} Running")

    def serve_ready_pods(self, cluster_name: str) -> set[str]:
        return {
            p["metadata"]["name"]
            for p in ray_pods(self.c, self.ns, cluster_name)
            if pod_is_ready(p) and p["metadata"]["labels"].get("ray.io/serve") == "true"
            and not p["metadata"].get("deletionTimestamp")
        }


@pytest.fixture
def harness(kubelet: Cluster, namespace: str) -> Iterator[Harness]:
    fakes = FakeDashboards()
    unhealthy: set[str] = set()
    kuberay = KubeRayStandIn(
        kubelet,
        [namespace],
        interval=0.25,
        dashboard=fakes,
        proxy_healthy=lambda p: p["metadata"]["name"] not in unhealthy,
    )
    with kuberay:
        yield Harness(kubelet, namespace, kuberay, fakes, unhealthy)


# ----------------------------------------------------------------------------------- pure builders (no cluster)


def _cluster_obj(rs: dict, name: str = "demo-abcde", ns: str = "ns1") -> dict:
    rs = copy.deepcopy(rs)
    rs["metadata"].update(namespace=ns, uid="rs-uid")
    rc = construct_ray_cluster(rs, name)
    rc["metadata"]["uid"] = "rc-uid"
    return rc


def test_pods_are_built_like_kuberay() -> None:
    rs = rayservice("demo")
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"
    group["rayStartParams"] = {"num-cpus": "3"}  # rayStartParams win over the container's resources
    rc = _cluster_obj(rs)
    head = build_pod(rc, "head")
    worker = build_pod(rc, "worker", rc["spec"]["workerGroupSpecs"][0], replica_index=1)

    assert head["metadata"]["generateName"] == "demo-abcde-head-"
    assert worker["metadata"]["generateName"] == "demo-abcde-cpu-worker-"
    assert head["metadata"]["ownerReferences"] == [{"apiVersion": "ray.io/v1", "kind": "RayCluster",
                                                    "name": "demo-abcde", "uid": "rc-uid", "controller": True,
                                                    "blockOwnerDeletion": True}]
    assert head["metadata"]["labels"] == {
        "ray.io/is-ray-node": "yes", "ray.io/cluster": "demo-abcde", "ray.io/node-type": "head",
        "ray.io/group": "headgroup", "ray.io/identifier": "demo-abcde-head", "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator", "serving.dev/ray-node": "head", "ray.io/serve": "false",
    }  # fmt: skip
    assert worker["metadata"]["labels"]["ray.io/worker-group-replica-index"] == "1"
    assert worker["metadata"]["labels"]["ray.io/serve"] == "true"
    h, w = head["spec"]["containers"][0], worker["spec"]["containers"][0]
    assert h["command"] == w["command"] == ["/bin/bash", "-c", "--"]
    assert h["args"] == [HEAD_ARGS]
    assert w["args"] == [
        "ulimit -n ${RAY_START_ULIMIT_OPEN_FILES:-65536}; ray start  --address=demo-abcde-head-svc.ns1.svc."
        "cluster.local:6379  --block  --dashboard-agent-listen-port=52365  --memory=2147483648 "
        " --metrics-export-port=8080  --num-cpus=3  --num-gpus=1 "
    ]
    henv = {e["name"]: e for e in h["env"]}
    wenv = {e["name"]: e for e in w["env"]}
    assert henv["KUBERAY_GEN_RAY_START_CMD"]["value"] == HEAD_ARGS.split("; ", 1)[1]
    assert henv["RAY_CLUSTER_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}
    assert henv["RAY_CLOUD_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert henv["RAY_NODE_TYPE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.labels['ray.io/group']"}}
    assert henv["RAY_ADDRESS"]["value"] == "127.0.0.1:6379" and henv["RAY_PORT"]["value"] == "6379"
    assert henv["RAY_USAGE_STATS_EXTRA_TAGS"]["value"] == "kuberay_version=v1.7.0;kuberay_crd=RayService"
    assert wenv["RAY_ADDRESS"]["value"] == "demo-abcde-head-svc.ns1.svc.cluster.local:6379"
    assert wenv["RAY_IP"]["value"] == "demo-abcde-head-svc"
    assert {"RAY_timeout_ms_task_wait_for_death_info", "RAY_SERVE_KV_TIMEOUT_S"} <= set(wenv)
    # /dev/shm sized like the container's memory, the default metrics port, the init container of workers
    assert {"name": "shared-mem", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in worker["spec"]["volumes"]
    assert {"name": "metrics", "containerPort": 8080} in w["ports"]
    [init] = worker["spec"]["initContainers"]
    assert init["name"] == "wait-gcs-ready"
    assert "ray health-check --address demo-abcde-head-svc.ns1.svc.cluster.local:6379" in init["args"][0]
    assert "initContainers" not in head["spec"]
    # probes: Ray >= 2.53 -> HTTP for the head; RayService workers also check their Serve proxy
    assert h["readinessProbe"]["httpGet"] == {"path": "/api/healthz", "port": 52365}
    assert "localhost:8000/-/healthz" in w["readinessProbe"]["exec"]["command"][2]
    assert w["readinessProbe"]["failureThreshold"] == 1
    # a template that already starts Ray, or has its own probes, is left alone
    rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        command=["bash", "-c"], args=["ray start --head --block"], readinessProbe={"tcpSocket": {"port": 6379}})
    h2 = build_pod(rc, "head")["spec"]["containers"][0]
    assert h2["args"] == ["ray start --head --block"] and h2["readinessProbe"] == {"tcpSocket": {"port": 6379}}
    opts = PodOptions(inject_wait_gcs_ready=False)
    no_init = build_pod(rc, "worker", rc["spec"]["workerGroupSpecs"][0], options=opts)
    assert "initContainers" not in no_init["spec"]


def test_autoscaler_sidecar_is_built_like_kuberay() -> None:
    rs = rayservice("demo")
    cfg = rs["spec"]["rayClusterConfig"]
    cfg["enableInTreeAutoscaling"] = True
    cfg["autoscalerOptions"] = {
        "image": "example/autoscaler:1",
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "250m", "memory": "256Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
        "env": [{"name": "EXTRA", "value": "1"}],
        "envFrom": [{"configMapRef": {"name": "autoscaler-env"}}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    rc = _cluster_obj(rs)
    head = build_pod(rc, "head")
    ray, autoscaler = head["spec"]["containers"]
    assert "--no-monitor" in ray["args"][0]
    assert head["spec"]["serviceAccountName"] == "demo-abcde"
    assert autoscaler["name"] == "autoscaler" and autoscaler["image"] == "example/autoscaler:1"
    assert autoscaler["command"] == ["/bin/bash", "-c", "--"]
    assert autoscaler["args"] == [
        "ray kuberay-autoscaler --cluster-name $(RAY_CLUSTER_NAME) --cluster-namespace $(RAY_CLUSTER_NAMESPACE)"]
    assert autoscaler["resources"] == cfg["autoscalerOptions"]["resources"]
    assert autoscaler["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False}
    assert [e["name"] for e in autoscaler["env"]] == [
        "RAY_CLUSTER_NAME", "RAY_CLUSTER_NAMESPACE", "RAY_HEAD_POD_NAME", "KUBERAY_CRD_VER",
        "KUBERAY_GEN_AUTOSCALER_START_CMD", "EXTRA"]
    assert autoscaler["envFrom"] == [{"configMapRef": {"name": "autoscaler-env"}}]
    assert autoscaler["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"},
                                          {"name": "ray-logs", "mountPath": "/tmp/ray"}]
    assert {"name": "ray-logs", "mountPath": "/tmp/ray"} in ray["volumeMounts"]
    without = build_pod(rc, "head", options=PodOptions(autoscaler_sidecar=False))
    assert [c["name"] for c in without["spec"]["containers"]] == ["ray-head"]
    assert "--no-monitor" in without["spec"]["containers"][0]["args"][0]


def test_services_and_hash_are_built_like_kuberay() -> None:
    rs = rayservice("demo", serveService={
        "metadata": {"name": "gateway", "labels": {"team": "x"}, "annotations": {"a": "b"}},
        "spec": {"type": "NodePort", "ports": [{"name": "serve", "port": 80, "targetPort": 8000,
                                                "appProtocol": "http"}, {"name": "other", "port": 1}]},
    })  # fmt: skip
    rs["metadata"]["namespace"] = "ns1"
    rc = _cluster_obj(rs)
    svc = build_serve_service(rs, rc)
    assert svc["metadata"]["name"] == "gateway"
    assert svc["metadata"]["labels"] == {"team": "x", "ray.io/originated-from-cr-name": "demo",
                                         "ray.io/originated-from-crd": "RayService", "ray.io/serve": "demo-serve"}
    assert svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["spec"]["selector"] == {"ray.io/cluster": "demo-abcde", "ray.io/serve": "true"}
    assert svc["spec"]["type"] == "NodePort"
    # auto-detected serve ports only, the user's definition of a port with the same name wins
    assert svc["spec"]["ports"] == [{"name": "serve", "port": 80, "targetPort": 8000, "appProtocol": "http"}]
    plain = rayservice("demo")
    plain["metadata"]["namespace"] = "ns1"
    default = build_serve_service(plain, rc)
    assert default["metadata"]["name"] == "demo-serve-svc" and default["spec"]["ports"] == [{"name": "serve",
                                                                                             "port": 8000}]
    # the hash ignores replicas/min/max (autoscaler-owned) but not the templates
    cfg = rs["spec"]["rayClusterConfig"]
    base = cluster_spec_hash(cfg)
    scaled = copy.deepcopy(cfg)
    scaled["workerGroupSpecs"][0].update(replicas=4, minReplicas=0, maxReplicas=9)
    assert cluster_spec_hash(scaled) == base == rc["metadata"]["annotations"][HASH_ANNOTATION]
    changed = copy.deepcopy(cfg)
    changed["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] = "rayproject/ray:2.61.0"
    assert cluster_spec_hash(changed) != base
    assert json.loads(serve_config_json(SERVE_CONFIG))["applications"][1]["route_prefix"] is None
    assert serve_config_json("") == b"{}"


# ------------------------------------------------------------------------------ on the real API server


def test_custom_serve_service_and_serve_config_updates(harness: Harness) -> None:
    c, ns = harness.c, harness.ns
    harness.create(rayservice("demo", replicas=1, serveService={
        "metadata": {"name": "gateway", "labels": {"team": "serving"}, "annotations": {"x": "y"}},
        "spec": {"ports": [{"name": "serve", "port": 80, "targetPort": 8000}]},
    }))  # fmt: skip
    harness.running("demo")
    [cname] = clusters(c, ns)
    svc = c.get(f"/api/v1/namespaces/{ns}/services/gateway")
    assert c.get(f"/api/v1/namespaces/{ns}/services/demo-serve-svc", missing_ok=True) is None
    assert svc["spec"]["selector"] == {"ray.io/cluster": cname, "ray.io/serve": "true"}
    assert svc["metadata"]["labels"]["team"] == "serving" and svc["metadata"]["annotations"] == {"x": "y"}
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("serve", 80, 8000)]
    harness.until(lambda: endpoint_pods(c, ns, "gateway") == live(ray_pods(c, ns, cname)), "gateway endpoints")
    assert get_rs(c, ns, "demo")["status"]["numServeEndpoints"] == 2

    # a new serveConfigV2 is submitted to the same cluster (no rollout)
    new_config = SERVE_CONFIG.replace("num_replicas: 1", "num_replicas: 2")
    patch_rs(c, ns, "demo", {"spec": {"serveConfigV2": new_config}})
    harness.until(lambda: harness.fakes.last_config(cname) == json.loads(serve_config_json(new_config)),
                  "new serve config submitted")
    assert len(harness.fakes.submitted[cname]) == 2 and list(clusters(c, ns)) == [cname]

    # a failing dashboard is recorded, does not stop the loop, and the apps' status comes back afterwards
    harness.fakes.fail(cname)
    harness.until(lambda: harness.kuberay.errors, "dashboard error recorded")
    passes = harness.kuberay.passes
    harness.until(lambda: harness.kuberay.passes > passes + 2, "loop keeps running")
    harness.fakes.fail(cname, False)
    harness.fakes.set_status(cname, "DEPLOY_FAILED", app="engine-a", message="boom")
    harness.until(lambda: get_rs(c, ns, "demo")["status"]["activeServiceStatus"]["applicationStatuses"]["engine-a"]
                  == {"status": "DEPLOY_FAILED", "message": "boom",
                      "serveDeploymentStatuses": {"engine-a": {"status": "UPDATING"}}}, "app status reported")


def test_upgrade_strategy_none_and_replica_changes_make_no_new_cluster(harness: Harness) -> None:
    c, ns = harness.c, harness.ns
    harness.create(rayservice("demo", replicas=1, upgradeStrategy={"type": "None"}))
    harness.running("demo")
    [cname] = clusters(c, ns)
    rc_hash = clusters(c, ns)[cname]["metadata"]["annotations"][HASH_ANNOTATION]

    def settle() -> None:
        passes = harness.kuberay.passes
        harness.until(lambda: harness.kuberay.passes > passes + 4, "a few reconcile passes")

    template = get_rs(c, ns, "demo")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["image"] = "rayproject/ray:2.61.0"
    patch_rs(c, ns, "demo", {"spec": {"rayClusterConfig": {"headGroupSpec": {"template": template}}}})
    settle()
    rs = get_rs(c, ns, "demo")
    assert list(clusters(c, ns)) == [cname] and not pending_name(rs) and active_name(rs) == cname
    assert clusters(c, ns)[cname]["metadata"]["annotations"][HASH_ANNOTATION] == rc_hash
    assert rs["status"]["serviceStatus"] == "Running"

    # replicas alone: KubeRay leaves them to the autoscaler (no new cluster, the RayCluster keeps its replicas) ...
    groups = get_rs(c, ns, "demo")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    groups[0]["replicas"] = 3
    patch_rs(c, ns, "demo", {"spec": {"upgradeStrategy": {"type": "NewCluster"},
                                      "rayClusterConfig": {"workerGroupSpecs": groups}}})
    # (back to NewCluster: the head template change above now rolls out, which is the point of the strategy)
    harness.until(lambda: pending_name(get_rs(c, ns, "demo")), "NewCluster rolls out the pending change")
    new = harness.until(lambda: active_name(r := get_rs(c, ns, "demo")) != cname and active_name(r), "switched")
    rc = clusters(c, ns)[new]
    assert rc["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    harness.until(lambda: len(live(ray_pods(c, ns, new))) == 4, "1 head + 3 workers")
    groups[0]["replicas"] = 1
    patch_rs(c, ns, "demo", {"spec": {"rayClusterConfig": {"workerGroupSpecs": groups}}})
    settle()
    assert clusters(c, ns)[new]["spec"]["workerGroupSpecs"][0]["replicas"] == 3
    assert not pending_name(get_rs(c, ns, "demo"))

    # ... while the RayCluster itself scales when its replicas change (as the autoscaler would patch them)
    body = clusters(c, ns)[new]
    body["spec"]["workerGroupSpecs"][0]["replicas"] = 2
    c.api("PUT", f"/apis/ray.io/v1/namespaces/{ns}/rayclusters/{new}", body)
    harness.until(lambda: len(live(ray_pods(c, ns, new))) == 3, "scaled down to 2 workers")
    # appending a worker group updates the cluster in place
    extra = copy.deepcopy(groups[0])
    extra.update(groupName="extra", replicas=1)
    patch_rs(c, ns, "demo", {"spec": {"rayClusterConfig": {"workerGroupSpecs": [groups[0], extra]}}})
    harness.until(lambda: any(p["metadata"]["labels"]["ray.io/group"] == "extra" for p in ray_pods(c, ns, new)),
                  "appended worker group's pod")
    assert not pending_name(get_rs(c, ns, "demo")) and active_name(get_rs(c, ns, "demo")) == new
    assert harness.kuberay.errors == []


def test_autoscaler_sidecar_on_the_api_server(kubelet: Cluster, namespace: str) -> None:
    c, ns = kubelet, namespace
    rs = rayservice("demo", replicas=1)
    rs["spec"]["rayClusterConfig"].update(enableInTreeAutoscaling=True, autoscalerOptions={
        "resources": {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}}})  # fmt: skip
    c.api("POST", rs_path(ns), rs)
    for sidecar in (True, False):
        with KubeRayStandIn(c, [ns], interval=0.25, dashboard=FakeDashboards(), proxy_healthy=lambda p: True,
                            autoscaler_sidecar=sidecar) as kuberay:
            try:
                head = wait_for(lambda: [p for p in c.get(f"/api/v1/namespaces/{ns}/pods",
                                                          labelSelector="ray.io/node-type=head")["items"]
                                         if not p["metadata"].get("deletionTimestamp")], 30, what="head pod")[0]
                names = [x["name"] for x in head["spec"]["containers"]]
                assert names == (["ray-head", "autoscaler"] if sidecar else ["ray-head"])
                cname = head["metadata"]["labels"]["ray.io/cluster"]
                assert head["spec"]["serviceAccountName"] == cname
                assert c.get(f"/api/v1/namespaces/{ns}/serviceaccounts/{cname}")
                assert c.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{cname}")
                assert c.get(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{cname}")
                if sidecar:
                    assert head["spec"]["containers"][1]["securityContext"]["capabilities"] == {"drop": ["ALL"]}
                wait_for(lambda: get_rs(c, ns, "demo").get("status", {}).get("serviceStatus") == "Running", 30,
                         what="Running")
                assert kuberay.errors == []
            except (AssertionError, TimeoutError) as exc:
                raise AssertionError(f"{exc}\n{kuberay.dump()}") from None
        # next round: a fresh head pod built without the sidecar
        for p in c.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="ray.io/node-type=head")["items"]:
            with contextlib.suppress(KubeError):
                c.api("DELETE", f"/api/v1/namespaces/{ns}/pods/{p['metadata']['name']}",
                      {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})


def test_empty_serve_config_is_put_as_empty_json_on_every_reconcile(harness: Harness) -> None:
    c, ns = harness.c, harness.ns
    rs = rayservice("demo", replicas=1)
    del rs["spec"]["serveConfigV2"]
    harness.create(rs)
    cname = harness.until(lambda: list(clusters(c, ns)), "cluster")[0]
    harness.until(lambda: len(harness.fakes.submitted.get(cname, [])) >= 3, "several PUTs")
    assert all(cfg == {} for cfg in harness.fakes.submitted[cname])
    rs = get_rs(c, ns, "demo")
    assert "serviceStatus" not in rs["status"] and conditions(rs)["Ready"] == ("False", "Initializing")
    assert c.get(f"/api/v1/namespaces/{ns}/services/demo-serve-svc", missing_ok=True) is None


# These two rely on the garbage collector knowing the ray.io kinds (see wait_until_gc_knows_ray_kinds): last.
def test_upgrade_switches_the_serve_service_then_deletes_the_old_cluster(harness: Harness) -> None:
    c, ns = harness.c, harness.ns
    harness.create(rayservice("demo", replicas=1, rayClusterDeletionDelaySeconds=3))
    harness.running("demo")
    [old] = clusters(c, ns)
    old_pods = live(ray_pods(c, ns, old))
    harness.until(lambda: endpoint_pods(c, ns, "demo-serve-svc") == old_pods, "old cluster serving")

    # the new cluster's apps stay DEPLOYING until the test says otherwise
    harness.fakes.default_status = "DEPLOYING"
    template = get_rs(c, ns, "demo")["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    template["spec"]["containers"][0]["env"] = [{"name": "VERSION", "value": "2"}]
    patch_rs(c, ns, "demo", {"spec": {"rayClusterConfig": {"headGroupSpec": {"template": template}}}})
    new = harness.until(lambda: pending_name(get_rs(c, ns, "demo")), "pending cluster named")
    harness.until(lambda: new in clusters(c, ns) and len(harness.serve_ready_pods(new)) == 2,
                  "pending cluster's pods ready for Serve")
    harness.until(lambda: harness.fakes.last_config(new) is not None, "serve config submitted to the new cluster")
    rs = harness.until(lambda: (r := get_rs(c, ns, "demo"))["status"]["pendingServiceStatus"].get(
        "applicationStatuses", {}).get("gateway", {}).get("status") == "DEPLOYING" and r, "pending apps DEPLOYING")
    assert conditions(rs)["UpgradeInProgress"] == ("True", "BothActivePendingClustersExist")
    assert conditions(rs)["Ready"][0] == "True" and rs["status"]["serviceStatus"] == "Running"
    assert active_name(rs) == old
    assert "applicationStatuses" not in rs["status"]["activeServiceStatus"]  # KubeRay skips the active one meanwhile
    new_pods = live(ray_pods(c, ns, new))
    for _ in range(5):  # while the new cluster is not ready, only the OLD cluster's pods serve
        assert endpoint_pods(c, ns, "demo-serve-svc") == old_pods
        time.sleep(0.3)

    wait_until_gc_knows_ray_kinds(c, ns)
    harness.fakes.set_status(new, "RUNNING")
    harness.until(lambda: active_name(get_rs(c, ns, "demo")) == new, "new cluster active")
    switched = time.monotonic()
    rs = get_rs(c, ns, "demo")
    assert not pending_name(rs) and conditions(rs)["UpgradeInProgress"] == ("False", "NoPendingCluster")
    assert c.get(f"/api/v1/namespaces/{ns}/services/demo-serve-svc")["spec"]["selector"]["ray.io/cluster"] == new
    harness.until(lambda: endpoint_pods(c, ns, "demo-serve-svc") == new_pods, "only the new cluster's pods serve")
    assert old in clusters(c, ns)  # still there: rayClusterDeletionDelaySeconds
    harness.until(lambda: old not in clusters(c, ns), "old cluster deleted", timeout=20)
    assert time.monotonic() - switched >= 2.5
    harness.until(lambda: not ray_pods(c, ns, old), "old cluster's pods garbage-collected")
    assert endpoint_pods(c, ns, "demo-serve-svc") == new_pods
    assert harness.kuberay.errors == []


def test_rayservice_becomes_cluster_pods_services_and_running(harness: Harness) -> None:
    c, ns = harness.c, harness.ns
    harness.create(rayservice("demo"))
    rs = harness.running("demo")
    [cname] = clusters(c, ns)
    assert cname.startswith("demo-") and len(cname) == len("demo-") + 5
    rc = clusters(c, ns)[cname]
    assert rc["metadata"]["ownerReferences"][0]["kind"] == "RayService"
    assert rc["metadata"]["ownerReferences"][0]["controller"] is True
    assert rc["metadata"]["labels"]["ray.io/originated-from-cr-name"] == "demo"
    assert rc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "serving"  # the RayService's labels
    assert "finalizers" in get_rs(c, ns, "demo")["metadata"]

    pods = ray_pods(c, ns, cname)
    heads = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head"]
    workers = [p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "worker"]
    assert len(heads) == 1 and len(workers) == 2, [p["metadata"]["name"] for p in pods]
    assert heads[0]["metadata"]["name"].startswith(f"{cname}-head-")
    assert all(p["metadata"]["name"].startswith(f"{cname}-cpu-worker-") for p in workers)
    assert sorted(p["metadata"]["labels"]["ray.io/worker-group-replica-index"] for p in workers) == ["0", "1"]
    for p in pods:
        labels = p["metadata"]["labels"]
        assert labels["ray.io/is-ray-node"] == "yes" and labels["app.kubernetes.io/created-by"] == "kuberay-operator"
        assert labels["ray.io/identifier"] == f"{cname}-{labels['ray.io/node-type']}"
        assert labels["serving.dev/ray-node"] == labels["ray.io/node-type"]
        assert p["metadata"]["ownerReferences"][0]["name"] == cname
    assert heads[0]["spec"]["containers"][0]["args"] == [HEAD_ARGS]
    assert all(w["spec"]["containers"][0]["args"] == [worker_args(cname, ns)] for w in workers)

    # the RayCluster's head Service (headless, ports from the head container) and the RayService's Services
    head_svc = c.get(f"/api/v1/namespaces/{ns}/services/{cname}-head-svc")
    assert head_svc["spec"]["clusterIP"] == "None"
    assert {p["name"]: p["port"] for p in head_svc["spec"]["ports"]} == {
        "gcs": 6379, "dashboard": 8265, "client": 10001, "serve": 8000, "metrics": 8080}
    assert endpoint_pods(c, ns, f"{cname}-head-svc") == {heads[0]["metadata"]["name"]}
    serve = c.get(f"/api/v1/namespaces/{ns}/services/demo-serve-svc")
    assert serve["spec"]["selector"] == {"ray.io/cluster": cname, "ray.io/serve": "true"}
    assert serve["metadata"]["ownerReferences"][0]["name"] == "demo"
    assert c.get(f"/api/v1/namespaces/{ns}/services/demo-head-svc")["spec"]["selector"]["ray.io/cluster"] == cname
    everyone = live(pods)
    harness.until(lambda: endpoint_pods(c, ns, "demo-serve-svc") == everyone, "serve endpoints = all Ray pods")

    # the serve config went to the dashboard as JSON, the status is KubeRay's
    assert harness.fakes.last_config(cname) == json.loads(serve_config_json(SERVE_CONFIG))
    st = rs["status"]
    assert st["activeServiceStatus"]["rayClusterName"] == cname
    assert st["activeServiceStatus"]["applicationStatuses"] == {
        "gateway": {"status": "RUNNING", "serveDeploymentStatuses": {"gateway": {"status": "HEALTHY"}}},
        "engine-a": {"status": "RUNNING", "serveDeploymentStatuses": {"engine-a": {"status": "HEALTHY"}}},
    }
    assert "rayClusterName" not in st["pendingServiceStatus"]
    assert conditions(rs) == {"Ready": ("True", "NonZeroServeEndpoints"),
                              "UpgradeInProgress": ("False", "NoPendingCluster")}
    harness.until(lambda: get_rs(c, ns, "demo")["status"].get("numServeEndpoints") == 3, "numServeEndpoints 3")
    assert clusters(c, ns)[cname]["status"]["state"] == "ready"

    # ray.io/serve follows the proxies' health; excludeHeadPodFromServeSvc takes the head out
    sick = sorted(p["metadata"]["name"] for p in workers)[0]
    harness.unhealthy.add(sick)
    harness.until(lambda: endpoint_pods(c, ns, "demo-serve-svc") == everyone - {sick}, "unhealthy proxy dropped")
    harness.unhealthy.clear()
    patch_rs(c, ns, "demo", {"spec": {"excludeHeadPodFromServeSvc": True}})
    head_name = heads[0]["metadata"]["name"]
    harness.until(lambda: endpoint_pods(c, ns, "demo-serve-svc") == everyone - {head_name}, "head excluded")
    assert list(clusters(c, ns)) == [cname]  # no rollout for that
    assert harness.kuberay.errors == []

    # deleting the RayService takes the RayCluster, its pods and all Services with it
    wait_until_gc_knows_ray_kinds(c, ns)
    c.api("DELETE", rs_path(ns, "demo"))
    harness.until(lambda: not c.get(rs_path(ns))["items"] and not clusters(c, ns), "RayService and cluster gone")
    harness.until(lambda: not ray_pods(c, ns, cname), "Ray pods garbage-collected")
    harness.until(lambda: not c.get(f"/api/v1/namespaces/{ns}/services")["items"], "Services garbage-collected")


def test_group_resources_and_labels_become_ray_start_flags() -> None:
    """KubeRay v1.7's top-level group resources/labels override rayStartParams (updateRayStartParamsResources)."""
    rs = rayservice("demo")
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    group.update(resources={"CPU": "4", "memory": "1Gi", "nvidia.com/gpu": "2", "accel": "0.5"},
                 labels={"zone": "b", "tier": "x"}, rayStartParams={"num-cpus": "1"})
    w = build_pod(_cluster_obj(rs), "worker", _cluster_obj(rs)["spec"]["workerGroupSpecs"][0])
    args = w["spec"]["containers"][0]["args"][0]
    for flag in (" --num-cpus=4 ", " --memory=1073741824 ", " --num-gpus=2 ", """ --resources='{"accel":0.5}' """,
                 " --labels=tier=x,zone=b "):
        assert flag in args, (flag, args)
    assert w["metadata"]["labels"]["zone"] == "b"  # also pod labels

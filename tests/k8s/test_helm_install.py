"""`helm install --wait`, `helm upgrade`, `helm rollback` and `helm uninstall` of helm/serving into a real
Kubernetes 1.20 API server (etcd + kube-apiserver + kube-controller-manager, see tests/k8s/cluster.py).

No KubeRay operator runs, so nothing turns the RayService into Ray pods; what is checked is what the API server
and the real controllers do with the release: every object is admitted, Deployments roll out (the kubelet stand-in
marks their pods Ready), claims (model cache, MLflow store, Redis AOF directory) bind to pre-provisioned volumes,
the stored RayService carries the platform config, the RayService's head/worker pod templates are valid Pods that
land on the GPU node, and the controller's ServiceAccount can reach its own RayService and nothing else.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.config import parse_config
from tests.k8s.cluster import Cluster, KubeError, wait_for
from tests.k8s.conftest import GPU_NODE

pytestmark = pytest.mark.k8s

CHART = Path(__file__).resolve().parents[2] / "helm" / "serving"
RELEASE = "serving"
TIMEOUT = "180s"
_pv_counter = itertools.count(1)


# ------------------------------------------------------------------------------------------------------ helpers


def values(preset: str | None) -> list[str]:
    return ["-f", str(CHART / preset)] if preset else []


def helm_ok(cluster: Cluster, *args: str) -> str:
    proc = cluster.helm(*args, check=False, timeout=400)
    assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def install(cluster: Cluster, namespace: str, *args: str) -> str:
    return helm_ok(cluster, "install", RELEASE, str(CHART), "-n", namespace, "--wait", "--timeout", TIMEOUT, *args)


def manifest(cluster: Cluster, namespace: str, revision: int | None = None) -> list[dict[str, Any]]:
    rev = ["--revision", str(revision)] if revision else []
    out = helm_ok(cluster, "get", "manifest", RELEASE, "-n", namespace, *rev)
    return [d for d in yaml.safe_load_all(out) if d]


def names(docs: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in docs if d["kind"] == kind)


def history(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return json.loads(helm_ok(cluster, "history", RELEASE, "-n", namespace, "-o", "json"))


def rayservice(cluster: Cluster, namespace: str) -> dict[str, Any]:
    items = cluster.get(f"/apis/ray.io/v1/namespaces/{namespace}/rayservices")["items"]
    assert len(items) == 1, [i["metadata"]["name"] for i in items]
    return items[0]


def chart_serve_config(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The chart's Serve config: ConfigMap <release>-serve-config (the rollout controller owns the RayService's
    serveConfigV2 and builds it from there)."""
    cm = cluster.get(f"/api/v1/namespaces/{namespace}/configmaps/{RELEASE}-serve-config")
    return yaml.safe_load(cm["data"]["serveConfigV2.yaml"])


def serve_apps(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Serve application name -> application."""
    return {a["name"]: a for a in config["applications"]}


def serve_app(config: dict[str, Any]) -> dict[str, Any]:
    """The gateway application (the one with the platform config)."""
    [app] = [a for a in serve_apps(config).values() if a["import_path"] == "serving.app:gateway_builder"]
    return app


def deployments_available(cluster: Cluster, namespace: str) -> dict[str, tuple[int, int]]:
    """name -> (desired, available) for every Deployment in the namespace."""
    items = cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"]
    return {d["metadata"]["name"]: (d["spec"]["replicas"], d["status"].get("availableReplicas", 0)) for d in items}


def provision_volumes(cluster: Cluster, n: int = 3) -> None:
    """Pre-provisioned volumes for the release's claims (model cache, MLflow store, Redis AOF directory)."""
    for _ in range(n):
        cluster.create_pv(f"pv-{next(_pv_counter)}")


@pytest.fixture
def release_ns(kubelet: Cluster, namespace: str) -> Iterator[str]:
    """A namespace with volumes ready for one release; the release is uninstalled afterwards."""
    provision_volumes(kubelet)
    yield namespace
    kubelet.helm("uninstall", RELEASE, "-n", namespace, check=False, timeout=120)


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("preset", ["values-llama-8b-awq.yaml", "values-llama-70b-awq.yaml", "values-cpu-demo.yaml"])
def test_install_wait_every_preset(kubelet: Cluster, release_ns: str, preset: str) -> None:
    ns = release_ns
    monitoring = [f"monitoring.{m}.enabled=true" for m in ("serviceMonitor", "prometheusRule", "grafanaDashboard")]
    out = install(kubelet, ns, *values(preset), *(a for m in monitoring for a in ("--set", m)),
                  "--set", "secrets.adminKey.value=test-admin-credential")
    assert "STATUS: deployed" in out
    assert "serving keys create --tenant" in out and "WARNING: no admin key Secret" not in out  # NOTES
    docs = manifest(kubelet, ns)

    # every Deployment of the release rolled out (real deployment/replicaset controllers, pods Ready)
    deps = deployments_available(kubelet, ns)
    assert sorted(deps) == names(docs, "Deployment")
    assert all(avail == want >= 1 for want, avail in deps.values()), deps
    # claims bound by the real persistentvolume-binder (helm --wait waited for that too)
    claims = names(docs, "PersistentVolumeClaim")
    assert f"{RELEASE}-redis" in claims, claims  # Redis keeps the API keys: AOF on its own volume
    for claim in claims:
        pvc = kubelet.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
        assert pvc["status"]["phase"] == "Bound", pvc["status"]
    redis = kubelet.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{RELEASE}-redis")["spec"]["template"]["spec"]
    assert {"name": "data", "persistentVolumeClaim": {"claimName": f"{RELEASE}-redis"}} in redis["volumes"]
    # the admin credential: a Secret the API server admitted, referenced (not inlined) by the Ray pods
    secret = kubelet.get(f"/api/v1/namespaces/{ns}/secrets/{RELEASE}-admin")
    assert set(secret["data"]) == {"admin-key"}
    # the gateway Service has endpoints only once Ray pods serve it (no KubeRay here): it exists and selects them
    for svc in names(docs, "Service"):
        assert kubelet.get(f"/api/v1/namespaces/{ns}/services/{svc}")["spec"]["clusterIP"]
    # a 1.20 API server has no policy/v1: the chart fell back to policy/v1beta1 for the PodDisruptionBudgets
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"]
    assert pdbs and all(pdb["apiVersion"] == "policy/v1beta1" for pdb in pdbs)
    for pdb in pdbs:
        assert kubelet.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/{pdb['metadata']['name']}")
    # monitoring objects admitted by their CRDs
    assert kubelet.get(f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/prometheusrules")["items"]
    assert kubelet.get(f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors")["items"]

    # the stored RayService is the rendered one: the structural CRD pruned no field the chart set
    rs = rayservice(kubelet, ns)
    [rendered] = [d for d in docs if d["kind"] == "RayService"]
    assert rs["spec"] == rendered["spec"]
    # no serveConfigV2 from Helm: the controller owns it, built from the chart's ConfigMap
    assert "serveConfigV2" not in rs["spec"]
    assert rs["metadata"]["annotations"]["serving.dev/serve-config-configmap"] == f"{RELEASE}-serve-config"
    config = chart_serve_config(kubelet, ns)
    # it carries the preset's platform config, and that parses as one (API keys on: the gateway is on 0.0.0.0)
    app = serve_app(config)
    expected = yaml.safe_load((CHART / preset).read_text())["platform"]
    expected["gateway"].setdefault("metrics_port", 8090)
    assert app["args"]["config"] == expected
    cfg = parse_config(app["args"]["config"])
    assert cfg.policies.auth.enabled
    head_env = {e["name"]: e for e in rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["env"]}
    assert head_env["SERVING_ADMIN_KEY"]["valueFrom"]["secretKeyRef"] == {"name": f"{RELEASE}-admin",
                                                                          "key": "admin-key"}
    engine_apps = {a["args"]["name"]: a for a in serve_apps(config).values()
                   if a["import_path"].endswith("engine_builder")}
    assert set(engine_apps) == set(cfg.engines)
    assert {a["deployments"][0]["name"] for a in engine_apps.values()} == {f"engine-{e}" for e in cfg.engines}

    # the RayService pod templates are valid Pods (server-side dry run) ...
    cluster_cfg = rs["spec"]["rayClusterConfig"]
    templates = {"head": cluster_cfg["headGroupSpec"]["template"]}
    templates.update({g["groupName"]: g["template"] for g in cluster_cfg["workerGroupSpecs"]})
    for group, template in templates.items():
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {**template.get("metadata", {}), "name": f"dry-{group}"},
               "spec": template["spec"]}
        kubelet.api("POST", f"/api/v1/namespaces/{ns}/pods", pod, params={"dryRun": "All"})


def test_ray_pod_templates_land_on_the_gpu_node(kubelet: Cluster, release_ns: str) -> None:
    """Create the Pods KubeRay would create from the 8B preset's worker group: they pass admission, request
    nvidia.com/gpu, tolerate the GPU taint and select the GPU operator's labels, so they bind to the GPU node;
    the head group asks for no GPU."""
    ns = release_ns
    install(kubelet, ns, *values("values-llama-8b-awq.yaml"))
    cluster_cfg = rayservice(kubelet, ns)["spec"]["rayClusterConfig"]
    [worker] = [g for g in cluster_cfg["workerGroupSpecs"] if g["groupName"] == "gpu-workers"]
    for i in range(worker["replicas"]):
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**worker["template"].get("metadata", {}), "name": f"ray-worker-{i}"},
               "spec": worker["template"]["spec"]}
        kubelet.api("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    wait_for(lambda: all(
        kubelet.get(f"/api/v1/namespaces/{ns}/pods/ray-worker-{i}")["spec"].get("nodeName") == GPU_NODE
        for i in range(worker["replicas"])), 30, what="worker pods bound to the GPU node")
    limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(limits["nvidia.com/gpu"]) >= 1
    head = cluster_cfg["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in (head.get("resources") or {}).get("limits", {})


def controller_applier(cluster: Cluster, namespace: str) -> Any:
    """The rollout controller's applier as the chart wires it, authenticated as the controller's ServiceAccount."""
    from kubernetes import client

    from serving.rollout.appliers import KubernetesApplier

    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.pki / "ca.crt")
    cfg.api_key = {"authorization": "Bearer " + cluster.service_account_token(namespace, f"{RELEASE}-controller")}
    return KubernetesApplier(RELEASE, namespace, client.ApiClient(cfg), base_configmap=f"{RELEASE}-serve-config")


def live_serve_config(cluster: Cluster, namespace: str) -> dict[str, Any]:
    return yaml.safe_load(rayservice(cluster, namespace)["spec"]["serveConfigV2"])


def test_upgrade_and_rollback_keep_a_rollout_in_progress(kubelet: Cluster, release_ns: str, tmp_path: Path) -> None:
    """The controller owns serveConfigV2: a canary in progress survives `helm upgrade` (with a platform change and
    a new image) and `helm rollback`, while the chart's own changes still arrive."""
    from serving.config import EngineConfig
    from serving.rollout import plan

    ns = release_ns
    preset = values("values-llama-8b-awq.yaml")
    platform = yaml.safe_load((CHART / "values-llama-8b-awq.yaml").read_text())["platform"]
    group = next(iter(platform["model_groups"]))
    seed = next(iter(platform["engines"]))
    platform["rollout"] = {"models": {group: {}}}  # the group follows the MLflow registry
    (tmp_path / "v1.yaml").write_text(yaml.safe_dump({"platform": platform}))
    install(kubelet, ns, *preset, "-f", str(tmp_path / "v1.yaml"))
    rs1 = rayservice(kubelet, ns)
    assert "serveConfigV2" not in rs1["spec"]
    controller = next(n for n in deployments_available(kubelet, ns) if n.endswith("-controller"))
    image1 = kubelet.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{controller}")["spec"]["template"]["spec"][
        "containers"][0]["image"]

    # the controller's first tick: the chart's Serve config written into the RayService
    applier = controller_applier(kubelet, ns)
    assert applier.sync_base() and not applier.sync_base()  # written once; unchanged base: nothing to do
    assert live_serve_config(kubelet, ns) == chart_serve_config(kubelet, ns)
    # a canary step: challenger v2 as its own engine at 5 %
    challenger = EngineConfig.model_validate({**platform["engines"][seed], "max_num_seqs": 32})
    applier.update(lambda c: plan.set_split(plan.add_engine(c, group, f"{group}-v2", challenger), group,
                                            {seed: 95.0, f"{group}-v2": 5.0}))
    canary = live_serve_config(kubelet, ns)
    assert plan.members(canary, group) == {seed: 95.0, f"{group}-v2": 5.0}

    # helm upgrade: the seed engine's autoscaling bounds change and a new image tag
    platform["engines"][seed]["replicas"] = {"min": 1, "max": 3}
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump({"platform": platform}))
    out = helm_ok(kubelet, "upgrade", RELEASE, str(CHART), "-n", ns, *preset, "-f", str(tmp_path / "v2.yaml"),
                  "--set", "image.tag=0.2.0", "--wait", "--timeout", TIMEOUT)
    assert "STATUS: deployed" in out and "REVISION: 2" in out
    rs2 = rayservice(kubelet, ns)
    assert yaml.safe_load(rs2["spec"]["serveConfigV2"]) == canary  # Helm's three-way merge left the field alone
    assert rs2["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith(
        ":0.2.0")
    # ... and the controller rebases on the new chart config: the canary is kept, the chart's change applied
    assert applier.sync_base()
    rebased = live_serve_config(kubelet, ns)
    assert plan.members(rebased, group) == {seed: 95.0, f"{group}-v2": 5.0}
    apps = {a["args"].get("name"): a for a in serve_apps(rebased).values()}
    assert apps[seed]["deployments"][0]["autoscaling_config"]["max_replicas"] == 3
    assert apps[f"{group}-v2"]["args"]["engine"]["max_num_seqs"] == 32
    assert serve_app(rebased)["args"]["config"]["engines"][seed]["replicas"]["max"] == 3
    # the controller Deployment rolled to the new image through a new ReplicaSet, and is available again
    ctl = kubelet.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{controller}")
    assert ctl["status"].get("updatedReplicas") == ctl["status"].get("availableReplicas") == ctl["spec"]["replicas"]

    # helm rollback to revision 1: the chart's config as first installed, the canary still in place
    out = helm_ok(kubelet, "rollback", RELEASE, "1", "-n", ns, "--wait", "--timeout", TIMEOUT)
    assert "Rollback was a success" in out
    rs3 = rayservice(kubelet, ns)
    assert rs3["spec"]["rayClusterConfig"] == rs1["spec"]["rayClusterConfig"]
    assert yaml.safe_load(rs3["spec"]["serveConfigV2"]) == rebased
    assert applier.sync_base()
    back = live_serve_config(kubelet, ns)
    assert plan.members(back, group) == {seed: 95.0, f"{group}-v2": 5.0}
    apps = {a["args"].get("name"): a for a in serve_apps(back).values()}
    assert apps[seed]["deployments"][0]["autoscaling_config"]["max_replicas"] == 4  # the preset's bound again
    ctl = kubelet.get(f"/apis/apps/v1/namespaces/{ns}/deployments/{controller}")
    assert ctl["spec"]["template"]["spec"]["containers"][0]["image"] == image1
    revs = history(kubelet, ns)
    assert [(r["revision"], r["status"]) for r in revs] == [(1, "superseded"), (2, "superseded"), (3, "deployed")]


def test_uninstall_keeps_the_model_cache(kubelet: Cluster, release_ns: str) -> None:
    ns = release_ns
    install(kubelet, ns, *values("values-llama-8b-awq.yaml"))
    claims = names(manifest(kubelet, ns), "PersistentVolumeClaim")
    cache = [c for c in claims if "model-cache" in c]
    assert len(cache) == 1, claims
    helm_ok(kubelet, "uninstall", RELEASE, "-n", ns, "--wait", "--timeout", TIMEOUT)
    left = {p["metadata"]["name"] for p in kubelet.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims")["items"]}
    assert left == set(cache)  # helm.sh/resource-policy: keep; the MLflow and Redis claims went with the release
    assert kubelet.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices")["items"] == []
    assert kubelet.get(f"/apis/apps/v1/namespaces/{ns}/deployments")["items"] == []


def test_controller_service_account_can_patch_its_rayservice_only(kubelet: Cluster, release_ns: str) -> None:
    ns = release_ns
    install(kubelet, ns, *values("values-llama-8b-awq.yaml"))
    docs = manifest(kubelet, ns)
    [sa] = names(docs, "ServiceAccount")
    [rs_name] = names(docs, "RayService")
    user = f"system:serviceaccount:{ns}:{sa}"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]
    # another RayService in the same namespace, which the controller must not touch
    kubelet.apply("apiVersion: ray.io/v1\nkind: RayService\nmetadata: {name: other}\n"
                  "spec: {serveConfigV2: 'applications: []'}\n", namespace=ns)

    def can(verb: str, resource: str, *, group: str = "", name: str = "", namespace: str = ns) -> bool:
        return kubelet.can_i(verb, resource, user=user, groups=groups, group=group, name=name, namespace=namespace)

    # SubjectAccessReview: exactly get/list/watch/patch/update on its own RayService
    for verb in ("get", "list", "watch", "patch", "update"):
        assert can(verb, "rayservices", group="ray.io", name=rs_name), verb
    for verb in ("get", "patch", "update", "delete"):
        assert not can(verb, "rayservices", group="ray.io", name="other"), verb
    assert not can("delete", "rayservices", group="ray.io", name=rs_name)
    assert not can("create", "rayservices", group="ray.io")
    assert not can("list", "rayservices", group="ray.io")  # unnamed list would reveal other RayServices
    assert not can("patch", "rayservices", group="ray.io", name=rs_name, namespace="default")
    assert not can("get", "secrets", name="serving-cloud-api-keys")
    assert not can("get", "secrets", name="serving-admin")
    assert not can("patch", "deployments", group="apps")
    assert not can("create", "pods")
    assert not can("patch", "rayservices/status", group="ray.io", name=rs_name)

    # and for real, with the ServiceAccount's own token
    token = kubelet.service_account_token(ns, sa)
    base = f"/apis/ray.io/v1/namespaces/{ns}/rayservices"
    got = kubelet.api("GET", f"{base}/{rs_name}", token=token)
    assert got["metadata"]["name"] == rs_name
    listed = kubelet.api("GET", base, token=token, params={"fieldSelector": f"metadata.name={rs_name}"})
    assert [i["metadata"]["name"] for i in listed["items"]] == [rs_name]
    patched = kubelet.api("PATCH", f"{base}/{rs_name}", {"metadata": {"annotations": {"serving.dev/probe": "1"}}},
                          content_type="application/merge-patch+json", token=token)
    assert patched["metadata"]["annotations"]["serving.dev/probe"] == "1"
    for method, path, body in [
        ("PATCH", f"{base}/other", {"metadata": {"annotations": {"x": "1"}}}),
        ("DELETE", f"{base}/{rs_name}", None),
        ("GET", base, None),
        ("GET", f"/api/v1/namespaces/{ns}/secrets", None),
        ("GET", "/apis/ray.io/v1/namespaces/default/rayservices", None),
    ]:
        with pytest.raises(KubeError) as exc:
            kubelet.api(method, path, body, content_type="application/merge-patch+json", token=token)
        assert exc.value.status == 403, (method, path)


@pytest.mark.parametrize(("args", "message"), [
    (["--set-string", "ray.workers.replicas=two"], "ray.workers.replicas: Invalid type. Expected: integer"),
    (["--set", "modelCache.type=hostPath"], "modelCache.type"),
    (["--set", "gateway.replicaCount=2"], "Additional property replicaCount is not allowed"),
])
def test_install_rejects_bad_values_and_creates_nothing(cluster: Cluster, namespace: str, args: list[str],
                                                        message: str) -> None:
    proc = cluster.helm("install", RELEASE, str(CHART), "-n", namespace, *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert json.loads(cluster.helm("list", "-n", namespace, "-a", "-o", "json").stdout) == []
    assert cluster.get(f"/api/v1/namespaces/{namespace}/secrets", labelSelector="owner=helm")["items"] == []
    assert cluster.get(f"/apis/apps/v1/namespaces/{namespace}/deployments")["items"] == []


def test_install_with_external_redis_and_mlflow(kubelet: Cluster, release_ns: str) -> None:
    """The switchable dependencies: no bundled Redis/MLflow objects, URLs passed to the pods instead."""
    ns = release_ns
    install(kubelet, ns, *values("values-llama-8b-awq.yaml"), "--set", "redis.enabled=false",
            "--set", "redis.externalUrl=redis://redis.shared:6379/2", "--set", "mlflow.enabled=false",
            "--set", "mlflow.trackingUri=http://mlflow.shared:5000")
    deps = deployments_available(kubelet, ns)
    assert not [n for n in deps if n.endswith(("-redis", "-mlflow"))], deps
    env = {e["name"]: e.get("value") for e in rayservice(kubelet, ns)["spec"]["rayClusterConfig"]["headGroupSpec"][
        "template"]["spec"]["containers"][0]["env"]}
    assert env["REDIS_URL"] == "redis://redis.shared:6379/2"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.shared:5000"


# ---------------------------------------------------------------- the release's Ray pods, as KubeRay creates them

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The Pod Security Standards' `restricted` profile (v1.25+ rules) applied to one Pod. The 1.20 API server has
    no PodSecurity admission plugin, so the rules are checked here on the Pods the API server admitted."""
    spec, out = pod["spec"], []
    psc = spec.get("securityContext") or {}
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"volume {v['name']}: {sorted(kinds)}")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(flag)
    for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
        sc = c.get("securityContext") or {}
        name = c["name"]
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation not false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            out.append(f"{name}: runAsNonRoot not true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{name}: capabilities not dropped")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added {caps['add']}")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append(f"{name}: hostPort")
    return out


def test_ray_pods_of_the_release_on_the_api_server(kubelet: Cluster, release_ns: str) -> None:
    """The 8B preset's RayService turned into Pods the way KubeRay does it (the KubeRay stand-in, with its autoscaler
    sidecar): the real disruption controller allows drains under the PodDisruptionBudgets, the gateway Service is
    KubeRay's and lists only the active cluster's serve-ready pods, the Hugging Face token comes from its Secret and
    every pod passes the restricted Pod Security profile."""
    from tests.k8s.kuberay_standin import FakeDashboards, KubeRayStandIn

    ns = release_ns
    install(kubelet, ns, *values("values-llama-8b-awq.yaml"), "--set", "huggingface.token.existingSecret=hf",
            "--set", "secrets.adminKey.existingSecret=admin", "--set", "controller.enabled=false",
            "--set", "ray.workers.replicas=2", "--set", "ray.workers.minReplicas=2")
    with KubeRayStandIn(kubelet, [ns], interval=0.25, dashboard=FakeDashboards(), proxy_healthy=lambda p: True):
        def ray_pods() -> list[dict[str, Any]]:
            return kubelet.get(f"/api/v1/namespaces/{ns}/pods", labelSelector="ray.io/is-ray-node=yes")["items"]

        wait_for(lambda: len(ray_pods()) == 5 and all(p["status"].get("phase") == "Running" for p in ray_pods()),
                 90, what="head + 2 GPU workers + 2 gateway workers running")
        pods = ray_pods()
        # PodDisruptionBudgets as the disruption controller computes them for pods owned by a RayCluster
        def pdb(name: str) -> dict[str, Any]:
            return kubelet.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/{RELEASE}-{name}")

        wait_for(lambda: pdb("ray-workers").get("status", {}).get("expectedPods") == 2, 60, what="worker PDB")
        wait_for(lambda: pdb("ray-gateway").get("status", {}).get("expectedPods") == 2, 60, what="gateway PDB")
        assert pdb("ray-workers")["status"]["disruptionsAllowed"] == 1  # minAvailable 1 of 2: one drain at a time
        assert pdb("ray-gateway")["status"]["disruptionsAllowed"] == 1
        # what the chart's old maxUnavailable did on the same pods: no scale subresource -> no drain ever
        kubelet.apply(yaml.safe_dump({
            "apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget", "metadata": {"name": "old-style"},
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"serving.dev/ray-node": "worker"}}}}), ns)
        wait_for(lambda: "disruptionsAllowed" in kubelet.get(
            f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/old-style").get("status", {}), 60,
            what="old-style PDB status")
        assert kubelet.get(f"/apis/policy/v1beta1/namespaces/{ns}/poddisruptionbudgets/old-style")["status"][
            "disruptionsAllowed"] == 0

        # the gateway Service is KubeRay's serve Service: the active cluster's pods whose proxy is healthy
        def gateway_endpoints() -> set[str]:
            ep = kubelet.get(f"/api/v1/namespaces/{ns}/endpoints/{RELEASE}", missing_ok=True) or {}
            return {a["targetRef"]["name"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []}

        wait_for(lambda: gateway_endpoints() == {p["metadata"]["name"] for p in pods}, 60,
                 what="gateway Service endpoints = the Ray pods")
        svc = kubelet.get(f"/api/v1/namespaces/{ns}/services/{RELEASE}")
        active = {p["metadata"]["labels"]["ray.io/cluster"] for p in pods}
        assert svc["spec"]["selector"] == {"ray.io/cluster": active.pop(), "ray.io/serve": "true"}
        assert svc["spec"]["ports"][0]["port"] == 8000

        for pod in pods:
            ray = pod["spec"]["containers"][0]
            env = {e["name"]: e for e in ray["env"]}
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
            assert restricted_violations(pod) == [], (pod["metadata"]["name"], restricted_violations(pod))
        head = next(p for p in pods if p["metadata"]["labels"]["ray.io/node-type"] == "head")
        assert "autoscaler" in [c["name"] for c in head["spec"]["containers"]]  # checked by the profile too
        gpu = [p for p in pods if p["metadata"]["labels"].get("ray.io/group") == "gpu-workers"]
        assert all("accelerator_type:L4" in p["spec"]["containers"][0]["args"][0] for p in gpu)

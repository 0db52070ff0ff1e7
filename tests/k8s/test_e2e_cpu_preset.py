"""The CPU preset of the chart, RUN: every rendered pod as real processes on the real API server, end to end.

`helm install` of helm/serving with values-cpu-demo.yaml into the real Kubernetes 1.20 API server; the process
kubelet stand-in (tests/k8s/podrunner.py) runs each pod's containers from its spec (MLflow server, redis-server,
`serving rollout-controller`, and the Ray head and worker that the KubeRay stand-in (tests/k8s/kuberay_standin.py)
creates from the RayService, with KubeRay's `ray start` commands), each pod in its own network namespace with a pod
IP, Service names resolving to pod IPs. Then, as a user would:

- the rollout controller writes the Serve config from the chart's ConfigMap, the KubeRay stand-in submits it to the
  head's dashboard, the gateway and the SmolLM2 engine start;
- an API key is created through the admin API and a chat completion goes through the gateway Service (the OpenAI
  SDK);
- a version registered in the bundled MLflow (through its Service, as in-cluster clients do: this is what MLflow's
  Host-header check broke) and marked `challenger` is canaried by the controller under traffic and promoted.

Slow (engines start in ~1.5 min each on 2 cores): one test, one install.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.k8s.cluster import Cluster, wait_for

pytestmark = pytest.mark.k8s

CHART = Path(__file__).resolve().parents[2] / "helm" / "serving"
RELEASE = "serving"
ADMIN_KEY = "e2e-admin-credential"
GROUP = "smollm2-135m-instruct"
SEED = "smollm2-135m"
NODE = "cpu-node-1"
# what the "image" has outside /tmp (the chart mounts an emptyDir on /tmp, hiding the host's)
IMAGE_DIRS = "/var/tmp"


def platform_values() -> dict[str, Any]:
    """The CPU preset's platform, with a quick rollout policy for the group (no golden-set eval: analysis only)."""
    platform = yaml.safe_load((CHART / "values-cpu-demo.yaml").read_text())["platform"]
    platform["rollout"] = {
        "poll_interval_s": 2,
        "models": {GROUP: {
            "strategy": {"kind": "canary", "steps": [50, 100], "step_hold_s": 5, "ready_timeout_s": 600},
            "analysis": {"min_requests": 4, "max_ttft_p95_ratio": None, "max_error_rate": 0.2},
            "eval": {"enabled": False},
        }},
    }
    return {"platform": platform}


@pytest.fixture
def baked_models() -> Iterator[Path]:
    """What Dockerfile.cpu bakes at build time (SERVING_BAKED_CACHE_DIR): SmolLM2 converted once, readable by the
    pods' uid 1000 (pytest's own tmp dirs are private to root, and /tmp is an emptyDir in the Ray pods)."""
    from models.smollm2 import NAME, build_smollm2

    built = build_smollm2()
    root = Path(tempfile.mkdtemp(prefix="serving-baked-", dir=IMAGE_DIRS))
    try:
        shutil.copytree(built, root / "models" / NAME)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def stack(cluster: Cluster, namespace: str, tmp_path: Path, baked_models: Path) -> Iterator[tuple[Any, str]]:
    from tests.k8s.kuberay_standin import KubeRayStandIn
    from tests.k8s.podrunner import ImageSpec, ProcessKubelet, venv_image

    if not cluster.get(f"/api/v1/nodes/{NODE}", missing_ok=True):
        cluster.create_ready_node(NODE, {"node-role.serving.dev/cpu": "true"}, cpu="32", memory="128Gi")
    for name in ("mlflow", "redis"):
        shutil.rmtree(f"/tmp/{namespace}-{name}", ignore_errors=True)  # the hostPath of an earlier run's volume
        cluster.create_pv(f"{namespace}-{name}", size="20Gi")
    # the image's HOME (Dockerfile.cpu: /home/ray, owned by uid 1000; Ray Serve LLM writes ~/.cache/torch there)
    home = Path(tempfile.mkdtemp(prefix="serving-home-", dir=IMAGE_DIRS))
    home.chmod(0o755)
    os.chown(home, 1000, 1000)
    image = venv_image({"SERVING_BAKED_CACHE_DIR": str(baked_models), "HOME": str(home)})
    images = {
        "ghcr.io/example/serving-cpu": image,
        "ghcr.io/example/serving-controller": image,
        "ghcr.io/mlflow/mlflow": image,  # mlflow 3.17.2 of the dev venv
        "docker.io/library/redis": ImageSpec(env={"PATH": "/usr/local/bin:/usr/bin:/bin"}),
    }
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(platform_values()))
    with ProcessKubelet(cluster, namespaces=[namespace], nodes=[NODE], images=images) as kubelet, \
            KubeRayStandIn(cluster, [namespace], autoscaler_sidecar=False) as kuberay:
        try:
            proc = cluster.helm("install", RELEASE, str(CHART), "-n", namespace,
                                "-f", str(CHART / "values-cpu-demo.yaml"),
                                "-f", str(tmp_path / "values.yaml"), "--set", f"secrets.adminKey.value={ADMIN_KEY}",
                                "--wait", "--timeout", "600s", check=False, timeout=700)
            assert proc.returncode == 0, proc.stdout + proc.stderr + kubelet.dump()
            yield kubelet, namespace
        except BaseException:
            print(kubelet.dump(log_lines=40))
            print(kuberay.dump())
            hold(cluster)
            raise
        finally:
            cluster.helm("uninstall", RELEASE, "-n", namespace, check=False, timeout=120)
    shutil.rmtree(home, ignore_errors=True)


def hold(cluster: Cluster) -> None:
    """Debugging: SERVING_E2E_HOLD_S=<s> keeps a failed stack up that long (kubectl with KUBECONFIG=<printed>)."""
    if os.environ.get("SERVING_E2E_HOLD_S"):
        seconds = os.environ["SERVING_E2E_HOLD_S"]
        print(f"holding the stack for {seconds} s; KUBECONFIG={cluster.kubeconfig}", flush=True)
        time.sleep(float(os.environ["SERVING_E2E_HOLD_S"]))


def rayservice(cluster: Cluster, ns: str) -> dict[str, Any]:
    return cluster.get(f"/apis/ray.io/v1/namespaces/{ns}/rayservices/{RELEASE}")


def apps_running(cluster: Cluster, ns: str, names: set[str] | None = None) -> bool:
    apps = ((rayservice(cluster, ns).get("status") or {}).get("activeServiceStatus") or {}).get(
        "applicationStatuses") or {}
    wanted = names or set(apps)
    return bool(apps) and all((apps.get(n) or {}).get("status") == "RUNNING" for n in wanted)


def test_cpu_preset_serves_and_promotes_a_canary(cluster: Cluster, stack: tuple[Any, str]) -> None:
    kubelet, ns = stack
    try:
        _serve_and_promote(cluster, kubelet, ns)
    except BaseException:
        print(kubelet.dump(log_lines=40))
        hold(cluster)
        raise


def _serve_and_promote(cluster: Cluster, kubelet: Any, ns: str) -> None:
    from openai import OpenAI

    from serving.config import EngineConfig
    from serving.rollout.registry import Registry
    from serving.rollout.spec import CHALLENGER, CHAMPION, VersionSpec

    # the controller owns serveConfigV2: it wrote the chart's Serve config; KubeRay (stand-in) deployed it
    wait_for(lambda: (rayservice(cluster, ns)["spec"].get("serveConfigV2") or "").strip(), 120,
             what="the controller writing serveConfigV2 from the chart's ConfigMap")
    wait_for(lambda: apps_running(cluster, ns), 600, 2, what="gateway and engine apps RUNNING")

    gateway = kubelet.service_url(ns, RELEASE, 8000)
    http = httpx.Client(base_url=gateway, timeout=60)
    created = http.post("/admin/v1/keys", json={"tenant": "e2e", "name": "test"},
                        headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert created.status_code == 201, created.text
    client = OpenAI(base_url=f"{gateway}/v1", api_key=created.json()["key"], max_retries=0)
    assert [m.id for m in client.models.list().data if m.id == GROUP] == [GROUP]
    raw = client.chat.completions.with_raw_response.create(
        model=GROUP, messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16,
        temperature=0)
    reply = raw.parse()
    assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
    assert raw.headers["x-serving-model"] == SEED
    assert http.get("/v1/models", headers={"authorization": "Bearer sk-serving-wrong"}).status_code == 401
    # the gateway replica's own metrics, through the headless per-replica Service (what Prometheus and the
    # controller's analysis scrape): the request above is counted there
    replica = httpx.get(kubelet.service_url(ns, f"{RELEASE}-gateway-metrics", 8090) + "/metrics", timeout=30)
    assert replica.status_code == 200 and 'serving_requests_total{' in replica.text and SEED in replica.text

    # the registry through the MLflow Service, from inside the cluster (the controller) and from here
    registry = Registry(kubelet.service_url(ns, f"{RELEASE}-mlflow", 5000))
    seed = EngineConfig.model_validate(platform_values()["platform"]["engines"][SEED])
    v1 = registry.register(GROUP, VersionSpec(engine=seed)).version
    registry.set_alias(GROUP, CHAMPION, v1)
    v2 = registry.register(GROUP, VersionSpec(engine=seed.model_copy(update={"max_num_seqs": 8}))).version
    registry.set_alias(GROUP, CHALLENGER, v2)

    stop = threading.Event()
    answered: dict[str, int] = {}

    def traffic() -> None:
        # 16 callers: the split is sticky per caller (the request's `user`), so one caller alone would stay on one side
        n = 0
        while not stop.is_set():
            n += 1
            try:
                r = client.chat.completions.with_raw_response.create(
                    model=GROUP, messages=[{"role": "user", "content": "Say hi."}], max_tokens=4, user=f"user-{n % 16}",
                    extra_headers={"cache-control": "no-cache"})
                engine = r.headers.get("x-serving-model", "?")
                answered[engine] = answered.get(engine, 0) + 1
            except Exception:
                answered["error"] = answered.get("error", 0) + 1
                time.sleep(0.5)

    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    try:
        def state() -> str:
            return registry.version(GROUP, v2).rollout_tags.get("state", "")
        wait_for(lambda: state() in ("promoted", "rolled_back"), 900, 3, what=f"v{v2} promoted ({answered})")
    finally:
        stop.set()
        worker.join(30)
    assert state() == "promoted", registry.version(GROUP, v2).rollout_tags
    assert registry.aliases(GROUP) == {CHAMPION: v2}
    assert answered.get(f"{GROUP}-v{v2}", 0) > 0 and not answered.get("error"), answered
    # the promoted engine serves the group; the seed engine's app is retired
    wait_for(lambda: client.chat.completions.with_raw_response.create(
        model=GROUP, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
        extra_headers={"cache-control": "no-cache"}).headers["x-serving-model"] == f"{GROUP}-v{v2}", 120, 2,
        what="the promoted version answering alone")

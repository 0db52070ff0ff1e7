"""Registry-driven rollouts on the real stack, under steady client load (runs last: it replaces engines).

A real `mlflow server` with a sqlite store (the stack config's `rollout.registry_uri`), the real
`serving rollout-controller` as a separate process (LocalServeApplier on the test's Ray cluster, the gateway's
/metrics, evals through the gateway), real vLLM-CPU engines:

1. a canary of a second tiny Llama build (another seed) on the tiny group promotes itself, with the controller
   killed mid-canary and restarted (it resumes from the registry's tags) and the MLflow server killed for 15 s
   right after (the controller waits for it; clients never notice);
2. a challenger whose answers fail the route's JSON gate (the random-weight tiny Llama standing in for a bad
   fine-tune of SmolLM2) is rolled back by the gate pass-rate analysis;
in both, no client request fails, the gateway never restarts, and at most one extra engine serves the group.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from serving.rollout.registry import Registry
from serving.rollout.spec import CHALLENGER, CHAMPION, parse_spec
from tests.integration.support import (
    FRANCE,
    JSON_ROUTE,
    ROOT,
    SERVING,
    SMOL_ENGINE,
    SMOL_GROUP,
    TINY_ENGINE,
    TINY_GROUP,
    Stack,
    metric_samples,
    metric_value,
)
from tests.support.mlflow_server import MlflowServer

pytestmark = pytest.mark.integration

ROLLOUT_TIMEOUT_S = 600
REGISTRY_OUTAGE_S = 15


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Controller:
    """`serving rollout-controller` as a child process (what the chart's Deployment runs)."""

    def __init__(self, stack: Stack, log: Path):
        self.stack, self.log, self.port = stack, log, _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([SERVING, "rollout-controller", "--port", str(self.port), "--drain-s", "3"],
                                     env=self.stack.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            time.sleep(0.5)
        raise AssertionError("the rollout controller did not come up:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # no clean shutdown: state must come from the registry
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Load:
    """Steady clients (a few threads, each a distinct user) until stopped; counts every outcome."""

    def __init__(self, url: str, body: Callable[[int, int], dict[str, Any]], threads: int = 3):
        self.url, self.body, self.threads = url, body, threads
        self.status: collections.Counter[str] = collections.Counter()
        self.models: collections.Counter[str] = collections.Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=120) as client:
            while not self._stop.is_set():
                n += 1
                try:
                    resp = client.post("/v1/chat/completions", json=self.body(i, n))
                    self.status[str(resp.status_code)] += 1
                    self.models[resp.headers.get("x-serving-model", "?")] += 1
                    if resp.status_code != 200:
                        self.failures.append(f"{resp.status_code}: {resp.text[:300]}")
                except httpx.HTTPError as exc:
                    self.status[type(exc).__name__] += 1
                    self.failures.append(repr(exc))
                time.sleep(0.05)

    def __enter__(self) -> Load:
        for w in self._workers:
            w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(180)


@pytest.fixture(scope="module")
def registry(stack: Stack) -> Registry:
    uri = yaml.safe_load(stack.config.read_text())["rollout"]["registry_uri"]
    return Registry(uri)


@pytest.fixture(scope="module")
def controller(stack: Stack) -> Iterator[Controller]:
    ctl = Controller(stack, stack.config.parent / "rollout-controller.log")
    ctl.start()
    yield ctl
    ctl.stop()


def register_champion(stack: Stack, registry: Registry, model: str, engine: str) -> int:
    """The engine the stack serves today becomes the model's first version and its champion."""
    proc = stack.cli("models", "register", model, "--from-engine", engine, "--config", str(stack.config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = max(v.version for v in registry.versions(model))
    registry.set_alias(model, CHAMPION, version)
    return version


def wait_state(registry: Registry, model: str, version: int, states: set[str], watch: Callable[[], None],
               timeout: float = ROLLOUT_TIMEOUT_S) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tags = registry.version(model, version).rollout_tags
        watch()
        if tags.get("state") in states:
            return tags
        time.sleep(0.5)
    raise AssertionError(f"{model} v{version} did not reach {states}: {registry.version(model, version).tags}")


def group_engines(http: httpx.Client, prefix: str) -> set[str]:
    """Engines of a group the gateway knows now (its /ready lists every engine in its table)."""
    engines = http.get("/ready").json()["engines"]
    return {e for e in engines if e.startswith(prefix)}


def settled_engines(http: httpx.Client, prefix: str, expected: set[str], timeout_s: float = 30) -> set[str]:
    """The group's engines once the gateway shows `expected` (Serve applies the final config asynchronously after
    the controller tags the end state), or what it shows at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        engines = group_engines(http, prefix)
        if engines == expected or time.monotonic() > deadline:
            return engines
        time.sleep(0.5)


def gateway_requests(http: httpx.Client) -> float:
    return metric_value(metric_samples(http.get("/metrics").text), "serving_requests_total")


def test_canary_promotes_under_load_and_survives_a_controller_restart(
        stack: Stack, http: httpx.Client, registry: Registry, controller: Controller,
        mlflow_server: MlflowServer) -> None:
    model = TINY_GROUP
    champion = register_champion(stack, registry, model, TINY_ENGINE)
    spec = parse_spec({"engine": {"model": "builtin:tiny-llama?seed=7", "device": "cpu", "max_model_len": 2048}})
    before_requests = gateway_requests(http)
    peak_engines: set[str] = set()

    def watch() -> None:
        engines = group_engines(http, "tiny")
        peak_engines.update(engines)
        assert len(engines) <= 2, f"more than one extra engine: {engines}"

    def body(i: int, n: int) -> dict[str, Any]:
        return {"model": model, "messages": [{"role": "user", "content": f"Say hi #{n}"}], "max_tokens": 8,
                "stream": (i + n) % 2 == 0, "user": f"user-{i}-{n % 7}"}

    with Load(stack.url, body) as load:
        challenger = registry.register(model, spec).version
        registry.set_alias(model, CHALLENGER, challenger)
        wait_state(registry, model, challenger, {"canary"}, watch)
        controller.kill()  # mid-canary, no goodbye
        controller.start()
        mlflow_server.kill()  # and the registry dies mid-canary too: the controller waits, serving goes on
        time.sleep(REGISTRY_OUTAGE_S)
        assert controller.proc is not None and controller.proc.poll() is None, "the controller died with MLflow"
        mlflow_server.start(timeout_s=300)  # a cold start next to three engines under load can take minutes
        tags = wait_state(registry, model, challenger, {"promoted"}, watch)
    assert not load.failures, load.failures[:5]
    assert load.status["200"] > 50
    name = f"{model}-v{challenger}"
    assert load.models[TINY_ENGINE] > 0 and load.models[name] > 0, load.models  # both served during the split
    assert registry.aliases(model) == {CHAMPION: challenger}
    assert registry.version(model, champion).rollout_tags["state"] == "retired"
    assert peak_engines == {TINY_ENGINE, name}
    assert settled_engines(http, "tiny", {name}) == {name}  # the old engine is retired
    assert gateway_requests(http) > before_requests  # the gateway's counters never reset: no restart
    resp = http.post("/v1/chat/completions", json={"model": model, "messages": FRANCE, "max_tokens": 4})
    assert resp.status_code == 200 and resp.headers["x-serving-model"] == name
    run = registry.client.get_run(tags["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["challenger_share"] == 100.0
    status = stack.cli("rollout", "status", model, "--config", str(stack.config))
    assert f"v{challenger}: promoted" in status.stdout, status.stdout + status.stderr


def test_challenger_failing_quality_gates_is_rolled_back_under_load(
        stack: Stack, http: httpx.Client, registry: Registry, controller: Controller) -> None:
    model = SMOL_GROUP
    register_champion(stack, registry, model, SMOL_ENGINE)
    # the random-weight tiny Llama as a "new SmolLM2": it never writes the route's JSON
    bad = parse_spec({"engine": {"model": "builtin:tiny-llama?seed=3", "device": "cpu", "max_model_len": 2048}})
    prompt = [{"role": "system", "content": "Answer with a JSON object with keys city and country."}, *FRANCE]

    def body(i: int, n: int) -> dict[str, Any]:
        return {"model": JSON_ROUTE, "messages": prompt, "max_tokens": 24, "user": f"user-{i}-{n % 9}"}

    engines_seen: set[str] = set()
    with Load(stack.url, body) as load:
        challenger = registry.register(model, bad).version
        registry.set_alias(model, CHALLENGER, challenger)
        wait_state(registry, model, challenger, {"canary"}, lambda: engines_seen.update(group_engines(http, "smol")))
        t_canary = time.monotonic()
        tags = wait_state(registry, model, challenger, {"rolled_back"},
                          lambda: engines_seen.update(group_engines(http, "smol")))
        t_back = time.monotonic()
    assert not load.failures, load.failures[:5]  # gate failures escalate to the cloud tier: clients never see them
    assert "quality-gate pass rate" in tags["reason"], tags
    assert float(tags["rolled_back_at"]) > 0
    assert t_back - t_canary < 120
    assert registry.aliases(model)[CHAMPION] != challenger
    assert engines_seen == {SMOL_ENGINE, f"{model}-v{challenger}"}
    assert settled_engines(http, "smol", {SMOL_ENGINE}) == {SMOL_ENGINE}  # challenger removed after the drain
    samples = metric_samples(http.get("/metrics").text)
    assert metric_value(samples, "serving_engine_answers_total", engine=f"{model}-v{challenger}",
                        outcome="gate_fail") > 0
    listing = stack.cli("models", "list", model, "--config", str(stack.config))
    assert "rolled_back" in listing.stdout and "quality-gate pass rate" in listing.stdout, listing.stdout

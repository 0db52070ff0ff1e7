"""An engine replica dies: the gateway fails cleanly, the other model group is unaffected, Serve recovers.

This module breaks the stack on purpose, so it runs last (conftest orders `test_zz_*` modules after the rest).

What it proves, on the real Ray Serve + vLLM path:

* a stream that is being generated when its engine replica dies ends with an OpenAI error event and
  `data: [DONE]` (HTTP 200 had been sent), not a cut connection or a traceback;
* requests to the dead engine's group never get a 500: they get a 503 `engine_unavailable` envelope
  (when the gateway's handle still routes to the dead replica) or, as Ray Serve usually does with no live
  replica, wait until Serve has started a new one and then succeed;
* `/ready` reports that engine not ready during the outage and ready again after it; the other group keeps
  answering meanwhile.

The kill is done by a helper process attached to the cluster (`ray.kill` of the replica actor, found by name):
it connects first and kills on a signal from the test, so that the kill lands while the stream is running.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from typing import Any

import httpx
import pytest

from serving.deploy.serve_config import engine_app_name
from tests.integration.support import (
    APP,
    HELLO,
    PYTHON,
    ROOT,
    SMOL_ENGINE,
    SMOL_GROUP,
    TINY_ENGINE,
    TINY_GROUP,
    Stack,
    assert_envelope,
    metric_samples,
    sse_data,
)

pytestmark = pytest.mark.integration

KILLER = """
import json, sys
import ray
ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
prefix = sys.argv[1]
names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
         if a["namespace"] == "serve" and a["name"].startswith(prefix)]
print(json.dumps(names), flush=True)
sys.stdin.readline()
for name in names:
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
print("KILLED", flush=True)
"""
RECOVERY_TIMEOUT_S = 300


def _outcome(resp: httpx.Response) -> str:
    """'200', or '503' after checking it is the engine_unavailable envelope; anything else fails."""
    if resp.status_code == 503:
        assert_envelope(resp, 503, code="engine_unavailable")
        assert int(resp.headers["retry-after"]) >= 1
    else:
        assert resp.status_code == 200, f"{resp.status_code}: {resp.text[:500]}"
    return str(resp.status_code)


def _tiny_request(stack: Stack, stream: bool, results: list[Any]) -> None:
    body = {"model": TINY_GROUP, "messages": HELLO, "max_tokens": 4, "stream": stream}
    try:
        with httpx.Client(base_url=stack.url, timeout=RECOVERY_TIMEOUT_S) as c:
            resp = c.post("/v1/chat/completions", json=body)
            if stream and resp.status_code == 200:
                events = sse_data(resp.text)
                assert events[-1] == "[DONE]"
                assert all("error" not in json.loads(e) for e in events[:-1]), resp.text
            results.append(_outcome(resp))
    except BaseException as exc:  # reported by the test thread
        results.append(exc)


def test_engine_replica_dies(stack: Stack, http: httpx.Client):
    replica_prefix = f"SERVE_REPLICA::{engine_app_name(APP, TINY_ENGINE)}#engine-{TINY_ENGINE}#"
    killer = subprocess.Popen([PYTHON, "-c", KILLER, replica_prefix],
                              env=stack.env, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert killer.stdin is not None and killer.stdout is not None
        replicas = json.loads(killer.stdout.readline() or "[]")
        assert len(replicas) == 1, f"expected one engine-{TINY_ENGINE} replica, found {replicas}"

        # 1. A long stream is running when the replica dies (2000 tokens take several seconds on CPU).
        body = {"model": TINY_GROUP, "messages": HELLO, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        finished_before_kill = False
        with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            events = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[len("data: "):])
                if len(events) >= 5:
                    break
            killer.stdin.write("kill\n")
            killer.stdin.flush()
            assert killer.stdout.readline().strip() == "KILLED"
            finished_before_kill = any('"finish_reason":"length"' in e for e in events)
            events += [line[len("data: "):] for line in lines if line.startswith("data: ")]
        killer.wait(timeout=60)
    finally:
        if killer.poll() is None:
            killer.kill()
            killer.wait()

    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    if not finished_before_kill:
        error = chunks[-1]
        assert set(error) == {"error"}, error
        assert set(error["error"]) == {"message", "type", "param", "code"}
        assert error["error"]["type"] == "service_unavailable", error
        assert all("error" not in c for c in chunks[:-1])
        assert not any(c["choices"][0].get("finish_reason") for c in chunks[:-1] if c.get("choices"))

    # 2. During the outage: requests to the dead engine's group, /ready, and the other group.
    results: list[Any] = []
    threads = [threading.Thread(target=_tiny_request, args=(stack, stream, results)) for stream in (False, True)]
    for t in threads:
        t.start()
    ready_states: list[tuple[int, dict[str, str]]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = http.get("/ready", timeout=30)
        ready_states.append((ready.status_code, ready.json()["engines"]))
        if ready.status_code == 503:
            break
        time.sleep(0.5)
    assert ready_states[-1][0] == 503, ready_states
    assert ready_states[-1][1][TINY_ENGINE].startswith("not ready"), ready_states

    other = http.post("/v1/chat/completions", json={"model": SMOL_GROUP, "messages": HELLO, "max_tokens": 4})
    assert other.status_code == 200, other.text
    assert other.headers["x-serving-model"] == SMOL_ENGINE

    # 3. Serve replaces the replica; the requests sent during the outage end cleanly; the group answers again.
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        ready = http.get("/ready", timeout=30)
        if ready.status_code == 200:
            break
        time.sleep(2)
    assert ready.status_code == 200, f"engine {TINY_ENGINE} did not recover in {RECOVERY_TIMEOUT_S} s: {ready.text}"
    for t in threads:
        t.join(timeout=RECOVERY_TIMEOUT_S)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
    assert sorted(results) in (["200", "200"], ["200", "503"], ["503", "503"]), results

    resp = http.post("/v1/chat/completions", json={"model": TINY_GROUP, "messages": HELLO, "max_tokens": 4})
    assert _outcome(resp) == "200"
    print(f"stream cut by the kill: {not finished_before_kill}; requests during the outage: {results}; "
          f"/ready polls: {ready_states}")

    # No request in this session got a 500 from the gateway.
    statuses = {s.labels["status_code"] for s in metric_samples(http.get("/metrics").text)["serving_requests_total"]}
    assert "500" not in statuses, statuses

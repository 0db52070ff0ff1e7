"""Graceful drain on the real stack (issue 14): a gateway replica being replaced (a rolling update: `serving up`
with a changed gateway config) gets no new requests and finishes the stream it is serving before it exits; the
clients that keep calling meanwhile are answered. Last module: it replaces the session's gateway replica.

The stream comes from the flaky fake cloud (first tier of CHAOS_CLOUD_ROUTE) scripted to send a word every
quarter second, so it lasts longer than the replacement whatever the box's speed, and costs no CPU."""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.support import CHAOS_CLOUD_ROUTE, FLAKY_TIER, SMOL_GROUP, Stack, sse_chunks

pytestmark = pytest.mark.integration

STREAM_TOKENS = 480  # words of the fake cloud, one per CHUNK_DELAY_S: two minutes
CHUNK_DELAY_S = 0.25
MIN_DRAINING_S = 5  # the session's RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S (conftest)


def _gateway_replica_states(stack: Stack) -> str:
    """The gateway's replica states as `serving status` prints them (e.g. `RUNNING=1, STOPPING=1`)."""
    out = stack.cli("status", "--config", str(stack.config), timeout=120).stdout
    for line in out.splitlines():
        if line.strip().startswith("gateway "):
            return line
    raise ValueError(f"no gateway line in `serving status`:\n{out}")


def _created(url: str) -> int:
    """The `created` time of the replica that answers a new connection (each replica has its own): a kept-alive
    connection stays with the HAProxy process, and so the replica, it was opened on."""
    with httpx.Client(base_url=url, timeout=60) as fresh:
        return int(fresh.get("/v1/models").json()["data"][0]["created"])


def test_a_replaced_gateway_replica_finishes_its_stream_and_no_request_fails(stack: Stack, tmp_path: Any) -> None:
    before = _created(stack.url)
    httpx.post(f"{stack.flaky_url}/_fake/script", timeout=10, json={
        "default": f"chunk_delay:{CHUNK_DELAY_S}", "reply": " ".join(["word"] * (STREAM_TOKENS + 20))},
    ).raise_for_status()
    stream: dict[str, Any] = {}
    first_chunk = threading.Event()

    def read_stream() -> None:
        with httpx.Client(base_url=stack.url, timeout=600) as h, h.stream("POST", "/v1/chat/completions", json={
                "model": CHAOS_CLOUD_ROUTE, "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": STREAM_TOKENS, "stream": True, "stream_options": {"include_usage": True}}) as resp:
            stream["status"] = resp.status_code
            stream["tier"] = resp.headers.get("x-serving-tier")
            parts = []
            for text in resp.iter_text():
                parts.append(text)
                first_chunk.set()
            stream["body"] = "".join(parts)
            stream["ended"] = time.monotonic()

    reader = threading.Thread(target=read_stream)
    reader.start()
    assert first_chunk.wait(120), "the stream did not start"

    cfg = yaml.safe_load(stack.config.read_text())
    cfg["gateway"]["drain_timeout_s"] = float(cfg["gateway"].get("drain_timeout_s", 30)) + 1  # a new gateway version
    changed = tmp_path / "platform-changed.yaml"
    changed.write_text(yaml.safe_dump(cfg, sort_keys=False))

    statuses: list[int] = []
    stop = threading.Event()

    def keep_calling() -> None:
        with httpx.Client(base_url=stack.url, timeout=120) as h:
            while not stop.is_set():
                try:
                    statuses.append(h.post("/v1/chat/completions", json={
                        "model": SMOL_GROUP, "messages": [{"role": "user", "content": "Hi"}],
                        "max_tokens": 2}).status_code)
                except httpx.HTTPError as exc:
                    statuses.append(-1)
                    stream.setdefault("client_errors", []).append(repr(exc))
                time.sleep(0.5)

    def watch_stopping() -> None:  # when Serve began stopping the old replica: its drain
        while not stop.is_set() and "draining" not in stream:
            try:
                if "STOPPING" in _gateway_replica_states(stack):
                    stream["draining"] = time.monotonic()
            except (subprocess.SubprocessError, ValueError) as exc:
                stream.setdefault("watch_errors", []).append(repr(exc))
            time.sleep(0.5)

    assert "RUNNING=1" in _gateway_replica_states(stack) and "STOPPING" not in _gateway_replica_states(stack)
    caller = threading.Thread(target=keep_calling)
    watcher = threading.Thread(target=watch_stopping)
    caller.start()
    watcher.start()
    try:
        up = stack.cli("up", "--config", str(changed), timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        reader.join(600)
        deadline = time.monotonic() + 180
        while _created(stack.url) == before:  # the old replica has exited: new connections reach the new one
            assert time.monotonic() < deadline, "the gateway replica was not replaced"
            time.sleep(1)
    finally:
        stop.set()
        caller.join(120)
        watcher.join(30)
        httpx.post(f"{stack.flaky_url}/_fake/reset", timeout=10)
    assert stream.get("status") == 200 and stream["tier"] == FLAKY_TIER, stream.get("tier")
    chunks = sse_chunks(stream["body"])
    assert not any("error" in c for c in chunks), [c for c in chunks if "error" in c]
    assert chunks[-1]["usage"]["completion_tokens"] == STREAM_TOKENS
    # it outlived the replica's deregistration window: the old replica, its listener closed, finished this stream
    # instead of cutting it
    assert "draining" in stream, f"the old replica was never seen STOPPING: {stream.get('watch_errors', [])[:3]}"
    assert stream["ended"] > stream["draining"] + MIN_DRAINING_S, \
        "the stream ended before the drain began: make it longer"
    assert statuses and set(statuses) == {200}, (statuses, stream.get("client_errors"))

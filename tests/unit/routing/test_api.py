"""Quality-gated routing through the gateway's HTTP API, with fake engines as local and cloud tiers.

Tiers: `small` and `big` are local model groups (FakeEngines), `cloud` a provider tier whose engine the
test's cloud factory supplies (a FakeEngine too; the real SDK adapters are tested against fake HTTP servers
in routing/test_faults.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.api.server import build_api
from serving.config import DEFAULT_CONFIG, GatewayConfig, PlatformConfig, parse_config
from serving.engines.base import EngineFailed, EngineRateLimited
from serving.routing.groups import GroupRouter
from tests.support.fakes import FakeEngine, tokenize

SCHEMA = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
GOOD = '{"answer": 4}'
BAD = "The answer is four."
MESSAGES = [{"role": "user", "content": "What is 2 + 2? Reply as JSON."}]
PRICE = {"small": (0.1, 0.2), "big": (1.0, 2.0), "cloud": (2.5, 10.0)}


def platform(routes: dict[str, Any], tenants: dict[str, Any] | None = None, **tier_overrides: Any) -> PlatformConfig:
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["engines"] = {"small": {"model": "builtin:tiny-llama", "device": "cpu"},
                       "big": {"model": "builtin:tiny-llama", "device": "cpu"}}
    data["model_groups"] = {"g-small": {"engines": ["small"]}, "g-big": {"engines": ["big"]}}
    data["providers"] = {"oa": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1"}}
    fast_retry = {"attempts": 3, "backoff_initial_s": 0.001, "backoff_max_s": 0.01, "jitter_s": 0.001}
    tiers = {
        "small": {"model_group": "g-small", "retry": fast_retry},
        "big": {"model_group": "g-big", "retry": fast_retry},
        "cloud": {"provider": "oa", "model": "gpt-x", "retry": fast_retry,
                  "breaker": {"failure_threshold": 2, "cooldown_s": 0.3}},
    }
    for name, (pin, pout) in PRICE.items():
        tiers[name]["price"] = {"input_per_1m": pin, "output_per_1m": pout}
    for name, extra in tier_overrides.items():
        tiers[name].update(extra)
    data["tiers"] = tiers
    data["routes"] = routes
    data["tenants"] = tenants or {}
    return parse_config(data)


class Env:
    """A gateway over fake engines with routes configured, and clients on it."""

    def __init__(self, routes: dict[str, Any], tenants: dict[str, Any] | None = None, **tier_overrides: Any):
        self.small, self.big, self.cloud = FakeEngine("small"), FakeEngine("big"), FakeEngine("cloud")
        cfg = platform(routes, tenants, **tier_overrides)
        router = GroupRouter({"small": self.small, "big": self.big}, cfg.model_groups)
        self.app = build_api(router, GatewayConfig(health_interval_s=0),
                             cloud_factory=lambda name, provider, tier: self.cloud)
        self.gw = self.app.state.gateway
        self.gw.update_routing(cfg.providers, cfg.tiers, cfg.routes, cfg.tenants)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")

    async def chat(self, model: str = "assistant", headers: dict[str, str] | None = None,
                   **body: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body},
                                    headers=headers)

    async def metrics(self) -> dict[str, list[Any]]:
        text = (await self.http.get("/metrics")).text
        out: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out.setdefault(s.name, []).append(s)
        return out


def metric(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


JSON_ROUTE = {"tiers": ["small", "big", "cloud"], "gates": {"json": {"required": True, "schema": SCHEMA}}}


@pytest.fixture
async def env():
    made: list[Env] = []

    def make(routes: dict[str, Any] | None = None, **kwargs: Any) -> Env:
        e = Env(routes or {"assistant": JSON_ROUTE}, **kwargs)
        made.append(e)
        return e

    yield make
    for e in made:
        await e.http.aclose()


def cost(tier: str, prompt: int, completion: int) -> float:
    pin, pout = PRICE[tier]
    return (prompt * pin + completion * pout) / 1e6


# ------------------------------------------------------------------------------------------------ gating


async def test_passing_answer_stays_on_the_first_tier(env):
    e = env()
    e.small.reply = GOOD
    resp = await e.chat()
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "small"
    assert resp.headers["x-serving-model"] == "small"
    assert resp.headers["x-serving-attempts"] == "1"
    expected = cost("small", 11, len(tokenize(GOOD)))
    assert float(resp.headers["x-serving-cost-usd"]) == pytest.approx(expected, rel=1e-6)
    body = resp.json()
    assert json.loads(body["choices"][0]["message"]["content"]) == {"answer": 4}
    ext = body["serving"]
    assert ext["route"] == "assistant" and ext["tier"] == "small" and ext["flagged"] is False
    assert [a["outcome"] for a in ext["attempts"]] == ["accepted"]
    assert ext["attempts"][0]["gates"] == [{"gate": "json", "result": "pass"}]
    assert e.big.started == 0 and e.cloud.started == 0


async def test_failed_gate_escalates_to_the_next_tier(env):
    e = env()
    e.small.reply, e.big.reply = BAD, GOOD
    resp = await e.chat()
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.headers["x-serving-attempts"] == "2"
    ext = resp.json()["serving"]
    first, second = ext["attempts"]
    assert first["tier"] == "small" and first["outcome"] == "gate_failed"
    assert "not valid JSON" in first["gates"][0]["reasons"][0]
    assert second["tier"] == "big" and second["outcome"] == "accepted"
    # Both answers were paid for.
    both = cost("small", 11, len(tokenize(BAD))) + cost("big", 11, len(tokenize(GOOD)))
    assert float(resp.headers["x-serving-cost-usd"]) == pytest.approx(both, rel=1e-6)
    samples = await e.metrics()
    assert metric(samples, "serving_escalations_total", route="assistant", from_tier="small", to_tier="big",
                  reason="json") == 1
    assert metric(samples, "serving_gate_results_total", tier="small", gate="json", result="fail") == 1
    assert metric(samples, "serving_gate_results_total", tier="big", gate="json", result="pass") == 1
    assert metric(samples, "serving_cost_usd_total", route="assistant", tier="big", tenant="default") > 0
    assert metric(samples, "serving_tier_tokens_total", tier="small", kind="completion") == len(tokenize(BAD))
    assert metric(samples, "serving_requests_total", model_group="assistant", engine="big", status_code="200") == 1


async def test_schema_violation_reasons_name_the_field(env):
    e = env()
    e.small.reply, e.big.reply = '{"answer": "four"}', GOOD
    resp = await e.chat()
    reasons = resp.json()["serving"]["attempts"][0]["gates"][0]["reasons"]
    assert reasons and "answer" in reasons[0] and "integer" in reasons[0]


async def test_self_correction_feeds_the_reasons_back_to_the_same_tier(env):
    e = env({"assistant": {**JSON_ROUTE, "self_correct": True}})
    e.small.replies = [BAD, GOOD]
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "small"
    assert resp.headers["x-serving-attempts"] == "2"
    kinds = [(a["kind"], a["outcome"]) for a in resp.json()["serving"]["attempts"]]
    assert kinds == [("answer", "gate_failed"), ("self_correction", "accepted")]
    retry = e.small.last_request
    assert retry.messages[-2] == {"role": "assistant", "content": BAD}
    assert retry.messages[-1]["role"] == "user" and "not valid JSON" in retry.messages[-1]["content"]
    assert e.big.started == 0


async def test_self_correction_that_fails_again_escalates(env):
    e = env({"assistant": {**JSON_ROUTE, "self_correct": True}})
    e.small.reply, e.big.reply = BAD, GOOD
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    assert e.small.started == 2
    assert resp.headers["x-serving-attempts"] == "3"


async def test_exhausted_best_effort_returns_the_answer_flagged(env):
    e = env()
    e.small.reply = e.big.reply = e.cloud.reply = BAD
    resp = await e.chat()
    assert resp.status_code == 200
    assert resp.headers["x-serving-flagged"] == "true"
    ext = resp.json()["serving"]
    assert ext["flagged"] is True
    assert [a["outcome"] for a in ext["attempts"]] == ["gate_failed"] * 3
    # Equally bad answers: the latest (strongest) tier's answer is returned.
    assert resp.headers["x-serving-tier"] == "cloud"
    assert resp.headers["x-serving-model"] == "gpt-x"


async def test_exhausted_error_policy_answers_422_in_the_envelope(env):
    e = env({"assistant": {**JSON_ROUTE, "on_exhausted": "error"}})
    e.small.reply = e.big.reply = e.cloud.reply = BAD
    resp = await e.chat()
    assert resp.status_code == 422
    body = resp.json()
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "quality_gate_failed"
    assert "small" in body["error"]["message"] and "not valid JSON" in body["error"]["message"]
    assert len(body["serving"]["attempts"]) == 3


async def test_per_tier_gate_selection(env):
    route = {"tiers": [{"tier": "small", "gates": ["json"]}, {"tier": "big", "gates": []}],
             "gates": {"json": {"required": True}}}
    e = env({"assistant": route})
    e.small.reply, e.big.reply = BAD, BAD
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"  # big has no gates: its answer is accepted
    assert "x-serving-flagged" not in resp.headers


# ---------------------------------------------------------------------------------------- other gates


async def test_confidence_gate_asks_for_logprobs_and_hides_them_from_the_client(env):
    e = env({"assistant": {"tiers": ["small", "big"], "gates": {"confidence": {"min_mean_logprob": -1.0}}}})
    e.small.token_logprob, e.big.token_logprob = -2.5, -0.1
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    assert e.small.last_request.logprobs is True
    assert resp.json()["choices"][0]["logprobs"] is None
    gate = resp.json()["serving"]["attempts"][0]["gates"][0]
    assert gate["result"] == "fail" and gate["score"] == pytest.approx(-2.5)
    # A client that asks for logprobs gets them.
    resp = await e.chat(logprobs=True)
    assert resp.json()["choices"][0]["logprobs"]["content"]


async def test_judge_gate_uses_another_tier_and_pays_for_it(env):
    route = {"tiers": ["small", "big"], "gates": {"judge": {"tier": "cloud", "threshold": 7}}}
    e = env({"assistant": route})
    e.cloud.replies = ["3", "9"]
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    attempts = resp.json()["serving"]["attempts"]
    assert [(a["tier"], a["kind"]) for a in attempts] == [
        ("small", "answer"), ("cloud", "judge"), ("big", "answer"), ("cloud", "judge")]
    assert resp.headers["x-serving-attempts"] == "2"  # judge calls are not generation attempts
    judge_prompt = e.cloud.requests[0].messages[0]["content"]
    assert "What is 2 + 2?" in judge_prompt and tokenize(e.small.reply)[0] in judge_prompt
    total = sum(a["cost_usd"] for a in attempts)
    assert float(resp.headers["x-serving-cost-usd"]) == pytest.approx(total, rel=1e-4)
    assert attempts[1]["cost_usd"] > 0


# ---------------------------------------------------------------------------------------- transport faults


async def test_unavailable_tier_is_survived_without_a_client_error(env):
    e = env()
    e.small.unavailable = True
    e.big.reply = GOOD
    resp = await e.chat()
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "big"
    first = resp.json()["serving"]["attempts"][0]
    # The failed call marked the engine down: the retry found no live engine and the tier was left at once.
    assert first["outcome"] == "unavailable" and first.get("tries", 1) == 1
    resp = await e.chat()
    assert resp.json()["serving"]["attempts"][0]["outcome"] == "unavailable"
    assert e.small.started == 1  # skipped without a call


async def test_transient_faults_are_retried_on_the_same_tier(env):
    e = env()
    e.small.reply = GOOD
    e.small.fail_first = 2
    e.small.fail_first_exc = lambda: EngineFailed("engine small failed: 500")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "small"
    assert resp.json()["serving"]["attempts"][0]["tries"] == 3
    samples = await e.metrics()
    assert metric(samples, "serving_tier_retries_total", tier="small") == 2


async def test_rate_limit_retry_after_is_honoured(env):
    e = env()
    e.small.reply = GOOD
    e.small.fail_first = 1
    e.small.fail_first_exc = lambda: EngineRateLimited("429", retry_after_s=0.2)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "small"
    assert loop.time() - t0 >= 0.2


async def test_long_retry_after_moves_on_at_once(env):
    e = env()
    e.small.fail_first = 1
    e.small.fail_first_exc = lambda: EngineRateLimited("429", retry_after_s=3600)
    e.big.reply = GOOD
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.json()["serving"]["attempts"][0].get("tries", 1) == 1


async def test_circuit_breaker_opens_skips_the_tier_and_recovers(env):
    e = env({"assistant": {"tiers": ["cloud", "big"]}})
    e.cloud.fail_first = 10**6
    e.cloud.fail_first_exc = lambda: EngineFailed("cloud 500")
    resp = await e.chat()
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "big"
    assert e.cloud.started == 2  # threshold 2: the second try opened the circuit, no third try
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.json()["serving"]["attempts"][0]["outcome"] == "circuit_open"
    assert resp.headers["x-serving-attempts"] == "1"
    assert e.cloud.started == 2
    samples = await e.metrics()
    assert metric(samples, "serving_breaker_state", tier="cloud") == 2
    await asyncio.sleep(0.35)  # cooldown: half-open, the next call is a trial
    samples = await e.metrics()
    assert metric(samples, "serving_breaker_state", tier="cloud") == 1
    e.cloud.fail_first = 0
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "cloud"
    samples = await e.metrics()
    assert metric(samples, "serving_breaker_state", tier="cloud") == 0


async def test_tier_timeout_escalates_and_request_deadline_answers_504(env):
    e = env({"assistant": {"tiers": ["small", "big"]}}, small={"timeout_s": 0.1})
    e.small.hang = True
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.json()["serving"]["attempts"][0]["outcome"] == "timeout"
    e2 = env({"assistant": {"tiers": ["small", "big"], "deadline_s": 0.2}})
    e2.small.hang = e2.big.hang = True
    resp = await e2.chat()
    assert resp.status_code == 504
    assert resp.json()["error"]["code"] == "timeout"


async def test_all_tiers_down_answers_503_with_retry_after(env):
    e = env({"assistant": {"tiers": ["small", "big"]}})
    e.small.unavailable = e.big.unavailable = True
    resp = await e.chat()
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "engine_unavailable"
    assert resp.headers["retry-after"]


async def test_engine_rejection_is_returned_as_the_client_error(env):
    from tests.support.fakes import context_length_error

    e = env({"assistant": {"tiers": ["small"]}})
    e.small.error = context_length_error()
    resp = await e.chat()
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"


# ---------------------------------------------------------------------------------------------- streaming


def events(text: str) -> list[Any]:
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


async def test_gated_stream_is_buffered_and_streams_the_accepted_answer(env):
    e = env()
    e.small.reply, e.big.reply = BAD, GOOD
    resp = await e.chat(stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-serving-tier"] == "big"
    assert float(resp.headers["x-serving-cost-usd"]) > 0
    ev = events(resp.text)
    assert ev[-1] == "[DONE]"
    assert ev[0]["choices"][0]["delta"]["role"] == "assistant"
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in ev[:-1] if c["choices"])
    assert content == GOOD
    assert ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == len(tokenize(GOOD))
    assert ev[-2]["serving"]["tier"] == "big"
    # The engines were asked for complete (non-streamed) answers.
    # The gateway streams from both engines (progress timeouts) and buffers the answer for the gates.
    for eng in (e.small, e.big):
        assert eng.last_request.stream and eng.last_request.stream_options.include_usage


async def test_ungated_stream_falls_back_before_the_first_byte(env):
    e = env({"assistant": {"tiers": ["small", "big"]}})
    e.small.unavailable = True
    resp = await e.chat(stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "big"
    assert "x-serving-cost-usd" not in resp.headers  # not known before the stream ends
    ev = events(resp.text)
    assert e.big.last_request.stream is True
    usage = ev[-2]
    assert usage["serving"]["tier"] == "big" and usage["serving"]["cost_usd"] > 0


async def test_ungated_stream_fault_after_the_first_byte_ends_with_an_error_event(env):
    e = env({"assistant": {"tiers": ["small", "big"]}})
    e.small.fail_after = 3
    resp = await e.chat(stream=True)
    ev = events(resp.text)
    assert resp.headers["x-serving-tier"] == "small"
    assert ev[-1] == "[DONE]"
    assert ev[-2]["error"]["code"] == "engine_error"
    assert e.big.started == 0


# ---------------------------------------------------------------------------- route choice and overrides


async def test_per_request_route_and_gate_overrides(env):
    e = env({"assistant": JSON_ROUTE, "plain": {"tiers": ["big"]}})
    e.small.reply, e.big.reply = BAD, "big says hi"
    resp = await e.chat(model="anything", serving={"route": "plain"})
    assert resp.headers["x-serving-route"] == "plain" and resp.headers["x-serving-tier"] == "big"
    resp = await e.chat(serving={"gates": {"json": None}})
    assert resp.headers["x-serving-tier"] == "small"  # the json gate is off for this request
    resp = await e.chat(serving={"gates": {"rules": {"must_match": ["hi$"]}, "json": None}})
    assert resp.headers["x-serving-tier"] == "big"
    assert "serving" not in e.big.last_request.model_dump(exclude_unset=True)  # engines never see it


async def test_bad_overrides_are_400_with_the_field_path(env):
    e = env()
    resp = await e.chat(serving={"gates": {"confidence": {"min_mean_logprob": 3}}})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"].startswith("serving.gates")
    resp = await e.chat(serving={"route": "nope"})
    assert resp.status_code == 404 and resp.json()["error"]["param"] == "serving.route"
    resp = await e.chat(serving={"gates": {"judge": {"tier": "nope"}}})
    assert resp.status_code == 400 and "nope" in resp.json()["error"]["message"]
    resp = await e.chat(serving="fast")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "serving"


async def test_route_without_overrides_refuses_them(env):
    e = env({"assistant": {**JSON_ROUTE, "allow_overrides": False}})
    resp = await e.chat(serving={"gates": {"json": None}})
    assert resp.status_code == 400


async def test_tenant_header_selects_the_tenants_route(env):
    routes = {"assistant": JSON_ROUTE, "premium": {"tiers": ["cloud"]}}
    e = env(routes, tenants={"acme": {"routes": {"assistant": "premium"}}})
    e.small.reply = GOOD
    resp = await e.chat(headers={"x-serving-tenant": "acme"})
    assert resp.headers["x-serving-route"] == "premium" and resp.headers["x-serving-tier"] == "cloud"
    resp = await e.chat(headers={"x-serving-tenant": "other"})
    assert resp.headers["x-serving-route"] == "assistant"
    samples = await e.metrics()
    assert metric(samples, "serving_cost_usd_total", tenant="acme", tier="cloud") > 0


async def test_models_lists_routes_and_groups(env):
    e = env()
    data = (await e.http.get("/v1/models")).json()["data"]
    ids = {m["id"]: m for m in data}
    assert ids["assistant"]["tiers"] == ["small", "big", "cloud"]
    assert "g-small" in ids
    card = (await e.http.get("/v1/models/assistant")).json()
    assert card["id"] == "assistant"


async def test_openai_sdk_sees_headers_and_extension(env):
    e = env()
    e.small.reply, e.big.reply = BAD, GOOD
    sdk = openai.AsyncOpenAI(base_url="http://test/v1", api_key="x", max_retries=0,
                             http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=e.app)))
    raw = await sdk.chat.completions.with_raw_response.create(model="assistant", messages=MESSAGES)
    assert raw.headers["x-serving-tier"] == "big"
    completion = raw.parse()
    assert completion.choices[0].message.content == GOOD
    assert completion.model_extra["serving"]["tier"] == "big"
    stream = await sdk.chat.completions.create(model="assistant", messages=MESSAGES, stream=True,
                                               stream_options={"include_usage": True})
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == GOOD
    await sdk.close()


async def test_completions_endpoint_is_routed_too(env):
    e = env({"assistant": {"tiers": ["small", "big"], "gates": {"rules": {"must_match": ["Paris"]}}}})
    e.small.reply, e.big.reply = "London", "Paris"
    resp = await e.http.post("/v1/completions", json={"model": "assistant", "prompt": "The capital of France is"})
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.json()["choices"][0]["text"] == "Paris"


async def test_gate_outcomes_are_counted_per_engine_for_rollout_analysis(env):
    e = env()
    e.small.replies = [GOOD, BAD, GOOD]  # pass; fail -> escalated to big (passes); pass
    e.big.reply = GOOD
    for _ in range(3):
        assert (await e.chat()).status_code == 200
    m = await e.metrics()
    assert metric(m, "serving_engine_answers_total", model_group="g-small", engine="small", outcome="gate_pass") == 2
    assert metric(m, "serving_engine_answers_total", model_group="g-small", engine="small", outcome="gate_fail") == 1
    assert metric(m, "serving_engine_answers_total", model_group="g-small", engine="small", outcome="escalated") == 1
    assert metric(m, "serving_engine_answers_total", model_group="g-big", engine="big", outcome="gate_pass") == 1
    assert metric(m, "serving_engine_answers_total", engine="big", outcome="escalated") == 0

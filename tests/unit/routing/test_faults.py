"""Fault injection: routes over the real cloud adapters (official openai / anthropic SDKs) talking to fake
OpenAI- and Anthropic-compatible HTTP servers (tests/support/fake_clouds.py), through the gateway's HTTP API.

The tiers are built by the gateway's own factory from provider config and API keys in the environment, as in
production; only the far end is fake.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from serving.api.server import build_api
from serving.config import DEFAULT_CONFIG, GatewayConfig, parse_config
from serving.routing.groups import GroupRouter
from tests.support.fake_clouds import FakeAnthropic, FakeOpenAI
from tests.support.fakes import FakeEngine

OPENAI_KEY, ANTHROPIC_KEY = "sk-fault-openai-1234", "sk-ant-fault-5678"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
FAST_RETRY = {"attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "jitter_s": 0.01}


@pytest.fixture(scope="module")
def clouds() -> Iterator[tuple[FakeOpenAI, FakeAnthropic]]:
    with FakeOpenAI(api_key=OPENAI_KEY, reply="Paris, from OpenAI.") as oa, \
            FakeAnthropic(api_key=ANTHROPIC_KEY, reply="Paris, from Claude.") as an:
        yield oa, an


class Env:
    def __init__(self, oa: FakeOpenAI, an: FakeAnthropic, routes: dict[str, Any], **tiers: Any):
        data = yaml.safe_load(DEFAULT_CONFIG.read_text())
        data["providers"] = {
            "oa": {"kind": "openai", "base_url": oa.url, "api_key_env": "FAULT_OPENAI_KEY"},
            "an": {"kind": "anthropic", "base_url": an.url, "api_key_env": "FAULT_ANTHROPIC_KEY"},
        }
        data["tiers"] = {
            "openai": {"provider": "oa", "model": "gpt-fake", "timeout_s": 2, "retry": FAST_RETRY,
                       "price": {"input_per_1m": 1, "output_per_1m": 2},
                       "breaker": {"failure_threshold": 3, "cooldown_s": 60}},
            "claude": {"provider": "an", "model": "claude-fake", "timeout_s": 2, "retry": FAST_RETRY,
                       "price": {"input_per_1m": 3, "output_per_1m": 15}},
            "local": {"model_group": "smollm2-135m-instruct"},
        }
        for name, extra in tiers.items():
            data["tiers"][name].update(extra)
        data["routes"] = routes
        cfg = parse_config(data)
        self.local = FakeEngine("smollm2-135m")
        groups = {"smollm2-135m-instruct": cfg.model_groups["smollm2-135m-instruct"]}  # the one engine faked here
        router = GroupRouter({"smollm2-135m": self.local}, groups)
        self.app = build_api(router, GatewayConfig(health_interval_s=0))
        self.app.state.gateway.update_routing(cfg.providers, cfg.tiers, cfg.routes, cfg.tenants)
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test",
                                      timeout=30)

    async def chat(self, model: str = "r", **body: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body})


@pytest.fixture
async def env(clouds, monkeypatch):
    oa, an = clouds
    monkeypatch.setenv("FAULT_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("FAULT_ANTHROPIC_KEY", ANTHROPIC_KEY)
    made: list[Env] = []

    def make(routes: dict[str, Any] | None = None, **tiers: Any) -> Env:
        oa.reset()
        an.reset()
        oa.api_key, an.api_key = OPENAI_KEY, ANTHROPIC_KEY
        oa.reply, an.reply = "Paris, from OpenAI.", "Paris, from Claude."
        e = Env(oa, an, routes or {"r": {"tiers": ["openai", "claude"]}}, **tiers)
        made.append(e)
        return e

    yield make
    for e in made:
        await e.http.aclose()


def api_calls(srv: Any) -> int:
    return len([r for r in srv.requests if r.path.endswith(("/chat/completions", "/messages"))])


def assert_no_key(resp: httpx.Response) -> None:
    assert OPENAI_KEY not in resp.text and ANTHROPIC_KEY not in resp.text


async def test_both_clouds_answer_with_their_own_wire_format(env, clouds):
    oa, an = clouds
    e = env({"o": {"tiers": ["openai"]}, "a": {"tiers": ["claude"]}})
    resp = await e.chat("o")
    assert resp.status_code == 200 and resp.headers["x-serving-model"] == "gpt-fake"
    assert resp.json()["choices"][0]["message"]["content"] == "Paris, from OpenAI."
    assert oa.last.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    resp = await e.chat("a", messages=[{"role": "system", "content": "Be brief."}, *MESSAGES], max_tokens=50)
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "claude"
    assert resp.json()["choices"][0]["message"]["content"] == "Paris, from Claude."
    sent = an.last.json
    assert sent["system"] == "Be brief." and [m["role"] for m in sent["messages"]] == ["user"]
    assert "capital of France" in json.dumps(sent["messages"][0]["content"])
    assert float(resp.headers["x-serving-cost-usd"]) > 0


async def test_500s_are_retried_then_the_next_tier_answers(env, clouds):
    oa, _ = clouds
    e = env()
    oa.script("status:500", "status:500", "status:500")
    resp = await e.chat()
    assert resp.status_code == 200
    assert resp.headers["x-serving-tier"] == "claude"
    first = resp.json()["serving"]["attempts"][0]
    assert first["outcome"] == "transport_error" and first["tries"] == 3
    assert api_calls(oa) == 3
    assert_no_key(resp)


async def test_a_transient_500_is_absorbed_by_a_retry(env, clouds):
    oa, an = clouds
    e = env()
    oa.script("status:500")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "openai"
    assert resp.json()["serving"]["attempts"][0]["tries"] == 2
    assert api_calls(an) == 0


async def test_429_retry_after_is_honoured(env, clouds):
    oa, _ = clouds
    e = env()
    oa.script("status:429 retry-after:1")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "openai"
    attempt = resp.json()["serving"]["attempts"][0]
    assert attempt["tries"] == 2 and attempt["latency_ms"] >= 1000


async def test_429_with_a_long_retry_after_moves_on_at_once(env, clouds):
    oa, _ = clouds
    e = env()
    oa.script("status:429 retry-after:120")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "claude"
    assert api_calls(oa) == 1


async def test_timeouts_move_on_to_the_next_tier(env, clouds):
    oa, _ = clouds
    e = env(openai={"timeout_s": 0.3, "retry": {**FAST_RETRY, "attempts": 1}})
    oa.script("delay:3")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "claude"
    assert resp.json()["serving"]["attempts"][0]["outcome"] == "timeout"


async def test_malformed_json_is_a_transport_fault(env, clouds):
    oa, _ = clouds
    e = env()
    oa.script("malformed", "malformed", "malformed")
    resp = await e.chat()
    assert resp.headers["x-serving-tier"] == "claude"
    assert "malformed" in resp.json()["serving"]["attempts"][0]["error"]


async def test_a_client_error_is_not_retried(env, clouds):
    oa, _ = clouds
    e = env({"r": {"tiers": ["openai"]}})
    oa.script("status:400 message:This model's maximum context length is 10 tokens.")
    resp = await e.chat()
    assert resp.status_code == 400
    assert "maximum context length" in resp.json()["error"]["message"]
    assert api_calls(oa) == 1


async def test_the_breaker_opens_and_the_dead_tier_is_skipped_without_calls(env, clouds):
    oa, _ = clouds
    e = env()
    oa.default = "status:503"
    resp = await e.chat()  # 3 tries: the breaker (threshold 3) opens
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "claude"
    calls = api_calls(oa)
    assert calls == 3
    for _ in range(3):
        resp = await e.chat()
        assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "claude"
        assert resp.json()["serving"]["attempts"][0]["outcome"] == "circuit_open"
    assert api_calls(oa) == calls
    metrics = (await e.http.get("/metrics")).text
    assert 'serving_breaker_state{tier="openai"} 2.0' in metrics


async def test_all_clouds_failing_is_a_502_in_the_envelope(env, clouds):
    """Every tier failed with a server error (as a model group's engine failing): 502 engine_error, like a group."""
    oa, an = clouds
    e = env()
    oa.default = an.default = "status:500"
    resp = await e.chat()
    assert resp.status_code == 502
    body = resp.json()
    assert body["error"]["code"] == "engine_error"
    assert "upstream" not in body["error"]["message"]
    assert [a["tier"] for a in body["serving"]["attempts"]] == ["openai", "claude"]
    assert_no_key(resp)


async def test_a_broken_stream_before_the_first_chunk_falls_back(env, clouds):
    oa, _ = clouds
    e = env()
    oa.script("status:502", "status:502", "status:502")
    resp = await e.chat(stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "claude"
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(x) for x in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Paris, from Claude."
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["serving"]["tier"] == "claude"


async def test_a_broken_stream_after_the_first_chunk_ends_with_an_error_event(env, clouds):
    oa, an = clouds
    e = env()
    oa.script("broken_stream after:2")
    resp = await e.chat(stream=True)
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "openai"
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_error"
    assert api_calls(an) == 0  # no fallback once bytes went out
    assert_no_key(resp)


async def test_an_anthropic_stream_error_event_mid_stream(env, clouds):
    _, an = clouds
    e = env({"r": {"tiers": ["claude"]}})
    an.script("stream_error_event after:2")
    resp = await e.chat(stream=True)
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["type"] == "api_error"


async def test_gated_route_over_clouds_with_confidence_from_openai_logprobs(env, clouds):
    oa, an = clouds
    e = env({"r": {"tiers": ["openai", "claude"], "gates": {"confidence": {"min_mean_logprob": -0.5},
                                                            "rules": {"must_match": ["Paris"]}}}})
    resp = await e.chat()
    assert resp.status_code == 200
    attempts = resp.json()["serving"]["attempts"]
    assert oa.last.json.get("logprobs") is True  # asked for, for the gate
    assert resp.json()["choices"][0]["logprobs"] is None  # and not passed on
    assert attempts[0]["tier"] == "openai"
    gates = {g["gate"]: g["result"] for g in attempts[-1]["gates"]}
    if attempts[-1]["tier"] == "claude":  # Anthropic has no logprobs: the confidence gate is skipped there
        assert gates["confidence"] == "skip"
    # An Anthropic-only gated route: confidence skipped, rules checked.
    oa.default = "status:500"
    resp = await e.chat()
    last = resp.json()["serving"]["attempts"][-1]
    assert last["tier"] == "claude"
    assert {g["gate"]: g["result"] for g in last["gates"]} == {"rules": "pass", "confidence": "skip"}
    assert "logprobs" not in an.last.json


async def test_a_missing_api_key_disables_only_that_tier(env, clouds, monkeypatch):
    monkeypatch.delenv("FAULT_OPENAI_KEY")
    e = env({"r": {"tiers": ["openai", "local"]}})
    resp = await e.chat()
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "local"
    first = resp.json()["serving"]["attempts"][0]
    assert first["outcome"] == "unavailable" and "FAULT_OPENAI_KEY" in first["error"]


PII_PROMPT = ("Reach me at jane.doe@example.com or +44 20 7946 0958; card 5500-0000-0000-0004, "
              "NI number AB 12 34 56 C.")
PII_VALUES = ("jane.doe@example.com", "7946 0958", "5500-0000-0000-0004", "AB 12 34 56 C")


@pytest.mark.parametrize("stream", [False, True])
async def test_pii_never_reaches_the_cloud_apis_when_the_route_redacts(env, clouds, stream):
    oa, an = clouds
    e = env({"r": {"tiers": ["openai", "claude"], "pii": {"action": "redact", "phone_region": "GB"}},
             "s": {"tiers": ["claude"], "pii": {"action": "redact", "phone_region": "GB"}}})
    oa.script("status:500", "status:500", "status:500")  # OpenAI fails: the request moves on to Claude, redacted too
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PII_PROMPT}]
    resp = await e.http.post("/v1/chat/completions", json={"model": "r", "messages": messages, "stream": stream})
    assert resp.status_code == 200
    completions = await e.http.post("/v1/completions", json={"model": "s", "prompt": PII_PROMPT})
    assert completions.status_code == 200  # the Anthropic adapter sends a completion prompt as a user message
    sent = [r.json for r in oa.api_requests()] + [r.json for r in an.api_requests()]
    assert len(oa.api_requests()) == 3 and len(an.api_requests()) >= 1
    wire = json.dumps(sent)
    for value in PII_VALUES:
        assert value not in wire
    assert "[EMAIL]" in wire and "[CARD]" in wire and "[PHONE]" in wire and "[NATIONAL_ID]" in wire

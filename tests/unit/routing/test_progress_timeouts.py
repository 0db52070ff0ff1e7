"""Timeouts follow progress on the request path (issue: five long requests timed out and opened the breaker for
everyone): a long, steady generation is answered whatever its length, streamed or not; a stalled engine is given
up with a 504, its generation closed, and only that stall counts on the tier's breaker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving.api.server import build_api
from serving.api.streaming import StreamRelay
from serving.config import GatewayConfig, ModelGroupConfig, RouteConfig, TierConfig
from serving.routing.groups import GroupRouter
from tests.support.fakes import FakeEngine

GROUP, ROUTE = "smollm2", "auto"
LONG = " ".join(f"w{i}" for i in range(40))  # 40 tokens


def gateway(engine: FakeEngine, **tier: Any) -> tuple[httpx.AsyncClient, Any]:
    router = GroupRouter({engine.name: engine}, {GROUP: ModelGroupConfig.model_validate({"engines": [engine.name]})})
    app = build_api(router, GatewayConfig(health_interval_s=0, ttft_timeout_s=0.5, stall_timeout_s=0.3))
    tiers = {"local": TierConfig.model_validate({"model_group": GROUP, "breaker": {"failure_threshold": 2}, **tier})}
    routes = {ROUTE: RouteConfig.model_validate({"tiers": ["local"]})}
    app.state.gateway.update_routing({}, tiers, routes, {})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), app.state.gateway


async def chat(http: httpx.AsyncClient, model: str, stream: bool = False) -> httpx.Response:
    return await asyncio.wait_for(http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Tell me a long story."}], "stream": stream}), 20)


async def test_a_long_steady_generation_is_answered_on_a_route_and_a_group() -> None:
    # 40 tokens 0.05 s apart: 2 s in all, four times the time-to-first-token timeout, never a 0.3 s gap
    engine = FakeEngine("smollm2-v1", reply=LONG, token_delay_s=0.05)
    http, gw = gateway(engine, ttft_timeout_s=0.5, stall_timeout_s=0.3)
    async with http:
        for model in (ROUTE, GROUP):
            resp = await chat(http, model)
            assert resp.status_code == 200, resp.text
            assert resp.json()["choices"][0]["message"]["content"].split() == LONG.split()
            assert resp.json()["usage"]["completion_tokens"] == 40
    assert gw.tiers.tiers["local"].breaker.state == "closed"


async def test_six_long_requests_do_not_open_the_breaker_for_a_short_one() -> None:
    engine = FakeEngine("smollm2-v1", reply=LONG, token_delay_s=0.05)
    http, gw = gateway(engine, ttft_timeout_s=0.5, stall_timeout_s=0.3)
    async with http:
        answers = await asyncio.gather(*(chat(http, ROUTE) for _ in range(6)))
        assert [r.status_code for r in answers] == [200] * 6
        engine.reply, engine.token_delay_s = "short", 0.0
        assert (await chat(http, ROUTE)).status_code == 200
    assert gw.tiers.tiers["local"].breaker.state == "closed"


async def test_a_stalled_generation_is_a_504_and_counts_on_the_breaker() -> None:
    engine = FakeEngine("smollm2-v1", reply=LONG, stall_after=5)
    http, gw = gateway(engine, ttft_timeout_s=0.5, stall_timeout_s=0.3, retry={"attempts": 1})
    async with http:
        resp = await chat(http, ROUTE)
        assert resp.status_code == 504, resp.text
        assert resp.json()["error"]["code"] == "timeout"
        assert engine.closed == engine.started  # the generation was closed (vLLM aborts it)
        await chat(http, ROUTE)
    assert gw.tiers.tiers["local"].breaker.state == "open"  # two stalls in a row: threshold 2


async def test_time_to_first_token_is_bounded_on_its_own() -> None:
    engine = FakeEngine("smollm2-v1", first_token_delay_s=5.0)
    http, _ = gateway(engine, ttft_timeout_s=0.3, retry={"attempts": 1})
    async with http:
        resp = await chat(http, ROUTE)
    assert resp.status_code == 504 and resp.json()["error"]["code"] == "timeout"


async def stream_events(http: httpx.AsyncClient, model: str) -> list[dict[str, Any]]:
    async with http.stream("POST", "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "stream": True}) as resp:
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


async def test_a_stream_that_stalls_midway_ends_with_a_timeout_event_and_counts_on_the_breaker() -> None:
    engine = FakeEngine("smollm2-v1", reply=LONG, stall_after=5)
    http, gw = gateway(engine, ttft_timeout_s=0.5, stall_timeout_s=0.3, retry={"attempts": 1})
    async with http:
        for model in (GROUP, ROUTE):
            events = await asyncio.wait_for(stream_events(http, model), 10)
            assert "error" not in events[0] and "error" in events[-1]
            assert events[-1]["error"]["code"] == "timeout"
        assert engine.closed == engine.started  # both generations were closed (vLLM aborts them)
        assert gw.tiers.tiers["local"].breaker.state == "closed"  # one stall so far on the route's tier
        await asyncio.wait_for(stream_events(http, ROUTE), 10)
    assert gw.tiers.tiers["local"].breaker.state == "open"  # threshold 2


async def test_a_long_steady_stream_is_never_a_timeout() -> None:
    engine = FakeEngine("smollm2-v1", reply=LONG, token_delay_s=0.05)
    http, gw = gateway(engine, ttft_timeout_s=0.5, stall_timeout_s=0.3)
    async with http:
        for model in (GROUP, ROUTE):
            events = await asyncio.wait_for(stream_events(http, model), 10)
            assert all("error" not in e for e in events)
            text = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
            assert text.split() == LONG.split()
    assert gw.tiers.tiers["local"].breaker.state == "closed"


async def test_time_spent_sending_to_a_slow_client_is_not_a_stall() -> None:
    # the relay directly: the consumer takes 0.4 s per chunk, longer than the 0.2 s stall timeout
    engine = FakeEngine("smollm2-v1", reply="a b c d")
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                "stream": True})
    gen = engine.generate("chat", req)
    first = await gen.__anext__()
    finished: list[int] = []
    relay = StreamRelay(gen, engine.name, lambda status, usage, t: finished.append(status), stall_s=0.2)
    chunks = []
    async for chunk in relay.relay(first, client_usage=False):
        chunks.append(chunk)
        await asyncio.sleep(0.4)
    assert finished == [200]
    assert chunks[-1] == "data: [DONE]\n\n" and not any('"error"' in c for c in chunks)

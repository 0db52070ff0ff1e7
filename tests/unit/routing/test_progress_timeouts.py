"""Timeouts follow progress on the request path (issue: five long requests timed out and opened the breaker for
everyone): a long, steady generation is answered whatever its length, streamed or not; a stalled engine is given
up with a 504, its generation closed, and only that stall counts on the tier's breaker."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from serving.api.server import build_api
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

"""Breakers shared across gateway replicas through Redis: a cloud tier one replica found dead is skipped by the
others within a sync period, closing again is shared too, and Redis being down leaves each replica's own
breakers working."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig, PoliciesConfig, ProviderConfig, RouteConfig, TierConfig
from serving.engines.base import EngineUnavailable
from serving.routing.groups import GroupRouter
from tests.support.fakes import FakeEngine
from tests.support.redis_server import RedisServer

ROUTE = "cloud-first"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


class Replica:
    def __init__(self, redis_url: str, cloud: FakeEngine, local: FakeEngine):
        router = GroupRouter({"small": local}, {"small": ModelGroupConfig.model_validate({"engines": ["small"]})})
        self.app = build_api(router, GatewayConfig(health_interval_s=0),
                             cloud_factory=lambda name, provider, tier: cloud)
        self.gw = self.app.state.gateway
        self.gw.breakers.interval_s = 0.1
        providers = {"oa": ProviderConfig.model_validate({"kind": "openai", "base_url": "http://127.0.0.1:9/v1"})}
        tiers = {
            "cloud": TierConfig.model_validate({"provider": "oa", "model": "gpt-x", "retry": {"attempts": 1},
                                                "breaker": {"failure_threshold": 2, "cooldown_s": 1.5}}),
            "local": TierConfig.model_validate({"model_group": "small", "retry": {"attempts": 1}}),
        }
        routes = {ROUTE: RouteConfig.model_validate({"tiers": ["cloud", "local"]})}
        self.gw.update_routing(providers, tiers, routes, {})
        self.gw.update_policies(PoliciesConfig.model_validate({
            "redis": {"url": redis_url, "timeout_s": 0.2, "retry_s": 0.2},
            "anomaly": {"enabled": False}, "auth": {"enabled": False}}))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://gw")

    @property
    def breaker(self) -> Any:
        return self.gw.tiers.tiers["cloud"].breaker

    async def ask(self) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={
            "model": ROUTE, "messages": [{"role": "user", "content": "hi"}]})


async def until(check: Any, timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out"
        await asyncio.sleep(0.05)


async def test_a_tier_one_replica_found_dead_is_skipped_by_the_others(redis_server: RedisServer) -> None:
    redis_server.flush()
    dead_cloud = FakeEngine("cloud", unavailable=True)
    a = Replica(redis_server.url, dead_cloud, FakeEngine("small"))
    b = Replica(redis_server.url, dead_cloud, FakeEngine("small"))
    b.gw.breakers.ensure_running()
    for _ in range(2):
        resp = await a.ask()
        assert resp.status_code == 200  # the local tier answered after the cloud failed
    assert a.breaker.state == "open"
    calls = len(dead_cloud.calls)
    await until(lambda: b.breaker.state == "open")  # opened by a's verdict, without b calling the cloud
    assert len(dead_cloud.calls) == calls
    resp = await b.ask()
    assert resp.status_code == 200
    attempts = resp.json()["serving"]["attempts"]
    assert attempts[0]["tier"] == "cloud" and attempts[0]["outcome"] == "circuit_open"
    assert len(dead_cloud.calls) == calls  # b skipped the cloud tier
    # after the cooldown the cloud is back: a's half-open probe closes it and the key is deleted
    dead_cloud.unavailable = False
    await asyncio.sleep(1.6)
    assert (await a.ask()).status_code == 200 and a.breaker.state == "closed"
    assert not b.breaker.open_remaining_s
    await asyncio.sleep(0.3)  # a's next sync (every 0.1 s here) publishes the closing: the key is deleted
    assert await a.gw.policy.store.breakers_open(["cloud"]) == {}


async def test_without_redis_each_replica_keeps_its_own_breakers(redis_server: RedisServer) -> None:
    redis_server.flush()
    cloud = FakeEngine("cloud", fail_first=10, fail_first_exc=lambda: EngineUnavailable("503"))
    a = Replica("redis://127.0.0.1:9/0", cloud, FakeEngine("small"))  # nothing listens there
    for _ in range(2):
        assert (await a.ask()).status_code == 200
    assert a.breaker.state == "open"
    await asyncio.sleep(0.3)  # the sync loop failing does no harm
    assert (await a.ask()).status_code == 200

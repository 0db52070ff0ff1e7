"""A dead engine gets a 503 at once (health probes), and a client that leaves releases its engine call."""
# ruff: noqa: F811  (the make_gateway fixture is imported from test_gateway_api)

from __future__ import annotations

import asyncio

from tests.support.fakes import FakeEngine
from tests.unit.api.test_gateway_api import GROUP, group, make_gateway  # noqa: F401  (fixture)


async def _wait_until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_engine_failing_health_probes_gets_503_at_once(make_gateway):
    engine = FakeEngine("solo", healthy=False)
    gw = make_gateway(engine, health_interval_s=0.02, health_timeout_s=0.05)
    assert (await gw.chat()).status_code == 200  # not known to be down yet; this starts the monitor
    await _wait_until(lambda: "solo" in gw.app.state.gateway.health.down)
    engine.hang = True  # a call would now hang: the gateway must not make one
    resp = await asyncio.wait_for(gw.chat(), 2)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "engine_unavailable"
    assert "retry-after" in resp.headers


async def test_group_falls_back_to_a_live_engine_and_recovers(make_gateway):
    sick, well = FakeEngine("sick", healthy=False), FakeEngine("well")
    weighted = group({"engine": "sick", "weight": 99}, {"engine": "well", "weight": 1})
    gw = make_gateway(sick, well, groups={GROUP: weighted}, health_interval_s=0.02, health_timeout_s=0.05)
    await gw.chat()
    await _wait_until(lambda: "sick" in gw.app.state.gateway.health.down)
    served = [(await gw.chat()).headers["x-serving-model"] for _ in range(10)]
    assert served == ["well"] * 10
    sick.healthy = True
    await _wait_until(lambda: "sick" not in gw.app.state.gateway.health.down)
    served = {(await gw.chat()).headers["x-serving-model"] for _ in range(30)}
    assert "sick" in served


async def test_ready_reports_the_failing_engine(make_gateway):
    gw = make_gateway(FakeEngine("a"), FakeEngine("b", healthy=False),
                      groups={GROUP: group("a"), "other": group("b")}, health_interval_s=0)
    resp = await gw.http.get("/ready")
    assert resp.status_code == 503
    assert resp.json()["engines"]["a"] == "ready"
    assert resp.json()["engines"]["b"].startswith("not ready")


async def test_client_leaving_a_non_streamed_request_aborts_the_engine_call(make_gateway):
    engine = FakeEngine("slow", first_token_delay_s=30)
    gw = make_gateway(engine, health_interval_s=0)
    task = asyncio.create_task(gw.chat())
    await _wait_until(lambda: engine.started == 1)
    task.cancel()  # the client hangs up: the ASGI transport delivers http.disconnect
    await asyncio.gather(task, return_exceptions=True)
    await _wait_until(lambda: engine.closed == 1)
    samples = await gw.metrics()
    in_flight = [s.value for s in samples["serving_requests_in_flight"]]
    assert in_flight == [0.0]

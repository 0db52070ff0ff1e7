"""The gateway's traffic split for rollouts: weights, sticky callers, engine pins, shadow mirroring."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from serving.config import ModelGroupConfig, parse_config
from serving.routing.groups import GroupRouter, sticky_point
from tests.support.fakes import FakeEngine
from tests.unit.api.test_gateway_api import GROUP, make_gateway  # noqa: F401 - fixture


def split(v1: float, v2: float, **extra: Any) -> ModelGroupConfig:
    """Challenger first (its slice grows from 0), champion second."""
    return ModelGroupConfig.model_validate(
        {"engines": [{"engine": "v2", "weight": v2}, {"engine": "v1", "weight": v1}], **extra})


def test_sticky_pick_is_stable_and_monotonic() -> None:
    engines = {"v1": FakeEngine("v1"), "v2": FakeEngine("v2")}
    users = [f"user-{i}" for i in range(2000)]
    router = GroupRouter(engines, {"g": split(95, 5, sticky=True)})
    at5 = {u: router.route("g", key=u)[1].name for u in users}
    assert all(router.route("g", key=u)[1].name == at5[u] for u in users[:200])  # same answer every time
    share = Counter(at5.values())["v2"] / len(users)
    assert 0.03 < share < 0.07
    router.update({"g": split(75, 25, sticky=True)})
    at25 = {u: router.route("g", key=u)[1].name for u in users}
    assert all(at25[u] == "v2" for u in users if at5[u] == "v2")  # nobody on the canary flips back
    assert 0.22 < Counter(at25.values())["v2"] / len(users) < 0.28
    router.update({"g": split(100, 0, sticky=True)})  # rollback: everyone on the champion
    assert {router.route("g", key=u)[1].name for u in users} == {"v1"}


def test_non_sticky_or_anonymous_is_weighted_random() -> None:
    router = GroupRouter({"v1": FakeEngine("v1"), "v2": FakeEngine("v2")}, {"g": split(50, 50)})
    assert {router.route("g", key="same-user")[1].name for _ in range(200)} == {"v1", "v2"}
    assert 0 <= sticky_point("g", "x") < 1 and sticky_point("g", "x") != sticky_point("h", "x")


async def test_sticky_by_user_field_header_or_api_key(make_gateway) -> None:  # noqa: F811
    v1, v2 = FakeEngine("v1"), FakeEngine("v2")
    gw = make_gateway(v1, v2, groups={GROUP: split(50, 50, sticky=True)})
    for how in ({"json": {"user": "alice"}}, {"headers": {"x-serving-user": "bob"}},
                {"headers": {"authorization": "Bearer sk-team-a"}}):
        seen = set()
        for _ in range(12):
            body = {"model": GROUP, "messages": [{"role": "user", "content": "hi"}], **how.get("json", {})}
            resp = await gw.http.post("/v1/chat/completions", json=body, headers=how.get("headers", {}))
            assert resp.status_code == 200
            seen.add(resp.headers["x-serving-model"])
        assert len(seen) == 1, how


async def test_pin_sends_to_one_engine_and_rejects_unknown(make_gateway) -> None:  # noqa: F811
    v1, v2 = FakeEngine("v1"), FakeEngine("v2")
    gw = make_gateway(v1, v2, groups={GROUP: split(100, 0, shadow={"engine": "v2", "percent": 1})})
    for _ in range(5):
        resp = await gw.chat(serving={"engine": "v2"})  # the shadow (not in traffic) can be evaluated
        assert resp.status_code == 200 and resp.headers["x-serving-model"] == "v2"
    resp = await gw.chat(serving={"engine": "v9"})
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["param"] == "serving.engine" and err["code"] == "engine_not_found"
    assert not any(c.request.model == "v9" for c in v1.calls + v2.calls)


async def test_shadow_mirrors_and_discards(make_gateway) -> None:  # noqa: F811
    v1 = FakeEngine("v1", reply="champion answer")
    v2 = FakeEngine("v2", reply="challenger answer")
    gw = make_gateway(v1, v2, groups={GROUP: ModelGroupConfig.model_validate(
        {"engines": ["v1"], "shadow": {"engine": "v2", "percent": 100}})})
    for stream in (False, True):
        resp = await gw.chat(stream=stream)
        assert resp.status_code == 200 and resp.headers["x-serving-model"] == "v1"
        assert "challenger" not in resp.text
    for _ in range(50):
        await asyncio.sleep(0.01)
        if len(v2.calls) == 2:
            break
    assert len(v1.calls) == 2 and len(v2.calls) == 2
    assert all(c.request.model == "v2" for c in v2.calls)
    samples = await gw.metrics()
    shadow = {(s.labels["engine"], s.labels["status_code"]): s.value
              for s in samples["serving_shadow_requests_total"]}
    assert shadow == {("v2", "200"): 2.0}
    served = {s.labels["engine"] for s in samples["serving_requests_total"]}
    assert served == {"v1"}  # client-facing metrics count only what clients got


async def test_failing_shadow_never_reaches_the_client(make_gateway) -> None:  # noqa: F811
    v1, v2 = FakeEngine("v1"), FakeEngine("v2", crash=True)
    gw = make_gateway(v1, v2, groups={GROUP: ModelGroupConfig.model_validate(
        {"engines": ["v1"], "shadow": {"engine": "v2"}})})
    for _ in range(3):
        assert (await gw.chat()).status_code == 200
    for _ in range(50):
        await asyncio.sleep(0.01)
        if sum(s.value for s in (await gw.metrics()).get("serving_shadow_requests_total", [])) == 3:
            break
    samples = await gw.metrics()
    assert {s.labels["status_code"] for s in samples["serving_shadow_requests_total"]} == {"502"}


def test_shadow_engine_must_exist() -> None:
    from serving.config import ConfigError

    with pytest.raises(ConfigError, match=r"model_groups\.g\.shadow\.engine: unknown engine 'nope'"):
        parse_config({"engines": {"a": {"model": "builtin:tiny-llama", "device": "cpu"}},
                      "model_groups": {"g": {"engines": ["a"], "shadow": {"engine": "nope"}}}})

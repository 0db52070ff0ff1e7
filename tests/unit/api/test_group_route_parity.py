"""A model group and a route with the same problem get the same status and error code, streamed or not.

The route is shaped like the embedded default's `auto`: a gated local tier on the group, then a cloud tier that
cannot run (no API key), so only the local engine can answer. Each error class is tried on the group's name and
on the route's name.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from ray.serve.llm.openai_api_models import ErrorResponse

from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig, ProviderConfig, RouteConfig, TierConfig
from serving.routing.groups import GroupRouter
from serving.routing.resilience import TierDown
from tests.support.fakes import FakeEngine, context_length_error

GROUP, ROUTE = "smollm2", "auto"
MESSAGES = [{"role": "user", "content": "Say hi."}]


def no_key(name: str, provider: ProviderConfig, tier: TierConfig) -> Any:
    raise TierDown(f"tier {name}: the API key variable OPENAI_API_KEY is not set")


def gateway(engine: FakeEngine, timeout_s: float = 30.0) -> httpx.AsyncClient:
    router = GroupRouter({engine.name: engine}, {GROUP: ModelGroupConfig.model_validate({"engines": [engine.name]})})
    app = build_api(router, GatewayConfig(health_interval_s=0, request_timeout_s=timeout_s), cloud_factory=no_key)
    tiers = {"local": TierConfig(model_group=GROUP, timeout_s=timeout_s),
             "cloud": TierConfig(provider="openai", model="gpt-4o-mini")}
    routes = {ROUTE: RouteConfig.model_validate({"tiers": ["local", "cloud"], "gates": {"json": {}, "empty": {}},
                                                 "deadline_s": timeout_s})}
    app.state.gateway.update_routing({"openai": ProviderConfig(kind="openai")}, tiers, routes, {})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def unsupported_tools() -> ErrorResponse:
    """What vLLM answers a tools request when the engine has no tool parser."""
    return ErrorResponse(error={"message": '"auto" tool choice requires --enable-auto-tool-choice and '
                                           "--tool-call-parser to be set", "type": "BadRequestError",
                                "param": None, "code": 400})


TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any], int, str | None]] = {
    # name: (FakeEngine kwargs, extra body, status, code)
    "bad_request": ({}, {"temperature": 5}, 400, "invalid_value"),
    "context_length": ({"error": context_length_error(2048, 5000)}, {}, 400, "context_length_exceeded"),
    "unsupported_parameter": ({"error": unsupported_tools()}, {"tools": [TOOL]}, 400, None),
    "engine_down": ({"unavailable": True}, {}, 503, "engine_unavailable"),
    "engine_failed": ({"crash": True}, {}, 502, "engine_error"),
    "timeout": ({"hang": True}, {}, 504, "timeout"),
}


async def ask(model: str, case: str, stream: bool) -> tuple[httpx.Response, FakeEngine]:
    kwargs, extra, _, _ = CASES[case]
    engine = FakeEngine("smollm2-v1", **kwargs)
    async with gateway(engine, timeout_s=0.2 if case == "timeout" else 30.0) as http:
        resp = await asyncio.wait_for(http.post("/v1/chat/completions", json={
            "model": model, "messages": MESSAGES, "stream": stream, **extra}), 10)
    return resp, engine


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_same_problem_same_answer(case: str, stream: bool):
    _, _, status, code = CASES[case]
    answers = {}
    for model in (GROUP, ROUTE):
        resp, engine = await ask(model, case, stream)
        assert resp.status_code == status, (model, resp.text)
        assert resp.headers["content-type"].startswith("application/json")
        err = resp.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert "Traceback" not in resp.text
        answers[model] = (resp.status_code, err["code"], err["type"])
        if case == "timeout":
            assert engine.started == engine.closed == 1  # the hung engine call was cancelled
        if status == 503:
            assert int(resp.headers["retry-after"]) >= 1
    assert answers[GROUP] == answers[ROUTE]
    assert answers[GROUP][1] == code


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_unknown_model_is_404_for_names_and_routes(stream: bool):
    async with gateway(FakeEngine("smollm2-v1")) as http:
        named = await http.post("/v1/chat/completions", json={"model": "nope", "messages": MESSAGES,
                                                                "stream": stream})
        via = await http.post("/v1/chat/completions", json={"model": GROUP, "messages": MESSAGES, "stream": stream,
                                                              "serving": {"route": "nope"}})
    assert named.status_code == via.status_code == 404
    assert named.json()["error"]["code"] == "model_not_found"
    assert via.json()["error"]["code"] == "route_not_found"


@pytest.mark.parametrize("model", [GROUP, ROUTE])
async def test_both_answer_the_same_request(model: str):
    """The happy path is the same pipeline too: a JSON answer and a stream, with x-serving-model."""
    async with gateway(FakeEngine("smollm2-v1")) as http:
        plain = await http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES})
        streamed = await http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES,
                                                                   "stream": True})
    assert plain.status_code == streamed.status_code == 200
    assert plain.headers["x-serving-model"] == streamed.headers["x-serving-model"] == "smollm2-v1"
    assert plain.json()["choices"][0]["message"]["content"]
    events = [e for e in streamed.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"
    assert ("serving" in plain.json()) == (model == ROUTE)  # only routes add the `serving` extension field

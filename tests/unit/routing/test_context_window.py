"""Context-window fallback: a prompt longer than a tier's context skips to the next tier whose context fits,
decided before the call; when no tier fits, the route answers the model group's 400 context_length_exceeded."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from serving.api.server import build_api
from serving.config import EngineConfig, GatewayConfig, ModelGroupConfig, ProviderConfig, RouteConfig, TierConfig
from serving.deploy.serve_config import engine_context
from serving.engines.base import EngineRejected
from serving.routing.context_window import does_not_fit, prompt_tokens_lower_bound
from serving.routing.groups import GroupRouter
from serving.routing.outcomes import Outcome, failure
from tests.support.fakes import FakeEngine

LONG = "hello " * 3000  # 18000 bytes: at least 3000 tokens


def gateway(local: FakeEngine, cloud: FakeEngine, cloud_window: int | None = None) -> httpx.AsyncClient:
    router = GroupRouter({"small": local}, {"small": ModelGroupConfig.model_validate({"engines": ["small"]})})
    app = build_api(router, GatewayConfig(health_interval_s=0), cloud_factory=lambda name, provider, tier: cloud)
    providers = {"oa": ProviderConfig.model_validate({"kind": "openai", "base_url": "http://127.0.0.1:9/v1"})}
    tiers = {
        "local": TierConfig.model_validate({"model_group": "small", "retry": {"attempts": 1}}),
        "cloud": TierConfig.model_validate({"provider": "oa", "model": "gpt-x", "retry": {"attempts": 1},
                                            "context_window": cloud_window}),
    }
    routes = {"auto": RouteConfig.model_validate({"tiers": ["local", "cloud"]}),
              "local-only": RouteConfig.model_validate({"tiers": ["local"]})}
    app.state.gateway.update_routing(providers, tiers, routes, {}, context={"small": 2048})
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


def chat(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_prompt_too_long_for_the_local_tier_goes_to_the_cloud_without_calling_local(stream: bool) -> None:
    local, cloud = FakeEngine("small"), FakeEngine("cloud", reply="a long answer")
    async with gateway(local, cloud, cloud_window=128_000) as http:
        resp = await http.post("/v1/chat/completions", json=chat("auto", LONG, stream=stream))
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-serving-tier"] == "cloud"
    assert local.calls == [] and len(cloud.calls) == 1
    if not stream:
        first = resp.json()["serving"]["attempts"][0]
        assert first["tier"] == "local" and first["outcome"] == "rejected"
        assert "context" in first["error"]


async def test_a_short_prompt_stays_local() -> None:
    local, cloud = FakeEngine("small"), FakeEngine("cloud")
    async with gateway(local, cloud) as http:
        resp = await http.post("/v1/chat/completions", json=chat("auto", "hello " * 300))
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "local"
    assert cloud.calls == []


@pytest.mark.parametrize("model", ["local-only", "auto"])
async def test_when_no_tier_fits_the_route_answers_400_context_length_exceeded(model: str) -> None:
    local, cloud = FakeEngine("small"), FakeEngine("cloud")
    async with gateway(local, cloud, cloud_window=1024) as http:
        resp = await http.post("/v1/chat/completions", json=chat(model, LONG))
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["code"] == "context_length_exceeded" and err["param"] == "messages"
    assert local.calls == [] and cloud.calls == []


async def test_max_tokens_counts_against_the_context() -> None:
    local, cloud = FakeEngine("small"), FakeEngine("cloud")
    async with gateway(local, cloud) as http:
        resp = await http.post("/v1/chat/completions", json=chat("auto", "hello " * 300, max_tokens=2000))
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "cloud"  # 300 + 2000 > 2048


def test_the_token_bound_is_a_lower_bound() -> None:
    req = ChatCompletionRequest.model_validate(chat("m", LONG))
    assert prompt_tokens_lower_bound("chat", req) == 3000
    parts = ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "x" * 600}]}]})
    assert prompt_tokens_lower_bound("chat", parts) == 100
    ids = CompletionRequest.model_validate({"model": "m", "prompt": list(range(50))})
    assert prompt_tokens_lower_bound("completions", ids) == 50
    assert does_not_fit("chat", req, None) is None
    assert does_not_fit("chat", req, 4096) is None
    assert does_not_fit("chat", req, 2048) == (3000, 0)


def test_the_engines_context_comes_from_the_config_or_the_catalog() -> None:
    assert engine_context(EngineConfig.model_validate({"model": "builtin:tiny-llama", "max_model_len": 512})) == 512
    assert engine_context(EngineConfig.model_validate({"model": "builtin:tiny-llama"})) is None


def test_the_most_specific_refusal_wins() -> None:
    outcome = Outcome("auto", "default", "route")
    outcome.errors = [EngineRejected("tools are not supported", status=400),
                      EngineRejected("too long", status=400, code="context_length_exceeded", param="messages")]
    err = failure(outcome, gate_failed=False, deadline_hit=False)
    assert err.status == 400 and err.code == "context_length_exceeded" and err.param == "messages"

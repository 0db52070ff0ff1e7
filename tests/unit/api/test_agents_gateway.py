"""What agents use, through the real gateway app (ASGI) over fake vLLM engines, as a client sees it: embeddings,
tool calls on chat (model groups and gated routes), the Anthropic Messages API with the `anthropic` SDK, and the
OpenAI Responses API with the `openai` SDK over a real Redis (stored responses, `previous_response_id`, tenants).

Engines are `tests.support.fakes.FakeEngine`s (tool calls and embeddings in vLLM's wire format); the gateway
helpers come from test_gateway_api.py, the Redis and API-key fixtures from tests/unit/policy/test_policies.py.
"""
# ruff: noqa: F811  (the make_gateway / env / redis_server fixtures are imported from other test modules)

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

from serving.config import PoliciesConfig, RouteConfig, TenantConfig, TierConfig
from serving.engines.base import Completed
from tests.support.fakes import (
    DEFAULT_REPLY,
    FakeEngine,
    context_length_error,
    decode_base64_embedding,
    embedding_of,
    metric,
    scrape,
    tokenize,
    tool_call,
)
from tests.support.redis_server import RedisServer
from tests.unit.api.test_gateway_api import (  # noqa: F401  (make_gateway: a fixture)
    Gateway,
    assert_error,
    chunks,
    group,
    make_gateway,
    sse_events,
)
from tests.unit.policy.test_policies import env, redis_server  # noqa: F401  (fixtures)

GROUP, BIG, EMBED = "smollm2", "qwen", "minilm"  # model groups: small chat, big chat, embeddings
SMALL_ENGINE, BIG_ENGINE, EMBED_ENGINE = "smollm2-v1", "qwen-v1", "minilm-v1"
AGENT, SOLO, STRICT, FIX = "agent", "agent-solo", "agent-strict", "agent-fix"  # gated routes (see agents_gateway)
GATES = {"tools": {}, "empty": {}}
PROMPT_TOKENS = 11  # FakeEngine's usage.prompt_tokens
REPLY_TOKENS = len(tokenize(DEFAULT_REPLY))
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": WEATHER_PARAMS}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
PARIS = tool_call("get_weather", {"city": "Paris"}, "chatcmpl-tool-paris")
ROME = tool_call("get_weather", {"city": "Rome"}, "chatcmpl-tool-rome")
BAD_ARGS = tool_call("get_weather", {"city": 42}, "chatcmpl-tool-bad")  # `city` must be a string


# ------------------------------------------------------------------------------------------------- the setup


def agents_gateway(make_gateway: Any, *, small: FakeEngine | None = None, big: FakeEngine | None = None,
                   embedder: FakeEngine | None = None, tenants: dict[str, TenantConfig] | None = None) -> Gateway:
    """A gateway with a small and a big chat group, an embedding group, and gated routes over the chat groups:
    `agent` (small, then big), `agent-solo` (small only, best effort), `agent-strict` (small only, error),
    `agent-fix` (small only, self-correcting, error)."""
    small = small or FakeEngine(SMALL_ENGINE)
    big = big or FakeEngine(BIG_ENGINE)
    embedder = embedder or FakeEngine(EMBED_ENGINE)
    gw: Gateway = make_gateway(small, big, embedder, health_interval_s=0, groups={
        GROUP: group(small.name), BIG: group(big.name), EMBED: group(embedder.name)})
    tiers = {"local": TierConfig(model_group=GROUP), "big": TierConfig(model_group=BIG)}
    routes = {
        AGENT: RouteConfig.model_validate({"tiers": ["local", "big"], "gates": GATES}),
        SOLO: RouteConfig.model_validate({"tiers": ["local"], "gates": GATES, "on_exhausted": "best_effort"}),
        STRICT: RouteConfig.model_validate({"tiers": ["local"], "gates": GATES, "on_exhausted": "error"}),
        FIX: RouteConfig.model_validate({"tiers": ["local"], "gates": GATES, "on_exhausted": "error",
                                         "self_correct": True}),
    }
    gw.app.state.gateway.update_routing({}, tiers, routes, tenants or {}, embedding_groups=[EMBED])
    return gw


def weather_unless_answered(request: Any) -> list[dict[str, Any]] | None:
    """A FakeEngine's `tool_calls`: call get_weather (Paris) when the request declares tools and the conversation
    holds no tool result yet; else answer in text."""
    if not request.tools or any(m.get("role") == "tool" for m in request.messages):
        return None
    return [PARIS]


def engine(gw: Gateway, name: str) -> FakeEngine:
    return gw.engines[name]


@pytest.fixture
def gw(make_gateway: Any) -> Gateway:
    return agents_gateway(make_gateway)


def anthropic_client(app: Any, api_key: str = "unused") -> anthropic.AsyncAnthropic:
    """The official anthropic SDK (on httpx2, which has an ASGI transport) talking to the app; it sends the key
    as `x-api-key`."""
    return anthropic.AsyncAnthropic(
        api_key=api_key, base_url="http://test", max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test"))


@pytest.fixture
async def claude(gw: Gateway) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic_client(gw.app)
    yield client
    await client.close()


def anthropic_error(resp: httpx.Response, status: int, kind: str) -> str:
    """`resp` is an error in Anthropic's shape; returns its message."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["type"] == "error" and set(body) == {"type", "error"}, body
    assert set(body["error"]) == {"type", "message"} and body["error"]["type"] == kind
    assert body["error"]["message"] and "Traceback" not in resp.text
    return str(body["error"]["message"])


async def chat(gw: Gateway, model: str, **body: Any) -> httpx.Response:
    """POST /v1/chat/completions asking `model` about the weather in Paris."""
    return await gw.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body})


# ------------------------------------------------------------------------- the test double speaks vLLM's format


async def test_fake_engine_tool_calls_have_vllms_shape():
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    fake = FakeEngine(SMALL_ENGINE, tool_calls=[PARIS, ROME])
    streamed = ChatCompletionRequest(model=SMALL_ENGINE, messages=MESSAGES, stream=True,
                                     stream_options={"include_usage": True})
    items = [i async for i in fake.generate("chat", streamed)]
    assert items[-1] == "data: [DONE]\n\n"
    data = [json.loads(i[6:]) for i in items[:-1]]
    assert data[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"]["tool_calls"][0] for c in data[1:-2]]
    assert deltas[0] == {"index": 0, "id": PARIS["id"], "type": "function",
                         "function": {"name": "get_weather", "arguments": ""}}
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
               for d in deltas[1:] if "id" not in d)
    assert [d["id"] for d in deltas if "id" in d] == [PARIS["id"], ROME["id"]]
    assert "".join(d["function"]["arguments"] for d in deltas if d["index"] == 1) == ROME["function"]["arguments"]
    assert data[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert data[-1]["choices"] == [] and data[-1]["usage"]["completion_tokens"] > 0

    (answer,) = [i async for i in fake.generate("chat", ChatCompletionRequest(model=SMALL_ENGINE, messages=MESSAGES))]
    assert isinstance(answer, Completed)
    choice = answer.body["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["tool_calls"] == [PARIS, ROME]


async def test_fake_engine_embeddings_have_vllms_shape():
    from serving.api.embeddings import EMBEDDING_REQUEST

    fake = FakeEngine(EMBED_ENGINE)
    (answer,) = [i async for i in fake.generate("embeddings", EMBEDDING_REQUEST.model_validate(
        {"model": EMBED_ENGINE, "input": ["a b", "c"], "encoding_format": "base64"}))]
    assert isinstance(answer, Completed)
    body = answer.body
    assert set(body) == {"id", "object", "created", "model", "data", "usage"} and body["object"] == "list"
    assert [(d["index"], d["object"]) for d in body["data"]] == [(0, "embedding"), (1, "embedding")]
    assert decode_base64_embedding(body["data"][1]["embedding"]) == pytest.approx(embedding_of("c", 8), abs=1e-6)
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


# ------------------------------------------------------------------------------------------------ embeddings


async def test_embeddings_of_a_string_through_the_sdk(gw: Gateway):
    """The openai SDK asks for base64 by default and decodes it: the vector is the engine's, as float32."""
    resp = await gw.sdk.embeddings.create(model=EMBED, input="hello world")
    assert resp.object == "list" and resp.model == EMBED_ENGINE
    assert len(resp.data) == 1 and resp.data[0].index == 0 and resp.data[0].object == "embedding"
    assert resp.data[0].embedding == pytest.approx(embedding_of("hello world", 8), abs=1e-6)
    assert (resp.usage.prompt_tokens, resp.usage.total_tokens) == (2, 2)
    sent = engine(gw, EMBED_ENGINE).last_request
    assert sent.input == "hello world" and sent.model == EMBED_ENGINE and sent.encoding_format == "base64"


async def test_embeddings_of_a_list_of_strings(gw: Gateway):
    texts = ["The capital of France", "is Paris", "and of Italy, Rome."]
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": texts, "encoding_format": "float"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-serving-model"] == EMBED_ENGINE
    body = resp.json()
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(len(d["embedding"]) == 8 for d in body["data"])
    assert [d["embedding"] for d in body["data"]] == [pytest.approx(embedding_of(t, 8)) for t in texts]
    tokens = sum(len(tokenize(t)) for t in texts)
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert all(math.isclose(sum(x * x for x in d["embedding"]), 1.0) for d in body["data"])


async def test_embeddings_dimensions_and_token_ids(gw: Gateway):
    resp = await gw.sdk.embeddings.create(model=EMBED, input=[[1, 2, 3], [4, 5]], dimensions=4)
    assert [len(d.embedding) for d in resp.data] == [4, 4]
    assert resp.usage.prompt_tokens == 5
    assert engine(gw, EMBED_ENGINE).last_request.dimensions == 4


async def test_embeddings_base64_decodes_to_the_float_answer(gw: Gateway):
    body = {"model": EMBED, "input": ["a b", "c"]}
    floats = (await gw.http.post("/v1/embeddings", json={**body, "encoding_format": "float"})).json()
    packed = (await gw.http.post("/v1/embeddings", json={**body, "encoding_format": "base64"})).json()
    assert all(isinstance(d["embedding"], str) for d in packed["data"])
    for f, b in zip(floats["data"], packed["data"], strict=True):
        assert decode_base64_embedding(b["embedding"]) == pytest.approx(f["embedding"], abs=1e-6)
    assert packed["usage"] == floats["usage"]


async def test_embeddings_on_a_chat_model_group_is_a_400(gw: Gateway):
    resp = await gw.http.post("/v1/embeddings", json={"model": GROUP, "input": "hello"})
    err = assert_error(resp, 400, code="model_not_embedding", param="model")
    assert EMBED in err["message"]  # it names the model groups that do answer
    assert not engine(gw, SMALL_ENGINE).calls


async def test_embeddings_on_a_route_is_a_400(gw: Gateway):
    assert_error(await gw.http.post("/v1/embeddings", json={"model": AGENT, "input": "hello"}), 400,
                 code="model_not_embedding", param="model")
    assert_error(await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello",
                                                            "serving": {"route": AGENT}}), 400, param="serving")
    assert not any(e.calls for e in gw.engines.values())


async def test_embeddings_of_an_unknown_model_is_a_404(gw: Gateway):
    assert_error(await gw.http.post("/v1/embeddings", json={"model": "nope", "input": "hello"}), 404,
                 code="model_not_found", param="model")


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {"messages": MESSAGES}),
    ("/v1/chat/completions", {"messages": MESSAGES, "stream": True}),
    ("/v1/completions", {"prompt": "Hello"}),
    ("/v1/responses", {"input": "Hello"}),
], ids=["chat", "chat-stream", "completions", "responses"])
async def test_an_embedding_group_answers_no_chat(gw: Gateway, path: str, body: dict[str, Any]):
    resp = await gw.http.post(path, json={"model": EMBED, **body})
    err = assert_error(resp, 400, code="model_not_chat", param="model")
    assert "/v1/embeddings" in err["message"]
    assert not engine(gw, EMBED_ENGINE).calls


async def test_an_embedding_group_answers_no_messages(gw: Gateway, claude: anthropic.AsyncAnthropic):
    resp = await gw.http.post("/v1/messages", json={"model": EMBED, "max_tokens": 16,
                                                    "messages": [{"role": "user", "content": "Hello"}]})
    assert "/v1/embeddings" in anthropic_error(resp, 400, "invalid_request_error")
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude.messages.create(model=EMBED, max_tokens=16, messages=[{"role": "user", "content": "Hello"}])
    assert info.value.type == "invalid_request_error"
    assert not engine(gw, EMBED_ENGINE).calls


async def test_an_embedding_group_is_listed_with_its_task(gw: Gateway):
    cards = {m["id"]: m for m in (await gw.http.get("/v1/models")).json()["data"]}
    assert cards[EMBED]["task"] == "embeddings"
    assert cards[GROUP]["task"] == cards[AGENT]["task"] == "chat"


@pytest.mark.parametrize(("body", "param", "code"), [
    ({"input": ""}, "input", "invalid_value"),
    ({"input": []}, "input", None),
    ({"input": ["ok", ""]}, "input[1]", "invalid_value"),
    ({"input": ["x"] * 2049}, "input", "invalid_value"),
    ({"input": [[1, -2]]}, "input[0]", "invalid_value"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
    ({"input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
    ({"input": "x", "dimensions": True}, "dimensions", "invalid_value"),
    ({"input": "x", "truncate_prompt_tokens": True}, "truncate_prompt_tokens", "invalid_value"),
    ({"input": "x", "truncate_prompt_tokens": -2}, "truncate_prompt_tokens", "invalid_value"),
    ({"input": "x", "temperature": 0.5}, "temperature", "unknown_parameter"),
    ({}, "input", "missing_required_parameter"),
], ids=["empty-string", "empty-list", "empty-item", "2049-items", "bad-token", "encoding", "dimensions-0",
        "dimensions-bool", "truncate-bool", "truncate-below-minus-1", "unknown-field", "no-input"])
async def test_bad_embedding_requests_are_a_400_naming_the_param(gw: Gateway, body: dict[str, Any], param: str,
                                                                 code: str | None):
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, **body})
    assert_error(resp, 400, param=param, code=code, type="invalid_request_error")
    assert not engine(gw, EMBED_ENGINE).calls


async def test_embeddings_take_integral_floats_as_integers(gw: Gateway):
    """Fuzz finding: JSON has no integer type, and the document's integers (`dimensions`, token ids) admit 2.0, as
    the other endpoints do; they were refused here."""
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": [[1.0, 2.0], [3, 4.0]],
                                                      "dimensions": 4.0, "truncate_prompt_tokens": 2.0})
    assert resp.status_code == 200, resp.text
    assert [len(d["embedding"]) for d in resp.json()["data"]] == [4, 4]
    sent = engine(gw, EMBED_ENGINE).last_request
    assert (sent.input, sent.dimensions, sent.truncate_prompt_tokens) == ([[1, 2], [3, 4]], 4, 2)
    assert_error(await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": [1.5]}), 400,
                 param="input[0]", code="invalid_value")


async def test_embeddings_pin_an_engine_of_the_group(gw: Gateway):
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x",
                                                      "serving": {"engine": EMBED_ENGINE}})
    assert resp.status_code == 200 and resp.headers["x-serving-model"] == EMBED_ENGINE
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x", "serving": {"engine": "nope"}})
    assert_error(resp, 400, param="serving.engine", code="engine_not_found")


async def test_embeddings_take_a_request_deadline(make_gateway: Any):
    gw = agents_gateway(make_gateway, embedder=FakeEngine(EMBED_ENGINE, hang=True))
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x", "serving": {"deadline_s": 0.2}})
    assert_error(resp, 504, code="timeout")
    embedder = engine(gw, EMBED_ENGINE)
    assert embedder.started == embedder.closed == 1  # the hung engine call was cancelled


async def test_an_embedding_engines_refusal_is_passed_on(make_gateway: Any):
    gw = agents_gateway(make_gateway, embedder=FakeEngine(EMBED_ENGINE, error=context_length_error(512, 900)))
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "a very long text"})
    assert_error(resp, 400, code="context_length_exceeded")


async def test_an_embedding_engine_down_is_a_503(make_gateway: Any):
    gw = agents_gateway(make_gateway, embedder=FakeEngine(EMBED_ENGINE, unavailable=True))
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x"})
    assert_error(resp, 503, code="engine_unavailable")


async def test_2048_inputs_are_allowed(gw: Gateway):
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": ["x"] * 2048})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["data"]) == 2048


async def test_embeddings_are_counted_and_audited_under_their_endpoint(gw: Gateway, tmp_path: Path):
    audit = tmp_path / "audit.jsonl"
    policy = gw.app.state.gateway.policy
    gw.app.state.gateway.update_policies(PoliciesConfig.model_validate(
        {"auth": {"enabled": False}, "audit": {"path": str(audit)}}))
    assert (await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": ["a b", "c"]})).status_code == 200
    assert (await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": ""})).status_code == 400
    samples = await scrape(gw.http)
    assert metric(samples, "serving_requests_total", endpoint="embeddings", model_group=EMBED,
                  engine=EMBED_ENGINE, status_code="200") == 1
    assert metric(samples, "serving_requests_total", endpoint="embeddings", status_code="400") == 1
    assert metric(samples, "serving_requests_total", endpoint="chat") == 0
    assert metric(samples, "serving_prompt_tokens_total", model_group=EMBED) == 3
    policy.audit.close()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(a["endpoint"], a["status"]) for a in lines] == [("embeddings", 200), ("embeddings", 400)]
    assert lines[0]["model"] == EMBED and lines[0]["prompt_tokens"] == 3 and lines[0]["model_group"] == EMBED


async def test_a_tenant_auditing_prompts_gets_the_embedding_input_audited(make_gateway: Any, tmp_path: Path):
    gw = agents_gateway(make_gateway, tenants={"acme": TenantConfig(audit_prompts=True)})
    audit = tmp_path / "audit.jsonl"
    gw.app.state.gateway.update_policies(PoliciesConfig.model_validate(
        {"auth": {"enabled": False}, "audit": {"path": str(audit)}}))
    acme = {"x-serving-tenant": "acme"}
    assert (await gw.http.post("/v1/chat/completions", json={"model": GROUP, "messages": MESSAGES},
                               headers=acme)).status_code == 200
    assert (await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello"},
                               headers=acme)).status_code == 200
    gw.app.state.gateway.policy.audit.close()
    chat_line, embed_line = (json.loads(line) for line in audit.read_text().splitlines())
    assert chat_line["prompt"] == MESSAGES  # what the tenant opted into, for chat
    assert embed_line["endpoint"] == "embeddings" and embed_line.get("prompt") == "hello"


async def test_a_tenant_with_a_default_route_can_still_embed(make_gateway: Any):
    gw = agents_gateway(make_gateway, tenants={"acme": TenantConfig(default_route=AGENT)})
    routed = await gw.http.post("/v1/chat/completions", json={"model": "anything", "messages": MESSAGES},
                                headers={"x-serving-tenant": "acme"})
    assert routed.status_code == 200 and routed.json()["serving"]["route"] == AGENT  # the default route works
    resp = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello"},
                              headers={"x-serving-tenant": "acme"})
    assert resp.status_code == 200, resp.text


# ------------------------------------------------------------------------------------------ tools on chat


async def test_a_tool_call_reaches_the_client(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS]))
    resp = await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, tools=[WEATHER])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert (call.id, call.type, call.function.name) == ("chatcmpl-tool-paris", "function", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.usage.completion_tokens > 0
    sent = engine(gw, SMALL_ENGINE).last_request
    assert [t.function.name for t in sent.tools] == ["get_weather"]


async def test_a_streamed_tool_call_is_accumulated_by_the_sdk(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS, ROME]))
    async with gw.sdk.chat.completions.stream(model=GROUP, messages=MESSAGES, tools=[WEATHER]) as stream:
        final = await stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [(c.id, c.function.name) for c in calls] == [("chatcmpl-tool-paris", "get_weather"),
                                                        ("chatcmpl-tool-rome", "get_weather")]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]


async def test_a_tool_result_turn_reaches_the_engine(gw: Gateway):
    history = [*MESSAGES,
               {"role": "assistant", "content": None, "tool_calls": [PARIS]},
               {"role": "tool", "tool_call_id": PARIS["id"], "content": "18C, sunny"}]
    resp = await gw.sdk.chat.completions.create(model=GROUP, messages=history, tools=[WEATHER])
    assert resp.choices[0].message.content == DEFAULT_REPLY
    sent = engine(gw, SMALL_ENGINE).last_request.messages
    assert sent[1]["tool_calls"][0]["id"] == PARIS["id"]
    assert sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == PARIS["id"]


async def test_the_sdk_agent_loop_sends_the_assistant_message_back(make_gateway: Any):
    """An agent appends the SDK's own message object and the tool's result, and asks again."""
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=weather_unless_answered))
    messages: list[Any] = list(MESSAGES)
    first = await gw.sdk.chat.completions.create(model=GROUP, messages=messages, tools=[WEATHER])
    asked = first.choices[0].message
    messages += [asked, {"role": "tool", "tool_call_id": asked.tool_calls[0].id, "content": "18C, sunny"}]
    second = await gw.sdk.chat.completions.create(model=GROUP, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content == DEFAULT_REPLY
    sent = engine(gw, SMALL_ENGINE).last_request.messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == "chatcmpl-tool-paris"


async def test_a_gated_route_accepts_a_valid_tool_call(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS]))
    resp = await gw.sdk.chat.completions.with_raw_response.create(model=AGENT, messages=MESSAGES, tools=[WEATHER])
    assert resp.headers["x-serving-tier"] == "local" and "x-serving-flagged" not in resp.headers
    body = resp.parse()
    (call,) = body.choices[0].message.tool_calls
    assert call.id == "chatcmpl-tool-paris" and json.loads(call.function.arguments) == {"city": "Paris"}
    serving = json.loads(resp.text)["serving"]
    assert serving["tier"] == "local" and serving["flagged"] is False
    (attempt,) = serving["attempts"]
    assert {g["gate"]: g["result"] for g in attempt["gates"]} == {"tools": "pass", "empty": "pass"}
    assert not engine(gw, BIG_ENGINE).calls


async def test_a_gated_route_escalates_a_call_with_schema_invalid_arguments(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    resp = await chat(gw, AGENT, tools=[WEATHER])
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-serving-tier"] == "big" and resp.headers["x-serving-model"] == BIG_ENGINE
    body = resp.json()
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "chatcmpl-tool-paris"
    first, second = body["serving"]["attempts"]
    assert (first["tier"], first["outcome"], second["tier"], second["outcome"]) == (
        "local", "gate_failed", "big", "accepted")
    tools_gate = next(g for g in first["gates"] if g["gate"] == "tools")
    assert tools_gate["result"] == "fail" and "42 is not of type 'string'" in tools_gate["reasons"][0]
    assert [t.function.name for t in engine(gw, BIG_ENGINE).last_request.tools] == ["get_weather"]
    samples = await scrape(gw.http)
    assert metric(samples, "serving_escalations_total", route=AGENT, from_tier="local", to_tier="big",
                  reason="tools") == 1


async def test_a_gated_route_escalates_a_call_to_an_undeclared_tool(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[tool_call("rm_rf", {})]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    resp = await chat(gw, AGENT, tools=[WEATHER])
    assert resp.headers["x-serving-tier"] == "big"
    reasons = resp.json()["serving"]["attempts"][0]["gates"][0]["reasons"]
    assert "'rm_rf'" in reasons[0]


async def test_a_one_tier_route_flags_its_best_effort_tool_call(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]))
    resp = await chat(gw, SOLO, tools=[WEATHER])
    assert resp.status_code == 200
    assert resp.headers["x-serving-flagged"] == "true"
    body = resp.json()
    assert body["serving"]["flagged"] is True and body["serving"]["tier"] == "local"
    assert json.loads(body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]) == {"city": 42}


async def test_a_one_tier_route_with_on_exhausted_error_refuses_the_call(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]))
    resp = await chat(gw, STRICT, tools=[WEATHER])
    assert resp.status_code == 422
    assert resp.json()["error"]["code"] == "quality_gate_failed"
    assert resp.json()["serving"]["attempts"][0]["outcome"] == "gate_failed"


async def test_a_self_correcting_route_asks_again_with_the_gates_reasons(make_gateway: Any):
    def calls(request: Any) -> list[dict[str, Any]]:
        corrected = len(request.messages) > 1
        return [PARIS if corrected else BAD_ARGS]

    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=calls))
    resp = await chat(gw, FIX, tools=[WEATHER])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["tool_calls"][0]["id"] == "chatcmpl-tool-paris"
    assert [(a["kind"], a["outcome"]) for a in body["serving"]["attempts"]] == [
        ("answer", "gate_failed"), ("self_correction", "accepted")]
    again = engine(gw, SMALL_ENGINE).last_request
    assert [m["role"] for m in again.messages] == ["user", "assistant", "user"]
    assert "get_weather" in again.messages[1]["content"] and "42" in again.messages[1]["content"]
    assert "not of type 'string'" in again.messages[2]["content"]
    assert [t.function.name for t in again.tools] == ["get_weather"]


async def test_a_call_to_another_function_than_the_named_tool_choice_escalates(make_gateway: Any):
    get_time = tool_call("get_time", {"tz": "UTC"})
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[get_time]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    resp = await chat(gw, AGENT, tools=[WEATHER, TIME],
                      tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert resp.headers["x-serving-tier"] == "big"
    reasons = resp.json()["serving"]["attempts"][0]["gates"][0]["reasons"]
    assert "tool_choice asks for 'get_weather'" in reasons[0]


async def test_a_gated_stream_replays_the_tool_calls(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS, ROME]))
    raw = await chat(gw, AGENT, tools=[WEATHER], stream=True)
    deltas = [call for c in chunks(sse_events(raw)) for choice in c["choices"]
              for call in choice["delta"].get("tool_calls") or ()]
    assert [d["index"] for d in deltas] == [0, 1]  # replayed whole, one delta per call, each with its index
    async with gw.sdk.chat.completions.stream(model=AGENT, messages=MESSAGES, tools=[WEATHER],
                                              stream_options={"include_usage": True}) as stream:
        final = await stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.id, json.loads(c.function.arguments)) for c in calls] == [
        ("chatcmpl-tool-paris", {"city": "Paris"}), ("chatcmpl-tool-rome", {"city": "Rome"})]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.prompt_tokens == PROMPT_TOKENS


async def test_a_gated_stream_escalates_before_any_byte(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[ROME]))
    async with gw.sdk.chat.completions.stream(model=AGENT, messages=MESSAGES, tools=[WEATHER]) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.id == "chatcmpl-tool-rome" and json.loads(call.function.arguments) == {"city": "Rome"}


async def test_a_text_answer_passes_the_tools_gate_when_no_call_is_demanded(gw: Gateway):
    resp = await chat(gw, AGENT, tools=[WEATHER])
    assert resp.headers["x-serving-tier"] == "local"
    assert resp.json()["choices"][0]["message"]["content"] == DEFAULT_REPLY


async def test_a_required_call_answered_with_text_escalates(make_gateway: Any):
    gw = agents_gateway(make_gateway, big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    resp = await chat(gw, AGENT, tools=[WEATHER], tool_choice="required")
    assert resp.headers["x-serving-tier"] == "big"
    assert resp.json()["choices"][0]["message"]["tool_calls"][0]["id"] == "chatcmpl-tool-paris"


BAD_TOOLS: dict[str, tuple[dict[str, Any], str, str | None]] = {
    # name: (body fields, param, code)
    "schema-type": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
                    "tools.[0].function.parameters", "invalid_function_parameters"),
    "schema-required": ({"tools": [WEATHER, {"type": "function", "function": {
        "name": "g", "parameters": {"type": "object", "required": "city"}}}]},
        "tools.[1].function.parameters", "invalid_function_parameters"),
    "schema-dialect-not-a-string": ({"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"$schema": 5, "type": "object"}}}]},
        "tools.[0].function.parameters", "invalid_function_parameters"),
    "schema-not-object": ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]},
                          "tools.[0].function.parameters", None),
    "no-name": ({"tools": [{"type": "function", "function": {"parameters": WEATHER_PARAMS}}]},
                "tools.[0].function", None),
    "unknown-named-choice": ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
                             "tool_choice", "invalid_value"),
    "bad-choice": ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("case", sorted(BAD_TOOLS))
async def test_bad_tools_are_the_same_400_on_a_group_and_a_route(gw: Gateway, case: str, stream: bool):
    fields, param, code = BAD_TOOLS[case]
    answers = []
    for model in (GROUP, AGENT):
        resp = await chat(gw, model, stream=stream, **fields)
        err = assert_error(resp, 400, param=param, code=code, type="invalid_request_error")
        answers.append(err)
    assert answers[0] == answers[1]
    assert not any(e.calls for e in gw.engines.values())


# ------------------------------------------------------------------------------------------ /v1/messages


SDK_WEATHER = {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER_PARAMS}
HELLO = [{"role": "user", "content": "What is the capital of France?"}]


async def test_messages_text_through_the_anthropic_sdk(gw: Gateway, claude: anthropic.AsyncAnthropic):
    message = await claude.messages.create(model=GROUP, max_tokens=64, messages=HELLO, system="Be terse.")
    assert message.type == "message" and message.role == "assistant" and message.model == GROUP
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == DEFAULT_REPLY
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)
    sent = engine(gw, SMALL_ENGINE).last_request
    assert sent.messages[0] == {"role": "system", "content": "Be terse."} and sent.max_tokens == 64


async def test_messages_max_tokens_is_a_max_tokens_stop(claude: anthropic.AsyncAnthropic):
    message = await claude.messages.create(model=GROUP, max_tokens=3, messages=HELLO)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3
    assert message.content[0].text == "".join(tokenize(DEFAULT_REPLY)[:3])


async def test_messages_stream_through_the_anthropic_sdk(claude: anthropic.AsyncAnthropic):
    async with claude.messages.stream(model=GROUP, max_tokens=64, messages=HELLO) as stream:
        texts = [t async for t in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == DEFAULT_REPLY and len(texts) == REPLY_TOKENS
    assert final.content[0].text == DEFAULT_REPLY and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, REPLY_TOKENS)


async def test_messages_stream_events_in_order(claude: anthropic.AsyncAnthropic):
    stream = await claude.messages.create(model=GROUP, max_tokens=64, messages=HELLO, stream=True)
    kinds = [event.type async for event in stream]
    assert kinds[0] == "message_start" and kinds[1] == "content_block_start"
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


async def test_messages_on_a_route_carries_the_serving_field(gw: Gateway):
    resp = await gw.http.post("/v1/messages", json={"model": AGENT, "max_tokens": 64, "messages": HELLO})
    message = anthropic.types.Message.model_validate(resp.json())
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_REPLY
    assert resp.json()["serving"]["route"] == AGENT and resp.headers["x-serving-tier"] == "local"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_messages_tool_use_answer(make_gateway: Any, stream: bool):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS, ROME]))
    client = anthropic_client(gw.app)
    try:
        kw: dict[str, Any] = dict(model=GROUP, max_tokens=64, messages=HELLO, tools=[SDK_WEATHER],
                                  tool_choice={"type": "any"})
        if stream:
            async with client.messages.stream(**kw) as s:
                message = await s.get_final_message()
        else:
            message = await client.messages.create(**kw)
    finally:
        await client.close()
    assert message.stop_reason == "tool_use"
    assert [(b.type, b.id, b.name, b.input) for b in message.content] == [
        ("tool_use", "chatcmpl-tool-paris", "get_weather", {"city": "Paris"}),
        ("tool_use", "chatcmpl-tool-rome", "get_weather", {"city": "Rome"})]
    sent = engine(gw, SMALL_ENGINE).last_request
    assert sent.tool_choice == "required" and [t.function.name for t in sent.tools] == ["get_weather"]
    assert sent.tools[0].function.parameters == WEATHER_PARAMS


async def test_messages_tool_use_on_a_gated_route_escalates(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    client = anthropic_client(gw.app)
    try:
        async with client.messages.stream(model=AGENT, max_tokens=64, messages=HELLO, tools=[SDK_WEATHER]) as s:
            message = await s.get_final_message()
    finally:
        await client.close()
    assert [(b.type, b.input) for b in message.content] == [("tool_use", {"city": "Paris"})]


async def test_messages_tool_result_history_reaches_the_engine_as_tool_messages(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=weather_unless_answered))
    client = anthropic_client(gw.app)
    try:
        first = await client.messages.create(model=GROUP, max_tokens=64, messages=HELLO, tools=[SDK_WEATHER])
        (use,) = first.content
        assert use.type == "tool_use"
        history: list[Any] = [*HELLO, {"role": "assistant", "content": first.content}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "18C, sunny"},
            {"type": "text", "text": "Answer briefly."}]}]
        second = await client.messages.create(model=GROUP, max_tokens=64, messages=history, tools=[SDK_WEATHER])
    finally:
        await client.close()
    assert second.stop_reason == "end_turn" and second.content[0].type == "text"
    assert second.content[0].text == DEFAULT_REPLY
    sent = engine(gw, SMALL_ENGINE).last_request.messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "user"]
    (call,) = sent[1]["tool_calls"]
    assert call["id"] == use.id and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2]["tool_call_id"] == use.id and sent[2]["content"] == "18C, sunny"
    assert sent[3]["content"] == "Answer briefly."


async def test_messages_errors_are_in_anthropic_shape(gw: Gateway, claude: anthropic.AsyncAnthropic):
    with pytest.raises(anthropic.NotFoundError) as info:
        await claude.messages.create(model="nope", max_tokens=16, messages=HELLO)
    assert info.value.type == "not_found_error" and "nope" in info.value.api_message
    resp = await gw.http.post("/v1/messages", json={"model": "nope", "max_tokens": 16, "messages": HELLO})
    anthropic_error(resp, 404, "not_found_error")
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "messages": HELLO})
    assert "max_tokens" in anthropic_error(resp, 400, "invalid_request_error")
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "max_tokens": 16, "messages": HELLO,
                                                    "tools": [{"name": "f", "input_schema": {"type": "objekt"}}]})
    assert "tools.0.input_schema" in anthropic_error(resp, 400, "invalid_request_error")
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "max_tokens": 16, "messages": HELLO,
                                                    "tools": [{"name": "f", "input_schema": {"$schema": 5}}]})
    assert "tools.0.input_schema" in anthropic_error(resp, 400, "invalid_request_error")
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "max_tokens": 16, "messages": HELLO,
                                                    "tools": [SDK_WEATHER],
                                                    "tool_choice": {"type": "tool", "name": "nope"}})
    assert "tool_choice.name" in anthropic_error(resp, 400, "invalid_request_error")
    assert not engine(gw, SMALL_ENGINE).calls


async def test_messages_stream_broken_by_the_engine_raises_in_the_sdk(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, fail_after=3))
    client = anthropic_client(gw.app)
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with client.messages.stream(model=GROUP, max_tokens=64, messages=HELLO) as s:
                await s.get_final_message()
    finally:
        await client.close()
    assert info.value.type == "api_error"
    samples = await scrape(gw.http)
    assert metric(samples, "serving_requests_total", endpoint="messages", status_code="502") == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_messages_engine_refusal_is_a_bad_request(make_gateway: Any, stream: bool):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, error=context_length_error(2048, 5000)))
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "max_tokens": 16, "messages": HELLO,
                                                    "stream": stream})
    assert "maximum context length" in anthropic_error(resp, 400, "invalid_request_error")


async def test_messages_engine_down_is_an_overloaded_error(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, unavailable=True))
    resp = await gw.http.post("/v1/messages", json={"model": GROUP, "max_tokens": 16, "messages": HELLO})
    anthropic_error(resp, 503, "overloaded_error")


async def test_messages_take_an_x_api_key_when_keys_are_on(env: Any):
    e = env(n=1)
    key = await e.a.new_key("acme")
    body = {"model": "tiny", "max_tokens": 16, "messages": HELLO}
    anthropic_error(await e.a.http.post("/v1/messages", json=body), 401, "authentication_error")
    anthropic_error(await e.a.http.post("/v1/messages", json=body, headers={"x-api-key": "sk-wrong"}), 401,
                    "authentication_error")
    client = anthropic_client(e.a.app, api_key=key)  # the SDK sends the key as x-api-key
    try:
        message = await client.messages.create(model="tiny", max_tokens=16, messages=HELLO)
    finally:
        await client.close()
    assert message.content[0].type == "text" and message.content[0].text == DEFAULT_REPLY
    assert e.small.last_request.messages == [{"role": "user", "content": HELLO[0]["content"]}]


# ----------------------------------------------------------------------------------------- /v1/responses


@pytest.fixture
async def with_redis(redis_server: RedisServer) -> AsyncIterator[Any]:
    """`apply(gw, **policies)`: give a gateway policies over the (flushed) test Redis: auth off, so the tenant is
    the tenant header, no runaway protection or audit unless asked; the store is closed afterwards."""
    redis_server.flush()
    applied = []

    def apply(gw: Gateway, **policies: Any) -> Gateway:
        gateway = gw.app.state.gateway
        gateway.update_policies(PoliciesConfig.model_validate({
            "auth": {"enabled": False}, "redis": {"url": redis_server.url, "timeout_s": 1.0},
            "anomaly": {"enabled": False}, "audit": {"enabled": False}, **policies}))
        applied.append(gateway)
        return gw

    yield apply
    for gateway in applied:
        await gateway.policy.drain()
        if gateway.policy.store is not None:
            await gateway.policy.store.close()


@pytest.fixture
def stored(make_gateway: Any, with_redis: Any) -> Gateway:
    """The agents gateway with a response store (its small engine calls get_weather when it is declared)."""
    return with_redis(agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=weather_unless_answered)))


RESPONSES_WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
                     "parameters": WEATHER_PARAMS}


def tenant(name: str) -> dict[str, dict[str, str]]:
    return {"extra_headers": {"x-serving-tenant": name}}


async def test_responses_create_text(stored: Gateway):
    resp = await stored.sdk.responses.create(model=GROUP, input="What is the capital of France?",
                                             instructions="Be terse.")
    assert resp.id.startswith("resp_") and resp.status == "completed" and resp.model == GROUP
    assert resp.output_text == DEFAULT_REPLY
    assert resp.store is True and resp.instructions == "Be terse."
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (
        PROMPT_TOKENS, REPLY_TOKENS)
    assert engine(stored, SMALL_ENGINE).last_request.messages == [
        {"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is the capital of France?"}]


async def test_responses_stream_true_yields_typed_events(stored: Gateway):
    stream = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", stream=True)
    events = [event async for event in stream]
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == DEFAULT_REPLY
    assert [e.sequence_number for e in events] == list(range(len(events)))
    completed = events[-1].response
    assert completed.output_text == DEFAULT_REPLY and completed.usage.output_tokens == REPLY_TOKENS
    again = await stored.sdk.responses.retrieve(completed.id)  # stored before response.completed was sent
    assert again.output_text == DEFAULT_REPLY


async def test_responses_stream_helper_final_response(stored: Gateway):
    async with stored.sdk.responses.stream(model=GROUP, input="Capital of France?") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == DEFAULT_REPLY and final.output_text == DEFAULT_REPLY
    assert final.status == "completed"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_responses_function_tools_answer_function_call_items(stored: Gateway, stream: bool):
    kw: dict[str, Any] = dict(model=GROUP, input="Weather in Paris?", tools=[RESPONSES_WEATHER])
    if stream:
        async with stored.sdk.responses.stream(**kw) as s:
            args = [e.delta async for e in s if e.type == "response.function_call_arguments.delta"]
            resp = await s.get_final_response()
        assert json.loads("".join(args)) == {"city": "Paris"}
    else:
        resp = await stored.sdk.responses.create(**kw)
    (item,) = resp.output
    assert item.type == "function_call" and item.status == "completed"
    assert (item.call_id, item.name) == ("chatcmpl-tool-paris", "get_weather")
    assert json.loads(item.arguments) == {"city": "Paris"}
    sent = engine(stored, SMALL_ENGINE).last_request
    assert [t.function.name for t in sent.tools] == ["get_weather"]


async def test_responses_stream_two_parallel_calls_as_two_items(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[PARIS, ROME]))
    async with gw.sdk.responses.stream(model=GROUP, input="Paris and Rome?", tools=[RESPONSES_WEATHER]) as s:
        added = [e.item.type async for e in s if e.type == "response.output_item.added"]
        final = await s.get_final_response()
    assert added == ["function_call", "function_call"]
    assert [(i.call_id, json.loads(i.arguments)) for i in final.output] == [
        ("chatcmpl-tool-paris", {"city": "Paris"}), ("chatcmpl-tool-rome", {"city": "Rome"})]


async def test_a_responses_stream_broken_by_the_engine_fails_and_is_not_stored(stored: Gateway):
    engine(stored, SMALL_ENGINE).fail_after = 3
    stream = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", stream=True)
    events = [e async for e in stream]
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "server_error"
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.retrieve(failed.id)
    samples = await scrape(stored.http)
    assert metric(samples, "serving_requests_total", endpoint="responses", status_code="502") == 1


async def test_the_sdk_agent_loop_without_a_store_sends_the_output_back(make_gateway: Any):
    """Without `previous_response_id`, an agent sends the output items back with the function call's output."""
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=weather_unless_answered))
    first = await gw.sdk.responses.create(model=GROUP, input="Weather in Paris?", tools=[RESPONSES_WEATHER])
    (call,) = first.output
    items: list[Any] = [{"role": "user", "content": "Weather in Paris?"}, *first.output,
                        {"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}]
    second = await gw.sdk.responses.create(model=GROUP, input=items, tools=[RESPONSES_WEATHER])
    assert second.output_text == DEFAULT_REPLY
    sent = engine(gw, SMALL_ENGINE).last_request.messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == sent[2]["tool_call_id"] == call.call_id


async def test_responses_cut_by_max_output_tokens_are_incomplete(stored: Gateway):
    resp = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", max_output_tokens=3)
    assert resp.status == "incomplete" and resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.output_text == "".join(tokenize(DEFAULT_REPLY)[:3]) and resp.usage.output_tokens == 3
    assert engine(stored, SMALL_ENGINE).last_request.max_tokens == 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_responses_engine_refusal_is_a_bad_request(make_gateway: Any, stream: bool):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, error=context_length_error(2048, 5000)))
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.responses.create(model=GROUP, input="Capital of France?", stream=stream)
    assert info.value.code == "context_length_exceeded"


async def test_previous_response_id_sends_the_earlier_turns(stored: Gateway):
    first = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", instructions="Be terse.")
    second = await stored.sdk.responses.create(model=GROUP, input="And of Italy?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.output_text == DEFAULT_REPLY
    assert engine(stored, SMALL_ENGINE).last_request.messages == [  # instructions are not carried over
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": DEFAULT_REPLY},
        {"role": "user", "content": "And of Italy?"}]
    third = await stored.sdk.responses.create(model=GROUP, input="And Spain?", previous_response_id=second.id)
    assert [m["content"] for m in engine(stored, SMALL_ENGINE).last_request.messages] == [
        "Capital of France?", DEFAULT_REPLY, "And of Italy?", DEFAULT_REPLY, "And Spain?"]
    assert third.status == "completed"


async def test_previous_response_id_continues_a_function_call(stored: Gateway):
    first = await stored.sdk.responses.create(model=GROUP, input="Weather in Paris?", tools=[RESPONSES_WEATHER])
    (call,) = first.output
    assert call.type == "function_call"
    second = await stored.sdk.responses.create(
        model=GROUP, previous_response_id=first.id, tools=[RESPONSES_WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C, sunny"}])
    assert second.output_text == DEFAULT_REPLY
    sent = engine(stored, SMALL_ENGINE).last_request.messages
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
    assert sent[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": call.arguments}
    assert sent[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18C, sunny"}


async def test_a_stored_response_is_retrieved_then_deleted(stored: Gateway):
    created = await stored.sdk.responses.create(model=GROUP, input="Capital of France?")
    got = await stored.sdk.responses.retrieve(created.id)
    assert got.id == created.id and got.output_text == DEFAULT_REPLY and got.status == "completed"
    resp = await stored.http.delete(f"/v1/responses/{created.id}")
    assert resp.status_code == 200 and resp.json() == {"id": created.id, "object": "response.deleted",
                                                       "deleted": True}
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.retrieve(created.id)
    assert_error(await stored.http.delete(f"/v1/responses/{created.id}"), 404)
    err = assert_error(await stored.http.post("/v1/responses", json={
        "model": GROUP, "input": "More?", "previous_response_id": created.id}), 404,
        param="previous_response_id", code="previous_response_not_found")
    assert created.id in err["message"]


async def test_store_false_is_not_stored(stored: Gateway):
    created = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.retrieve(created.id)


async def test_a_tenant_cannot_reach_another_tenants_responses(stored: Gateway):
    mine = await stored.sdk.responses.create(model=GROUP, input="Capital of France?", **tenant("acme"))
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.retrieve(mine.id, **tenant("beta"))
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.retrieve(mine.id)  # no header: the `default` tenant
    with pytest.raises(openai.NotFoundError):
        await stored.sdk.responses.delete(mine.id, **tenant("beta"))
    with pytest.raises(openai.NotFoundError) as info:
        await stored.sdk.responses.create(model=GROUP, input="More?", previous_response_id=mine.id,
                                          **tenant("beta"))
    assert info.value.code == "previous_response_not_found"
    assert len(engine(stored, SMALL_ENGINE).calls) == 1  # beta's continuation never reached the engine
    got = await stored.sdk.responses.retrieve(mine.id, **tenant("acme"))  # still there for its owner
    assert got.output_text == DEFAULT_REPLY
    follow = await stored.sdk.responses.create(model=GROUP, input="More?", previous_response_id=mine.id,
                                               **tenant("acme"))
    assert follow.status == "completed"


async def test_responses_without_a_store(gw: Gateway):
    created = await gw.sdk.responses.create(model=GROUP, input="Capital of France?")
    assert created.output_text == DEFAULT_REPLY and created.store is False
    resp = await gw.http.post("/v1/responses", json={"model": GROUP, "input": "More?",
                                                     "previous_response_id": created.id})
    assert_error(resp, 400, param="previous_response_id", code="store_not_configured")
    assert_error(await gw.http.get(f"/v1/responses/{created.id}"), 400, code="store_not_configured")
    assert_error(await gw.http.delete(f"/v1/responses/{created.id}"), 400, code="store_not_configured")
    with pytest.raises(openai.BadRequestError):
        await gw.sdk.responses.retrieve(created.id)
    assert len(engine(gw, SMALL_ENGINE).calls) == 1


async def test_responses_bad_tools_are_a_400(stored: Gateway):
    bad = {**RESPONSES_WEATHER, "parameters": {"type": "objekt"}}
    resp = await stored.http.post("/v1/responses", json={"model": GROUP, "input": "x", "tools": [bad]})
    assert_error(resp, 400, param="tools[0].parameters", code="invalid_schema")
    resp = await stored.http.post("/v1/responses", json={"model": GROUP, "input": "x", "tools": [RESPONSES_WEATHER],
                                                         "tool_choice": {"type": "function", "name": "nope"}})
    assert_error(resp, 400, param="tool_choice", code="invalid_value")
    assert not engine(stored, SMALL_ENGINE).calls


async def test_responses_on_a_gated_route_escalate_a_bad_call(make_gateway: Any):
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=[BAD_ARGS]),
                        big=FakeEngine(BIG_ENGINE, tool_calls=[PARIS]))
    resp = await gw.sdk.responses.create(model=AGENT, input="Weather in Paris?", tools=[RESPONSES_WEATHER])
    (item,) = resp.output
    assert item.type == "function_call" and json.loads(item.arguments) == {"city": "Paris"}
    assert resp.model_extra is not None and resp.model_extra["serving"]["tier"] == "big"


async def test_with_keys_on_the_tenant_is_the_keys_not_the_header(env: Any):
    e = env(n=1)
    acme, beta = await e.a.new_key("acme"), await e.a.new_key("beta")
    as_acme = {"authorization": f"Bearer {acme}"}
    created = await e.a.http.post("/v1/responses", json={"model": "tiny", "input": "Hello"}, headers=as_acme)
    assert created.status_code == 200, created.text
    rid = created.json()["id"]
    assert (await e.a.http.get(f"/v1/responses/{rid}", headers=as_acme)).status_code == 200
    spoofed = {"authorization": f"Bearer {beta}", "x-serving-tenant": "acme"}  # beta claiming to be acme
    assert_error(await e.a.http.get(f"/v1/responses/{rid}", headers=spoofed), 404)
    assert_error(await e.a.http.delete(f"/v1/responses/{rid}", headers={"x-api-key": beta}), 404)
    assert_error(await e.a.http.get(f"/v1/responses/{rid}"), 401, code="missing_api_key")
    resp = await e.a.http.post("/v1/responses", json={"model": "tiny", "input": "More", "previous_response_id": rid},
                               headers=spoofed)
    assert_error(resp, 404, param="previous_response_id")
    deleted = await e.a.http.delete(f"/v1/responses/{rid}", headers={"x-api-key": acme})
    assert deleted.status_code == 200 and deleted.json()["deleted"] is True


# ------------------------------------------------------------------------------------- the response cache


@pytest.fixture
def cached(make_gateway: Any, with_redis: Any) -> Gateway:
    """The agents gateway with the exact-match response cache on (and the response store)."""
    gw = agents_gateway(make_gateway, small=FakeEngine(SMALL_ENGINE, tool_calls=weather_unless_answered))
    return with_redis(gw, cache={"enabled": True})


async def test_a_cached_tool_call_is_replayed_to_a_streaming_client(cached: Gateway):
    first = await chat(cached, GROUP, tools=[WEATHER], temperature=0)
    assert first.headers["x-serving-cache"] == "miss"
    await cached.app.state.gateway.policy.drain()
    async with cached.sdk.chat.completions.with_streaming_response.create(
            model=GROUP, messages=MESSAGES, tools=[WEATHER], temperature=0, stream=True) as raw:
        assert raw.headers["x-serving-cache"] == "hit"
    async with cached.sdk.chat.completions.stream(model=GROUP, messages=MESSAGES, tools=[WEATHER],
                                                  temperature=0) as stream:
        final = await stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.id == "chatcmpl-tool-paris" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert len(engine(cached, SMALL_ENGINE).calls) == 1


async def test_a_cached_messages_answer_is_an_anthropic_message(cached: Gateway):
    body = {"model": GROUP, "max_tokens": 64, "messages": HELLO, "temperature": 0}
    first = await cached.http.post("/v1/messages", json=body)
    await cached.app.state.gateway.policy.drain()
    second = await cached.http.post("/v1/messages", json=body)
    assert (first.headers["x-serving-cache"], second.headers["x-serving-cache"]) == ("miss", "hit")
    a, b = (anthropic.types.Message.model_validate(r.json()) for r in (first, second))
    assert b.content == a.content and b.stop_reason == "end_turn" and b.model == GROUP
    client = anthropic_client(cached.app)
    try:
        async with client.messages.stream(model=GROUP, max_tokens=64, messages=HELLO,
                                          extra_body={"temperature": 0}) as s:
            streamed = await s.get_final_message()
    finally:
        await client.close()
    assert [(c.type, c.text) for c in streamed.content] == [("text", DEFAULT_REPLY)]
    assert len(engine(cached, SMALL_ENGINE).calls) == 1


async def test_a_cached_response_is_a_new_stored_response(cached: Gateway):
    first = await cached.sdk.responses.create(model=GROUP, input="Capital of France?", temperature=0)
    await cached.app.state.gateway.policy.drain()
    second = await cached.sdk.responses.create(model=GROUP, input="Capital of France?", temperature=0)
    assert second.id != first.id and second.output_text == first.output_text == DEFAULT_REPLY
    assert len(engine(cached, SMALL_ENGINE).calls) == 1
    assert (await cached.sdk.responses.retrieve(second.id)).output_text == DEFAULT_REPLY
    follow = await cached.sdk.responses.create(model=GROUP, input="And Italy?", previous_response_id=second.id,
                                               temperature=0)
    assert follow.status == "completed"
    assert [m["content"] for m in engine(cached, SMALL_ENGINE).last_request.messages] == [
        "Capital of France?", DEFAULT_REPLY, "And Italy?"]


async def test_embeddings_with_the_cache_on(cached: Gateway):
    for _ in range(2):
        resp = await cached.http.post("/v1/embeddings", json={"model": EMBED, "input": "hello"})
        assert resp.status_code == 200
        await cached.app.state.gateway.policy.drain()
    assert len(engine(cached, EMBED_ENGINE).calls) == 2  # embeddings are not cached (no temperature or seed)


# ------------------------------------------------------------------------------------------------- limits


async def test_embedding_tokens_count_against_the_tenants_token_limit(make_gateway: Any, with_redis: Any):
    gw = with_redis(agents_gateway(make_gateway), limits={"tokens_per_minute": 100})
    acme = {"x-serving-tenant": "acme"}
    first = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": ["x"] * 300}, headers=acme)
    assert first.status_code == 200 and first.json()["usage"]["prompt_tokens"] == 300
    await gw.app.state.gateway.policy.drain()  # usage is settled in the background
    assert_error(await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x"}, headers=acme), 429)
    other = await gw.http.post("/v1/embeddings", json={"model": EMBED, "input": "x"},
                               headers={"x-serving-tenant": "beta"})
    assert other.status_code == 200

"""The gateway's OpenAI API, tested through HTTP (httpx + ASGI) and the official `openai` SDK.

Engines are `tests.support.fakes.FakeEngine`s answering in vLLM's wire format; no Ray cluster, no vLLM engine.
"""

from __future__ import annotations

import asyncio
import json
import pickle
from collections import Counter
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, model_validator

from serving.api import protocol
from serving.api.errors import APIError
from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig
from serving.routing.groups import GroupRouter
from tests.support.fakes import DEFAULT_REPLY, FakeEngine, context_length_error, tokenize

GROUP = "smollm2-135m-instruct"
ENGINE = "smollm2-135m"
REPLY_TOKENS = len(tokenize(DEFAULT_REPLY))
PROMPT_TOKENS = 11  # FakeEngine's default usage.prompt_tokens
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
CHAT = {"model": GROUP, "messages": MESSAGES}
COMPLETION = {"model": GROUP, "prompt": "The capital of France is"}


def group(*members: str | dict[str, Any]) -> ModelGroupConfig:
    return ModelGroupConfig.model_validate({"engines": list(members)})


class Gateway:
    """One gateway app over fake engines, with an httpx client and an openai SDK client on it."""

    def __init__(self, *engines: FakeEngine, groups: dict[str, ModelGroupConfig] | None = None, **settings: Any):
        self.engines = {e.name: e for e in engines}
        self.router = GroupRouter(self.engines, groups or {GROUP: group(engines[0].name)})
        self.app = build_api(self.router, GatewayConfig(**settings))
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")
        self.sdk = openai.AsyncOpenAI(
            base_url="http://test/v1", api_key="x", max_retries=0,
            http_client=httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test"),
        )

    async def close(self) -> None:
        await self.http.aclose()
        await self.sdk.close()

    async def chat(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json={**CHAT, **body})

    async def complete(self, **body: Any) -> httpx.Response:
        return await self.http.post("/v1/completions", json={**COMPLETION, **body})

    async def metrics(self) -> dict[str, list[Any]]:
        resp = await self.http.get("/metrics")
        assert resp.status_code == 200
        samples: dict[str, list[Any]] = {}
        for family in text_string_to_metric_families(resp.text):
            for s in family.samples:
                samples.setdefault(s.name, []).append(s)
        return samples


@pytest.fixture
async def make_gateway():
    made: list[Gateway] = []

    def make(*engines: FakeEngine, **kwargs: Any) -> Gateway:
        gw = Gateway(*engines, **kwargs)
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.close()


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(ENGINE)


@pytest.fixture
def gw(make_gateway, engine) -> Gateway:
    return make_gateway(engine)


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


def sse_events(resp: httpx.Response) -> list[str]:
    """The `data:` payloads of an SSE response, checking the framing on the way."""
    assert resp.headers["content-type"].startswith("text/event-stream")
    text = resp.text
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        events.append(block[len("data: "):])
    return events


def chunks(events: list[str]) -> list[dict[str, Any]]:
    assert events[-1] == "[DONE]"
    assert "[DONE]" not in events[:-1]
    return [json.loads(e) for e in events[:-1]]


def assert_error(resp: httpx.Response, status: int, *, code: str | None = None, param: str | None = None,
                 type: str | None = None) -> dict[str, Any]:
    """`resp` is an OpenAI error envelope with this status; returns `error`."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("x-request-id")
    assert "Traceback" not in resp.text
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    if code is not None:
        assert err["code"] == code
    if param is not None:
        assert err["param"] == param
    if type is not None:
        assert err["type"] == type
    return err


# -- the test double speaks vLLM's wire format -----------------------------------------------------------------


async def test_fake_engine_stream_has_vllms_shape():
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    req = ChatCompletionRequest(model=ENGINE, messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    items = [item async for item in FakeEngine(ENGINE).generate("chat", req)]
    assert all(isinstance(i, str) and i.startswith("data: ") and i.endswith("\n\n") for i in items)
    assert items[-1] == "data: [DONE]\n\n"
    usage = items[-2]
    assert usage.startswith('data: {"id":"chatcmpl-') and '"choices":[]' in usage and '"usage":{' in usage
    first = json.loads(items[0][6:])
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(items) == 1 + REPLY_TOKENS + 1 + 1 + 1  # role, tokens, finish, usage, [DONE]


# -- answers ------------------------------------------------------------------------------------------------


async def test_chat_non_streamed(gw: Gateway):
    resp = await gw.chat()
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers["x-serving-model"] == ENGINE
    body = resp.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice["message"] == {**choice["message"], "role": "assistant", "content": DEFAULT_REPLY}
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert body["usage"]["completion_tokens"] == REPLY_TOKENS
    assert body["usage"]["total_tokens"] == PROMPT_TOKENS + REPLY_TOKENS


async def test_completion_non_streamed(gw: Gateway):
    resp = await gw.complete(max_tokens=3)
    assert resp.status_code == 200
    assert resp.headers["x-serving-model"] == ENGINE
    body = resp.json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == "".join(tokenize(DEFAULT_REPLY)[:3])
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {**body["usage"], "prompt_tokens": PROMPT_TOKENS, "completion_tokens": 3,
                             "total_tokens": PROMPT_TOKENS + 3}


async def test_chat_streamed_without_usage(gw: Gateway):
    resp = await gw.chat(stream=True)
    assert resp.status_code == 200
    assert resp.headers["x-serving-model"] == ENGINE
    assert resp.headers["cache-control"] == "no-cache"
    data = chunks(sse_events(resp))
    assert all(c["object"] == "chat.completion.chunk" for c in data)
    assert len({c["id"] for c in data}) == 1
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in data) == DEFAULT_REPLY
    assert [c["choices"][0]["finish_reason"] for c in data if c["choices"][0]["finish_reason"]] == ["stop"]
    # the client did not ask for usage: no usage chunk (the gateway asked the engine for it, for metrics)
    assert all(c["choices"] and c.get("usage") is None for c in data)
    assert "usage" not in resp.text


async def test_chat_streamed_with_usage(gw: Gateway):
    resp = await gw.chat(stream=True, stream_options={"include_usage": True})
    data = chunks(sse_events(resp))
    usage_chunks = [c for c in data if c.get("usage")]
    assert len(usage_chunks) == 1
    assert usage_chunks[0] is data[-1]  # the last chunk before [DONE]
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"] == {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": REPLY_TOKENS,
                                        "total_tokens": PROMPT_TOKENS + REPLY_TOKENS}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in data[:-1]) == DEFAULT_REPLY


async def test_streamed_with_include_usage_false(gw: Gateway):
    data = chunks(sse_events(await gw.chat(stream=True, stream_options={"include_usage": False})))
    assert not [c for c in data if c.get("usage")]


async def test_completion_streamed(gw: Gateway):
    data = chunks(sse_events(await gw.complete(stream=True)))
    assert all(c["object"] == "text_completion" for c in data)
    assert "".join(c["choices"][0]["text"] for c in data) == DEFAULT_REPLY
    assert data[-1]["choices"][0]["finish_reason"] == "stop"
    assert not [c for c in data if c.get("usage")]

    data = chunks(sse_events(await gw.complete(stream=True, stream_options={"include_usage": True})))
    usage_chunks = [c for c in data if c.get("usage")]
    assert len(usage_chunks) == 1 and usage_chunks[0] is data[-1]
    assert usage_chunks[0]["choices"] == []
    assert usage_chunks[0]["usage"]["completion_tokens"] == REPLY_TOKENS


async def test_sampling_parameters_reach_the_engine(gw: Gateway, engine: FakeEngine):
    resp = await gw.chat(
        temperature=0.2, top_p=0.9, max_tokens=4, stop=["\n", "###"], seed=42, n=2, logprobs=True,
        top_logprobs=2, response_format={"type": "json_object"}, presence_penalty=0.5, frequency_penalty=0.25,
    )
    assert resp.status_code == 200
    assert len(resp.json()["choices"]) == 2
    req = engine.last_request
    assert req.model == ENGINE  # the group name is rewritten to the engine's served model id
    assert req.temperature == 0.2
    assert req.top_p == 0.9
    assert req.max_tokens == 4
    assert req.stop == ["\n", "###"]
    assert req.seed == 42
    assert req.n == 2
    assert req.logprobs is True
    assert req.top_logprobs == 2
    assert req.response_format.type == "json_object"
    assert req.presence_penalty == 0.5
    assert req.frequency_penalty == 0.25
    # A non-streamed request is streamed from the engine (progress timeouts) and answered as one JSON body.
    assert req.stream is True and req.stream_options.include_usage
    assert [m["content"] for m in req.messages] == [MESSAGES[0]["content"]]


async def test_completion_parameters_reach_the_engine(gw: Gateway, engine: FakeEngine):
    resp = await gw.complete(temperature=0.0, max_tokens=7, stop="\n", seed=7, logprobs=3, echo=False, stream=True)
    assert resp.status_code == 200
    req = engine.last_request
    assert engine.calls[-1].endpoint == "completions"
    assert (req.model, req.temperature, req.max_tokens, req.stop, req.seed, req.logprobs, req.stream) == (
        ENGINE, 0.0, 7, "\n", 7, 3, True)
    assert req.prompt == COMPLETION["prompt"]


# -- the openai SDK -----------------------------------------------------------------------------------------


async def test_openai_sdk_chat_and_completions(gw: Gateway):
    chat = await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, max_tokens=64)
    assert chat.choices[0].message.content == DEFAULT_REPLY
    assert chat.choices[0].finish_reason == "stop"
    assert chat.usage.completion_tokens == REPLY_TOKENS
    assert chat.model == ENGINE

    comp = await gw.sdk.completions.create(model=GROUP, prompt="Hello", max_tokens=2)
    assert comp.choices[0].text == "".join(tokenize(DEFAULT_REPLY)[:2])
    assert comp.usage.prompt_tokens == PROMPT_TOKENS

    raw = await gw.sdk.chat.completions.with_raw_response.create(model=GROUP, messages=MESSAGES)
    assert raw.headers["x-serving-model"] == ENGINE
    assert raw.headers["x-request-id"]


async def test_openai_sdk_streaming(gw: Gateway):
    stream = await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, stream=True)
    text, finish, usage = "", [], []
    async for chunk in stream:
        usage.append(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finish.append(choice.finish_reason)
    assert text == DEFAULT_REPLY
    assert finish == ["stop"]
    assert usage and all(u is None for u in usage)

    stream = await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, stream=True,
                                                  stream_options={"include_usage": True})
    got = [chunk async for chunk in stream]
    assert got[-1].choices == []
    assert got[-1].usage.total_tokens == PROMPT_TOKENS + REPLY_TOKENS
    assert sum(1 for c in got if c.usage is not None) == 1

    stream = await gw.sdk.completions.create(model=GROUP, prompt="Hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == DEFAULT_REPLY


async def test_openai_sdk_errors(make_gateway, engine: FakeEngine):
    gw = make_gateway(engine)
    with pytest.raises(openai.NotFoundError) as info:
        await gw.sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, temperature=5)
    assert info.value.param == "temperature"

    engine.error = context_length_error()
    with pytest.raises(openai.BadRequestError) as info:
        await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES)
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length is 2048 tokens" in info.value.message


async def test_openai_sdk_mid_stream_failure_raises(make_gateway):
    gw = make_gateway(FakeEngine(ENGINE, fail_after=3))
    stream = await gw.sdk.chat.completions.create(model=GROUP, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    assert info.value.code == "engine_error"


async def test_openai_sdk_lists_models(make_gateway):
    gw = make_gateway(FakeEngine("a"), FakeEngine("b"), groups={"alpha": group("a"), "beta": group("b")})
    assert sorted([m.id async for m in gw.sdk.models.list()]) == ["alpha", "beta"]
    assert (await gw.sdk.models.retrieve("beta")).id == "beta"


# -- request ids --------------------------------------------------------------------------------------------


async def test_request_id_generated_and_echoed(gw: Gateway):
    first, second = await gw.chat(), await gw.chat()
    assert first.headers["x-request-id"] and second.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]

    resp = await gw.http.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-id-123"})
    assert resp.headers["x-request-id"] == "client-id-123"
    assert resp.headers.get_list("x-request-id") == ["client-id-123"]

    resp = await gw.http.post("/v1/chat/completions", json={**CHAT, "stream": True},
                              headers={"X-Request-ID": "stream-id"})
    assert resp.headers["x-request-id"] == "stream-id"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/chat/completions", b"{not json"),
    ("POST", "/v1/chat/completions", json.dumps({"model": "nope", "messages": MESSAGES}).encode()),
    ("GET", "/v1/chat/completions", None),
    ("GET", "/v1/nothing-here", None),
    ("GET", "/v1/models/nope", None),
    ("GET", "/health", None),
    ("GET", "/metrics", None),
])
async def test_request_id_on_every_response(gw: Gateway, method: str, path: str, body: bytes | None):
    resp = await gw.http.request(method, path, content=body, headers={"x-request-id": "rid-1"})
    assert resp.headers["x-request-id"] == "rid-1"
    resp = await gw.http.request(method, path, content=body)
    assert len(resp.headers["x-request-id"]) >= 16


async def test_no_request_id_header_behind_a_proxy_that_sets_it(engine: FakeEngine):
    # Inside Ray Serve the proxy sets x-request-id; the app must not add a second one.
    app = build_api(GroupRouter({ENGINE: engine}, {GROUP: group(ENGINE)}), GatewayConfig(), add_request_id=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        ok = await http.post("/v1/chat/completions", json=CHAT)
        missing = await http.get("/nope")
    assert ok.status_code == 200 and "x-request-id" not in ok.headers
    assert missing.status_code == 404 and "x-request-id" not in missing.headers


# -- client errors ------------------------------------------------------------------------------------------


def _chat(**over: Any) -> dict[str, Any]:
    body = {**CHAT, **over}
    return {k: v for k, v in body.items() if v is not ...}


@pytest.mark.parametrize(("body", "param"), [
    pytest.param(_chat(model=...), "model", id="missing-model"),
    pytest.param(_chat(model=""), "model", id="empty-model"),
    pytest.param(_chat(model=7), "model", id="model-not-string"),
    pytest.param(_chat(temperature="hot"), "temperature", id="temperature-string"),
    pytest.param(_chat(temperature=2.5), "temperature", id="temperature-too-high"),
    pytest.param(_chat(temperature=-0.1), "temperature", id="temperature-negative"),
    pytest.param(_chat(top_p=0), "top_p", id="top_p-zero"),
    pytest.param(_chat(top_p=1.5), "top_p", id="top_p-too-high"),
    pytest.param(_chat(max_tokens=0), "max_tokens", id="max_tokens-zero"),
    pytest.param(_chat(max_tokens=-5), "max_tokens", id="max_tokens-negative"),
    pytest.param(_chat(max_tokens="ten"), "max_tokens", id="max_tokens-string"),
    pytest.param(_chat(max_tokens=True), "max_tokens", id="max_tokens-bool"),
    pytest.param(_chat(n=0), "n", id="n-zero"),
    pytest.param(_chat(presence_penalty=3), "presence_penalty", id="presence_penalty"),
    pytest.param(_chat(stop=5), "stop", id="stop-int"),
    pytest.param(_chat(stream="yes"), "stream", id="stream-string"),
    pytest.param(_chat(stream_options={"include_usage": True}), "stream_options", id="stream_options-no-stream"),
    pytest.param(_chat(stream=True, stream_options="yes"), "stream_options", id="stream_options-not-object"),
    pytest.param(_chat(messages=...), "messages", id="missing-messages"),
    pytest.param(_chat(messages=[]), "messages", id="empty-messages"),
    pytest.param(_chat(messages="hi"), "messages", id="messages-string"),
    pytest.param(_chat(messages=["hi"]), "messages.[0]", id="message-not-object"),
    pytest.param(_chat(messages=[{"role": "robot", "content": "hi"}]), "messages.[0].role", id="bad-role"),
    pytest.param(_chat(messages=[{"content": "hi"}]), "messages.[0].role", id="missing-role"),
    pytest.param(_chat(top_logprobs=2), "top_logprobs", id="top_logprobs-without-logprobs"),
])
async def test_chat_invalid_request_is_400(gw: Gateway, engine: FakeEngine, body: dict[str, Any], param: str):
    resp = await gw.http.post("/v1/chat/completions", json=body)
    assert_error(resp, 400, param=param, type="invalid_request_error")
    assert engine.calls == []  # rejected before any engine work


@pytest.mark.parametrize(("body", "param"), [
    pytest.param({"model": GROUP}, "prompt", id="missing-prompt"),
    pytest.param({**COMPLETION, "prompt": ""}, "prompt", id="empty-prompt"),
    pytest.param({**COMPLETION, "prompt": []}, "prompt", id="empty-prompt-list"),
    pytest.param({**COMPLETION, "logprobs": 50}, "logprobs", id="logprobs-too-high"),
    pytest.param({**COMPLETION, "max_tokens": 0}, "max_tokens", id="max_tokens-zero"),
    pytest.param({**COMPLETION, "temperature": "hot"}, "temperature", id="temperature-string"),
])
async def test_completion_invalid_request_is_400(gw: Gateway, engine: FakeEngine, body: dict[str, Any], param: str):
    resp = await gw.http.post("/v1/completions", json=body)
    assert_error(resp, 400, param=param, type="invalid_request_error")
    assert engine.calls == []


@pytest.mark.parametrize("raw", [b"", b"{", b"{'model': 'x'}", b"\xff\xfe", b"[1, 2]", b'"a string"', b"null", b"42"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_body_not_a_json_object_is_400(gw: Gateway, engine: FakeEngine, raw: bytes, path: str):
    resp = await gw.http.post(path, content=raw, headers={"content-type": "application/json"})
    err = assert_error(resp, 400, type="invalid_request_error")
    assert "json" in err["message"].lower() or "empty" in err["message"].lower()
    assert engine.calls == []


async def test_unknown_model_is_404(gw: Gateway, engine: FakeEngine):
    for resp in (await gw.chat(model="gpt-4"), await gw.complete(model="gpt-4"), await gw.chat(model=ENGINE)):
        err = assert_error(resp, 404, code="model_not_found", param="model")
        assert "does not exist" in err["message"]
    assert engine.calls == []


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/nothing"), ("POST", "/v1/audio/speech"), ("GET", "/"), ("POST", "/v2/chat/completions"),
])
async def test_unknown_path_is_404_envelope(gw: Gateway, method: str, path: str):
    assert_error(await gw.http.request(method, path, json={}), 404)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/chat/completions"), ("PUT", "/v1/completions"), ("DELETE", "/v1/models"), ("POST", "/health"),
])
async def test_wrong_method_is_405_envelope(gw: Gateway, method: str, path: str):
    assert_error(await gw.http.request(method, path), 405)


async def test_body_too_large_is_413(make_gateway, engine: FakeEngine):
    gw = make_gateway(engine, max_body_bytes=1024)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    assert_error(await gw.http.post("/v1/chat/completions", json=big), 413)

    async def chunked():  # no content-length: the limit still holds
        data = json.dumps(big).encode()
        for i in range(0, len(data), 256):
            yield data[i:i + 256]

    assert_error(await gw.http.post("/v1/chat/completions", content=chunked()), 413)
    assert engine.calls == []
    small = await gw.chat()
    assert small.status_code == 200


# Found by fuzzing the gateway over its /openapi.json (tests/support/fuzz.py).


async def test_vllm_request_check_is_a_400_not_a_500(gw: Gateway, engine: FakeEngine):
    """vLLM's own checks raise `VLLMValidationError`, no longer a ValueError: it escaped as a 500."""
    err = assert_error(await gw.chat(tool_choice="auto"), 400, param="tool_choice", type="invalid_request_error")
    assert err["message"] == "When using `tool_choice`, `tools` must be set."
    assert engine.calls == []


@pytest.mark.parametrize("tools", [[{"type": "function"}], [{"type": "function", "function": {}}], ["f"], "f"])
async def test_malformed_tools_with_a_named_tool_choice_are_a_400(gw: Gateway, engine: FakeEngine, tools: Any):
    """vLLM's check of a named `tool_choice` reads `tools[i]["function"]["name"]` unchecked: a KeyError, a 500."""
    choice = {"type": "function", "function": {"name": "f"}}
    resp = await gw.chat(tools=tools, tool_choice=choice)
    err = assert_error(resp, 400, type="invalid_request_error")
    assert err["param"] in ("tools", "tools.[0].function")
    assert engine.calls == []


def test_a_vllm_validator_crashing_on_a_malformed_field_is_a_400():
    """Any other field a vLLM `before` validator reads unchecked: a 400 naming the error, not a 500."""

    class Strict(BaseModel):
        @model_validator(mode="before")
        @classmethod
        def _reads(cls, data: Any) -> Any:
            return data["tools"][0]["function"]

    with pytest.raises(APIError) as exc:
        protocol.validate_model(Strict, {"tools": []})
    assert exc.value.status == 400 and "IndexError" in exc.value.message


async def test_lazily_validated_message_content_reaches_the_engine_as_a_list(gw: Gateway, engine: FakeEngine):
    """vLLM validates the content of a tool message with `name: null` into a lazy `ValidatorIterator`, which cannot
    be pickled to the engine replica (the fake deep-copies the request): three failed calls, a 502."""
    parts = [{"type": "text", "text": "42"}]
    resp = await gw.chat(messages=[{"role": "tool", "tool_call_id": "c1", "name": None, "content": parts}])
    assert resp.status_code == 200, resp.text
    assert engine.last_request.messages[0]["content"] == parts
    pickle.dumps(engine.last_request)


async def test_integral_floats_are_integers(gw: Gateway, engine: FakeEngine):
    """JSON has one number type, and a JSON Schema integer may be written 2.0: like vLLM, the gateway takes it."""
    resp = await gw.complete(max_tokens=2.0, n=1.0)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 2
    assert engine.last_request.max_tokens == 2 and isinstance(engine.last_request.max_tokens, int)
    assert_error(await gw.complete(max_tokens=2.5), 400, param="max_tokens")


async def test_null_fields_take_their_defaults(gw: Gateway):
    """OpenAI's nullable fields: `n: null` on /v1/completions was a 400 (vLLM's `n` there is not nullable)."""
    nulls = dict.fromkeys(("n", "max_tokens", "stop", "temperature", "stream", "stream_options", "user"))
    assert (await gw.complete(**nulls)).status_code == 200
    assert (await gw.chat(**nulls)).status_code == 200


async def test_an_empty_prompt_in_a_batch_is_a_400(gw: Gateway):
    """vLLM's engine refuses an empty member of a prompt batch only when it runs it (found by fuzzing: a 502)."""
    assert_error(await gw.complete(prompt=["", "x"]), 400, param="prompt.[0]")
    assert_error(await gw.complete(prompt=[[1, 2], []]), 400, param="prompt.[1]")
    assert (await gw.complete(prompt=["a", "b"])).status_code == 200


async def test_token_ids_out_of_range_are_a_400(gw: Gateway):
    """Ids beyond any vocabulary (and beyond int64) crashed the engine (found by fuzzing: a 502)."""
    assert_error(await gw.complete(prompt=[1, 2**63 + 5]), 400, param="prompt")
    assert_error(await gw.complete(prompt=[[1, 2], [-1]]), 400, param="prompt")
    assert (await gw.complete(prompt=[[1, 2], [3.0]])).status_code == 200


# -- engine faults ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_unavailable_is_503(make_gateway, stream: bool):
    gw = make_gateway(FakeEngine(ENGINE, unavailable=True))
    resp = await gw.chat(stream=stream)
    assert_error(resp, 503, code="engine_unavailable")
    assert int(resp.headers["retry-after"]) >= 1


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize("stream", [False, True])
async def test_context_length_exceeded_is_400(make_gateway, endpoint: str, stream: bool):
    gw = make_gateway(FakeEngine(ENGINE, error=context_length_error(2048, 5000)))
    resp = await (gw.chat(stream=stream) if endpoint == "chat" else gw.complete(stream=stream))
    err = assert_error(resp, 400, code="context_length_exceeded", type="invalid_request_error")
    assert "maximum context length is 2048 tokens" in err["message"]
    assert "5000" in err["message"]


async def test_engine_server_error_object_is_502_without_internals(make_gateway):
    from ray.serve.llm.openai_api_models import ErrorResponse

    boom = ErrorResponse(error={"message": "CUDA error: an illegal memory access at /src/kernel.cu:42",
                                "type": "InternalServerError", "code": 500})
    gw = make_gateway(FakeEngine(ENGINE, error=boom))
    err = assert_error(await gw.chat(), 502, code="engine_error")
    assert "CUDA" not in err["message"] and "kernel.cu" not in err["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_timeout_is_504_and_aborts_the_engine_request(make_gateway, stream: bool):
    engine = FakeEngine(ENGINE, hang=True)
    gw = make_gateway(engine, request_timeout_s=0.05)
    resp = await asyncio.wait_for(gw.chat(stream=stream), 5)
    assert_error(resp, 504, code="timeout")
    assert engine.started == engine.closed == 1  # the engine call was cancelled, not left running


async def test_mid_stream_failure_ends_with_error_event(make_gateway):
    engine = FakeEngine(ENGINE, fail_after=3)
    gw = make_gateway(engine)
    resp = await gw.chat(stream=True)
    assert resp.status_code == 200  # the status line had already been sent
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    data = [json.loads(e) for e in events[:-1]]
    assert [c["object"] for c in data[:3]] == ["chat.completion.chunk"] * 3
    assert len(data) == 4
    error = data[3]
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert error["error"]["code"] == "engine_error"
    assert "Traceback" not in resp.text
    assert engine.closed == 1

    samples = await gw.metrics()
    assert value(samples, "serving_requests_total", model_group=GROUP, status_code="502") == 1
    assert value(samples, "serving_requests_in_flight", model_group=GROUP) == 0


async def test_unexpected_engine_exception_is_an_envelope(make_gateway):
    engine = FakeEngine(ENGINE, crash=True)
    gw = make_gateway(engine)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, raise_app_exceptions=False),
                             base_url="http://test")
    async with http:
        resp = await http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code >= 500
    assert "Traceback" not in resp.text and "RuntimeError" not in resp.text
    assert set(resp.json()["error"]) == {"message", "type", "param", "code"}


async def test_unexpected_engine_exception_is_502_with_request_id(make_gateway):
    gw = make_gateway(FakeEngine(ENGINE, crash=True))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, raise_app_exceptions=False),
                             base_url="http://test")
    async with http:
        resp = await http.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "r1"})
    assert_error(resp, 502, code="engine_error")
    assert resp.headers["x-request-id"] == "r1"
    assert value(await gw.metrics(), "serving_requests_in_flight", model_group=GROUP) == 0


async def _stream_then_disconnect(app: Any, *, after_chunks: int) -> list[dict[str, Any]]:
    """Drive the ASGI app like a server whose client goes away after `after_chunks` body chunks."""
    body = json.dumps({**CHAT, "stream": True}).encode()
    gone = asyncio.Event()
    if after_chunks == 0:
        gone.set()
    sent: list[dict[str, Any]] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # a real server's send yields to the loop (socket / Ray Serve queue)
        sent.append(message)
        if sum(1 for m in sent if m["type"] == "http.response.body" and m.get("body")) >= after_chunks:
            gone.set()

    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1234), "server": ("test", 80),
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    }
    await asyncio.wait_for(app(scope, receive, send), 5)
    return sent


async def test_client_disconnect_aborts_the_engine_stream(make_gateway):
    engine = FakeEngine(ENGINE, reply=" ".join(["word"] * 500), token_delay_s=0.005)
    gw = make_gateway(engine)
    sent = await _stream_then_disconnect(gw.app, after_chunks=1)
    assert engine.started == engine.closed == 1
    body_chunks = [m for m in sent if m["type"] == "http.response.body" and m.get("body")]
    assert 1 <= len(body_chunks) < 100  # stopped long before the 500-token answer was generated
    assert value(await gw.metrics(), "serving_requests_in_flight", model_group=GROUP) == 0


async def test_client_disconnect_before_first_byte_releases_the_request(make_gateway):
    engine = FakeEngine(ENGINE, reply=" ".join(["word"] * 500), token_delay_s=0.005)
    gw = make_gateway(engine)
    await _stream_then_disconnect(gw.app, after_chunks=0)
    await asyncio.sleep(0.05)
    assert value(await gw.metrics(), "serving_requests_in_flight", model_group=GROUP) == 0
    assert engine.closed == 1


async def test_unexpected_mid_stream_exception_still_ends_the_stream(make_gateway):
    gw = make_gateway(FakeEngine(ENGINE, fail_after=3, fail_with=RuntimeError))
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app, raise_app_exceptions=False),
                             base_url="http://test")
    async with http:
        resp = await http.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = sse_events(resp)
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "engine_error"
    assert "RuntimeError" not in resp.text


# -- models, health, readiness ------------------------------------------------------------------------------


async def test_models_list_and_retrieve(make_gateway):
    gw = make_gateway(FakeEngine("a"), FakeEngine("b"),
                      groups={"alpha": group("a"), "beta": group({"engine": "a", "weight": 1}, "b")})
    resp = await gw.http.get("/v1/models")
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == ["alpha", "beta"]
    for card in body["data"]:
        assert card["object"] == "model"
        assert isinstance(card["created"], int)
        assert isinstance(card["owned_by"], str)
    resp = await gw.http.get("/v1/models/beta")
    assert resp.status_code == 200
    assert resp.json()["id"] == "beta" and resp.json()["object"] == "model"
    assert_error(await gw.http.get("/v1/models/gamma"), 404, code="model_not_found")


async def test_health(gw: Gateway):
    resp = await gw.http.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


async def test_ready_reports_each_engine(make_gateway):
    a, b = FakeEngine("a"), FakeEngine("b")
    gw = make_gateway(a, b, groups={"alpha": group("a", "b")})
    resp = await gw.http.get("/ready")
    assert resp.status_code == 200
    assert resp.json()["engines"] == {"a": "ready", "b": "ready"}

    b.healthy = False  # the group still answers through a: ready, with b reported
    resp = await gw.http.get("/ready")
    assert resp.status_code == 200
    engines = resp.json()["engines"]
    assert engines["a"] == "ready"
    assert engines["b"] != "ready" and "not ready" in engines["b"]
    a.healthy = False  # nothing in the group can answer
    resp = await gw.http.get("/ready")
    assert resp.status_code == 503 and resp.json()["status"] == "not ready"
    assert (await gw.http.get("/health")).status_code == 200  # liveness is not readiness


async def test_engine_out_of_traffic_does_not_make_the_gateway_unready(make_gateway):
    champion, challenger = FakeEngine("v1"), FakeEngine("v2", healthy=False)  # a canary still loading
    gw = make_gateway(champion, challenger, groups={GROUP: group("v1", {"engine": "v2", "weight": 0})})
    resp = await gw.http.get("/ready")
    assert resp.status_code == 200 and resp.json()["engines"]["v2"].startswith("not ready")


# -- metrics ------------------------------------------------------------------------------------------------


async def test_metrics_count_requests_and_tokens(make_gateway, engine: FakeEngine):
    gw = make_gateway(engine)
    assert (await gw.chat()).status_code == 200
    assert (await gw.chat()).status_code == 200
    assert (await gw.chat(stream=True)).status_code == 200  # usage not asked for, still counted
    assert (await gw.complete(max_tokens=2)).status_code == 200
    assert (await gw.chat(model="unknown-model")).status_code == 404

    resp = await gw.http.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    samples = await gw.metrics()
    labels = {"model_group": GROUP, "engine": ENGINE}
    assert value(samples, "serving_requests_total", **labels, endpoint="chat", status_code="200") == 3
    assert value(samples, "serving_requests_total", **labels, endpoint="completions", status_code="200") == 1
    assert value(samples, "serving_requests_total", model_group="unknown", status_code="404") == 1
    assert all(s.labels["model_group"] in (GROUP, "unknown") for s in samples["serving_requests_total"])
    assert value(samples, "serving_prompt_tokens_total", **labels) == 4 * PROMPT_TOKENS
    assert value(samples, "serving_completion_tokens_total", **labels) == 3 * REPLY_TOKENS + 2
    assert value(samples, "serving_time_to_first_token_seconds_count", **labels) == 1
    assert value(samples, "serving_request_duration_seconds_count", **labels) == 4
    assert value(samples, "serving_requests_in_flight", model_group=GROUP) == 0


async def test_metrics_error_statuses(make_gateway):
    a = FakeEngine("a", unavailable=True)
    b = FakeEngine("b", error=context_length_error())
    gw = make_gateway(a, b, groups={"ga": group("a"), "gb": group("b")})
    assert (await gw.chat(model="ga")).status_code == 503
    assert (await gw.chat(model="gb", stream=True)).status_code == 400
    samples = await gw.metrics()
    assert value(samples, "serving_requests_total", model_group="ga", engine="a", status_code="503") == 1
    assert value(samples, "serving_requests_total", model_group="gb", engine="b", status_code="400") == 1
    assert value(samples, "serving_requests_in_flight") == 0
    assert value(samples, "serving_prompt_tokens_total") == 0


async def test_time_to_first_token_is_measured(make_gateway):
    gw = make_gateway(FakeEngine(ENGINE, first_token_delay_s=0.05))
    assert (await gw.chat(stream=True)).status_code == 200
    samples = await gw.metrics()
    labels = {"model_group": GROUP, "engine": ENGINE}
    assert value(samples, "serving_time_to_first_token_seconds_count", **labels) == 1
    assert 0.05 <= value(samples, "serving_time_to_first_token_seconds_sum", **labels) < 2
    assert value(samples, "serving_time_to_first_token_seconds_bucket", **labels, le="0.025") == 0


# -- model groups and weights -------------------------------------------------------------------------------


async def test_groups_route_to_their_engines(make_gateway):
    a, b = FakeEngine("a", reply="from a"), FakeEngine("b", reply="from b")
    gw = make_gateway(a, b, groups={"alpha": group("a"), "beta": group("b")})
    resp = await gw.chat(model="beta")
    assert resp.headers["x-serving-model"] == "b"
    assert resp.json()["choices"][0]["message"]["content"] == "from b"
    assert (len(a.calls), len(b.calls)) == (0, 1)


async def _split(gw: Gateway, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        resp = await gw.chat(max_tokens=1)
        assert resp.status_code == 200
        seen[resp.headers["x-serving-model"]] += 1
    return seen


async def test_weighted_split(make_gateway):
    v1, v2 = FakeEngine("v1"), FakeEngine("v2")
    gw = make_gateway(v1, v2, groups={GROUP: group({"engine": "v1", "weight": 1}, {"engine": "v2", "weight": 3})})
    seen = await _split(gw, 400)
    assert seen["v1"] + seen["v2"] == 400
    # expected 100 / 300; the standard deviation is ~8.7, so this fails only by a > 4.5-sigma fluke
    assert 60 <= seen["v1"] <= 140, seen
    assert (len(v1.calls), len(v2.calls)) == (seen["v1"], seen["v2"])


async def test_weight_zero_engine_gets_nothing(make_gateway):
    live, idle = FakeEngine("live"), FakeEngine("idle")
    gw = make_gateway(live, idle, groups={GROUP: group({"engine": "live", "weight": 2},
                                                       {"engine": "idle", "weight": 0})})
    seen = await _split(gw, 100)
    assert seen == {"live": 100}
    assert idle.calls == []


async def test_router_update_swaps_weights(make_gateway):
    v1, v2 = FakeEngine("v1"), FakeEngine("v2")
    gw = make_gateway(v1, v2, groups={GROUP: group({"engine": "v1", "weight": 1}, {"engine": "v2", "weight": 0})})
    assert await _split(gw, 20) == {"v1": 20}

    gw.router.update({GROUP: group({"engine": "v1", "weight": 0}, {"engine": "v2", "weight": 1}),
                      "canary": group("v1")})
    assert await _split(gw, 20) == {"v2": 20}
    assert sorted(m["id"] for m in (await gw.http.get("/v1/models")).json()["data"]) == ["canary", GROUP]

    # a table naming an engine that is not deployed is refused and the old one keeps serving
    with pytest.raises(ValueError, match="v3"):
        gw.router.update({GROUP: group("v3")})
    assert await _split(gw, 5) == {"v2": 5}

    gw.router.update({"canary": group("v1")})
    assert_error(await gw.chat(), 404, code="model_not_found")

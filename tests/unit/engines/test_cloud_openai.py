"""`OpenAICompatEngine` against a fake OpenAI-compatible server (real HTTP, the official `openai` SDK)."""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

from serving.engines.base import (
    TRANSIENT_ERRORS,
    Completed,
    EngineFailed,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from serving.engines.cloud_http import retry_after_seconds
from serving.engines.openai_compat import OpenAICompatEngine
from tests.support.fake_clouds import DEFAULT_REPLY, FakeOpenAI, drain, free_port, parse_sse

API_KEY = "sk-test-0123456789abcdef-SECRET"
UPSTREAM_MODEL = "gpt-upstream"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as srv:
        yield srv


@pytest.fixture
def srv(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
async def engine(srv: FakeOpenAI) -> AsyncIterator[OpenAICompatEngine]:
    eng = OpenAICompatEngine("cloud-openai", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, timeout_s=2.0)
    yield eng
    await eng.aclose()


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "route-name", "messages": MESSAGES, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "route-name", "prompt": "The capital of France is", **fields})


def streamed(**fields: Any) -> ChatCompletionRequest:
    return chat(stream=True, stream_options={"include_usage": True}, **fields)


def assert_no_key(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert API_KEY not in text
    assert API_KEY not in str(exc) and API_KEY not in repr(exc)


# ------------------------------------------------------------------------------------------- request mapping


async def test_chat_request_reaches_upstream_with_provider_model_and_standard_params_only(srv, engine):
    req = chat(
        max_tokens=20,
        temperature=0.3,
        top_p=0.9,
        stop=["\n\n"],
        seed=7,
        presence_penalty=0.1,
        user="u-1",
        logprobs=True,
        top_logprobs=2,
        top_k=40,
        repetition_penalty=1.1,
        min_tokens=2,
        skip_special_tokens=False,
    )  # vLLM-only extras
    items, err = await drain(engine.generate("chat", req))
    assert err is None and len(items) == 1
    rec = srv.last
    assert rec.method == "POST" and rec.path == "/v1/chat/completions"
    assert rec.headers["authorization"] == f"Bearer {API_KEY}"
    assert rec.json == {
        "model": UPSTREAM_MODEL,
        "messages": MESSAGES,
        "max_tokens": 20,
        "temperature": 0.3,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "seed": 7,
        "presence_penalty": 0.1,
        "user": "u-1",
        "logprobs": True,
        "top_logprobs": 2,
    }


async def test_nested_fields_keep_their_wire_names_and_drop_nulls(srv, engine):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    req = chat(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    await drain(engine.generate("chat", req))
    body = srv.last.json
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "city", "schema": schema}}
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]


async def test_default_max_tokens_only_when_the_client_sets_none(srv):
    eng = OpenAICompatEngine("e", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, default_max_tokens=64)
    try:
        await drain(eng.generate("chat", chat()))
        assert srv.last.json["max_tokens"] == 64
        await drain(eng.generate("chat", chat(max_completion_tokens=5)))
        assert srv.last.json["max_completion_tokens"] == 5 and "max_tokens" not in srv.last.json
        await drain(eng.generate("completions", completion(max_tokens=3)))
        assert srv.last.json["max_tokens"] == 3
    finally:
        await eng.aclose()


async def test_no_max_tokens_sent_without_a_default(srv, engine):
    await drain(engine.generate("chat", chat()))
    assert "max_tokens" not in srv.last.json and "max_completion_tokens" not in srv.last.json


async def test_no_sdk_retries(srv, engine):
    srv.script("status:500")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineFailed)
    assert len(srv.requests) == 1


# ------------------------------------------------------------------------------------------- answers


async def test_chat_non_streamed_yields_one_chat_completion(srv, engine):
    items, err = await drain(engine.generate("chat", chat()))
    assert err is None and len(items) == 1
    assert isinstance(items[0], Completed)
    resp = items[0].response
    assert isinstance(resp, ChatCompletion)
    assert resp.choices[0].message.content == DEFAULT_REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == 6 and resp.usage.total_tokens == resp.usage.prompt_tokens + 6
    assert ChatCompletion.model_validate_json(resp.model_dump_json()) == resp


async def test_chat_max_tokens_gives_finish_length(srv, engine):
    items, _ = await drain(engine.generate("chat", chat(max_tokens=2)))
    assert items[0].response.choices[0].message.content == "The capital"
    assert items[0].response.choices[0].finish_reason == "length"


async def test_chat_streamed_sse(srv, engine):
    items, err = await drain(engine.generate("chat", streamed()))
    assert err is None
    chunks = parse_sse(items)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert c["object"] == "chat.completion.chunk"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_REPLY
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finishes == ["stop"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 6
    assert srv.last.json["stream"] is True and srv.last.json["stream_options"] == {"include_usage": True}


async def test_chat_streamed_without_usage_chunk(srv, engine):
    items, _ = await drain(engine.generate("chat", chat(stream=True)))
    chunks = parse_sse(items)
    assert all(c["choices"] for c in chunks)


async def test_chat_streamed_logprobs_pass_through(srv, engine):
    items, _ = await drain(engine.generate("chat", streamed(logprobs=True, top_logprobs=2)))
    chunks = parse_sse(items)
    lps = [c["choices"][0]["logprobs"] for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert len(lps) == 6
    assert lps[0]["content"][0]["token"] == "The" and len(lps[0]["content"][0]["top_logprobs"]) == 2


async def test_chat_non_streamed_logprobs(srv, engine):
    items, _ = await drain(engine.generate("chat", chat(logprobs=True, top_logprobs=1)))
    content = items[0].response.choices[0].logprobs.content
    assert [t.token for t in content] == ["The", " capital", " of", " France", " is", " Paris."]


async def test_completions_non_streamed(srv, engine):
    items, err = await drain(engine.generate("completions", completion(max_tokens=50, logprobs=1)))
    assert err is None and len(items) == 1
    assert isinstance(items[0], Completed)
    resp = items[0].response
    assert isinstance(resp, Completion)
    assert resp.choices[0].text == DEFAULT_REPLY and resp.usage.completion_tokens == 6
    assert resp.choices[0].logprobs.tokens[0] == "The"
    assert srv.last.path == "/v1/completions"
    assert srv.last.json == {
        "model": UPSTREAM_MODEL,
        "prompt": "The capital of France is",
        "max_tokens": 50,
        "logprobs": 1,
    }


async def test_completions_streamed(srv, engine):
    req = completion(max_tokens=50, stream=True, stream_options={"include_usage": True})
    items, err = await drain(engine.generate("completions", req))
    assert err is None
    chunks = parse_sse(items)
    assert all(c["object"] == "text_completion" for c in chunks)
    assert "".join(c["choices"][0]["text"] for c in chunks if c["choices"]) == DEFAULT_REPLY
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]][-1] == "stop"


async def test_reply_callable_sees_the_request(srv, engine):
    srv.reply = lambda body: f"You sent {len(body['messages'])} message(s) to {body['model']}."
    items, _ = await drain(engine.generate("chat", chat()))
    assert items[0].response.choices[0].message.content == f"You sent 1 message(s) to {UPSTREAM_MODEL}."


# ------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("spec", "error", "retry_after"),
    [
        ("status:429 retry-after:2", EngineRateLimited, 2.0),
        ("status:429 retry-after-ms:1500", EngineRateLimited, 1.5),
        ("status:429", EngineRateLimited, None),
        ("status:503 retry-after:3", EngineRateLimited, 3.0),
        ("status:503", EngineUnavailable, None),
        ("status:502", EngineUnavailable, None),
        ("status:504", EngineUnavailable, None),
        ("status:500", EngineFailed, None),
        ("status:501", EngineFailed, None),
        ("status:408", EngineFailed, None),
        ("status:409", EngineFailed, None),
        ("status:401", EngineFailed, None),
        ("status:403", EngineFailed, None),
        ("status:404", EngineFailed, None),
    ],
)
async def test_status_faults_map_to_engine_errors(srv, engine, spec, error, retry_after):
    srv.script(spec)
    items, err = await drain(engine.generate("chat", chat()))
    assert items == []
    assert type(err) is error, repr(err)
    assert isinstance(err, TRANSIENT_ERRORS)
    assert "cloud-openai" in str(err)
    if error is EngineRateLimited:
        assert err.retry_after_s == retry_after
    assert_no_key(err)


async def test_retry_after_as_http_date(srv, engine):
    srv.script("status:429 retry-after-date:5")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRateLimited) and 3.0 <= err.retry_after_s <= 5.0


def test_retry_after_parsing():
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


async def test_400_maps_to_rejected_with_the_upstream_message(srv, engine):
    srv.script("status:400 param:messages code:invalid_value message:'messages' must contain at least one item.")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRejected) and not isinstance(err, TRANSIENT_ERRORS)
    assert str(err) == "'messages' must contain at least one item."
    assert (err.status, err.code, err.param) == (400, "invalid_value", "messages")


async def test_422_maps_to_rejected(srv, engine):
    srv.script("status:422 message:unprocessable")
    _, err = await drain(engine.generate("completions", completion()))
    assert isinstance(err, EngineRejected) and err.status == 422 and str(err) == "unprocessable"


@pytest.mark.parametrize("spec", ["malformed", "no_choices"])
@pytest.mark.parametrize("endpoint", ["chat", "completions"])
async def test_malformed_200_maps_to_failed(srv, engine, spec, endpoint):
    srv.script(spec)
    _, err = await drain(engine.generate(endpoint, chat() if endpoint == "chat" else completion()))
    assert isinstance(err, EngineFailed) and "malformed response" in str(err)


async def test_timeout_maps_to_engine_timeout_within_the_deadline(srv):
    eng = OpenAICompatEngine("slow", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, timeout_s=0.3)
    try:
        srv.script("delay:3")
        t0 = time.monotonic()
        _, err = await drain(eng.generate("chat", chat()))
        assert isinstance(err, EngineTimeout)
        assert time.monotonic() - t0 < 1.0
        srv.script("hang")
        _, err = await drain(eng.generate("chat", streamed()))
        assert isinstance(err, EngineTimeout)
    finally:
        await eng.aclose()


async def test_read_timeout_mid_stream(srv):
    eng = OpenAICompatEngine("slow", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, timeout_s=0.3)
    try:
        srv.script("chunk_delay:2")
        items, err = await drain(eng.generate("chat", streamed()))
        assert len(items) == 1 and isinstance(err, EngineTimeout)
    finally:
        await eng.aclose()


async def test_connection_refused_maps_to_unavailable():
    eng = OpenAICompatEngine(
        "down", UPSTREAM_MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=1.0
    )
    try:
        _, err = await drain(eng.generate("chat", chat()))
        assert isinstance(err, EngineUnavailable) and not isinstance(err, EngineRateLimited)
        assert_no_key(err)
        with pytest.raises(EngineUnavailable):
            await eng.check_health()
    finally:
        await eng.aclose()


async def test_broken_stream_raises_failed_after_some_chunks(srv, engine):
    srv.script("broken_stream after:3")
    items, err = await drain(engine.generate("chat", streamed()))
    assert len(items) == 3 and all(i.startswith("data: {") for i in items)
    assert isinstance(err, EngineFailed) and "cut" in str(err)


async def test_stream_error_event_raises_failed(srv, engine):
    srv.script("stream_error_event after:2 message:upstream exploded")
    items, err = await drain(engine.generate("chat", streamed()))
    assert len(items) == 2
    assert isinstance(err, EngineFailed) and "upstream exploded" in str(err)


async def test_malformed_stream_chunk_raises_failed(srv, engine):
    srv.script("malformed after:1")
    items, err = await drain(engine.generate("completions", completion(stream=True)))
    assert len(items) == 1 and isinstance(err, EngineFailed) and "malformed" in str(err)


# ------------------------------------------------------------------------------------------- the API key


async def test_api_key_never_appears_in_errors(srv, engine):
    srv.script(f"status:400 message:Invalid key {API_KEY} for this project")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRejected) and "***" in str(err)
    assert_no_key(err)
    srv.script(f"stream_error_event after:1 message:bad {API_KEY}")
    _, err = await drain(engine.generate("chat", streamed()))
    assert isinstance(err, EngineFailed)
    assert_no_key(err)
    assert API_KEY not in repr(engine)


async def test_wrong_key_is_a_config_fault_not_a_client_error():
    with FakeOpenAI(api_key="sk-the-right-one") as srv:
        eng = OpenAICompatEngine("e", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url)
        try:
            _, err = await drain(eng.generate("chat", chat()))
            assert isinstance(err, EngineFailed) and "401" in str(err)
            assert_no_key(err)
            assert srv.last.headers["authorization"] == f"Bearer {API_KEY}"
        finally:
            await eng.aclose()


# ------------------------------------------------------------------------------------------- health, lifecycle


async def test_check_health(srv, engine):
    await engine.check_health()
    assert srv.last.method == "GET" and srv.last.path == "/v1/models"
    srv.script("status:503")
    with pytest.raises(EngineUnavailable):
        await engine.check_health()
    srv.script("malformed")
    with pytest.raises(EngineFailed):
        await engine.check_health()


async def test_closing_a_stream_early_is_clean(srv, engine):
    gen = engine.generate("chat", streamed())
    first = await gen.__anext__()
    assert json.loads(first[len("data: ") :])["choices"][0]["delta"]["role"] == "assistant"
    await gen.aclose()
    items, err = await drain(engine.generate("chat", chat()))  # the pool still works
    assert err is None and len(items) == 1


async def test_dict_requests_work_too(srv, engine):
    items, err = await drain(engine.generate("chat", {"model": "x", "messages": MESSAGES, "max_tokens": 3}))
    assert err is None and items[0].response.choices[0].message.content == "The capital of"

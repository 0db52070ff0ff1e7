"""`AnthropicEngine` against a fake Anthropic Messages server (real HTTP, the official `anthropic` SDK)."""

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

from serving.engines.anthropic_mapping import JSON_INSTRUCTION, finish_reason
from serving.engines.anthropic_messages import AnthropicEngine
from serving.engines.base import (
    TRANSIENT_ERRORS,
    Completed,
    EngineFailed,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from tests.support.fake_clouds import DEFAULT_REPLY, FakeAnthropic, drain, free_port, parse_sse

API_KEY = "sk-ant-test-0123456789-SECRET"
UPSTREAM_MODEL = "claude-upstream"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as srv:
        yield srv


@pytest.fixture
def srv(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture
async def engine(srv: FakeAnthropic) -> AsyncIterator[AnthropicEngine]:
    eng = AnthropicEngine("cloud-claude", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, timeout_s=2.0)
    yield eng
    await eng.aclose()


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "route-name", "messages": MESSAGES, **fields})


def completion(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "route-name", "prompt": "Name the capital of France.", **fields})


def streamed(**fields: Any) -> ChatCompletionRequest:
    return chat(stream=True, stream_options={"include_usage": True}, **fields)


def assert_no_key(exc: BaseException) -> None:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert API_KEY not in text
    assert API_KEY not in str(exc) and API_KEY not in repr(exc)


def text_blocks(*texts: str) -> list[dict[str, str]]:
    return [{"type": "text", "text": t} for t in texts]


# ------------------------------------------------------------------------------------------- request mapping


async def test_chat_mapping_system_roles_merging_stop_and_default_max_tokens(srv, engine):
    req = chat(
        messages=[
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Capital"}, {"type": "text", "text": "of France?"}]},
            {"role": "assistant", "content": "Which France?"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "The country."},
        ],
        stop=["\n\n", "END"],
        temperature=0.2,
        top_p=0.5,
        logprobs=True,
        seed=3,
        user="tenant-7",
    )
    items, err = await drain(engine.generate("chat", req))
    assert err is None and len(items) == 1
    rec = srv.last
    assert rec.path == "/v1/messages"
    assert rec.json == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 1024,
        "system": "You are terse.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": text_blocks("Hello.", "Capital", "of France?")},
            {"role": "assistant", "content": text_blocks("Which France?")},
            {"role": "user", "content": text_blocks("The country.")},
        ],
        "stop_sequences": ["END"],
        "metadata": {"user_id": "tenant-7"},
    }  # no whitespace-only stop, no temperature/top_p (the API rejects them), no logprobs/seed


async def test_max_tokens_from_the_request(srv, engine):
    await drain(engine.generate("chat", chat(max_tokens=7)))
    assert srv.last.json["max_tokens"] == 7
    await drain(engine.generate("chat", chat(max_completion_tokens=9, max_tokens=7)))
    assert srv.last.json["max_tokens"] == 9


async def test_default_max_tokens_is_configurable(srv):
    eng = AnthropicEngine("e", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, default_max_tokens=256)
    try:
        await drain(eng.generate("chat", chat()))
        assert srv.last.json["max_tokens"] == 256
    finally:
        await eng.aclose()


async def test_sampling_params_are_opt_in_and_clamped(srv):
    eng = AnthropicEngine("e", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, send_sampling_params=True)
    try:
        _, err = await drain(eng.generate("chat", chat(temperature=1.7, top_p=0.9)))
        assert srv.last.json["temperature"] == 1.0 and srv.last.json["top_p"] == 0.9
        # ... which the current API version (and so the fake) refuses:
        assert isinstance(err, EngineRejected) and "temperature" in str(err)
    finally:
        await eng.aclose()


async def test_response_format_becomes_a_system_instruction(srv, engine):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    req = chat(
        messages=[{"role": "system", "content": "Be brief."}, *MESSAGES],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    await drain(engine.generate("chat", req))
    system = srv.last.json["system"]
    assert system.startswith("Be brief.\n\n" + JSON_INSTRUCTION)
    assert json.dumps(schema) in system
    await drain(engine.generate("chat", chat(response_format={"type": "json_object"})))
    assert srv.last.json["system"] == JSON_INSTRUCTION
    await drain(engine.generate("chat", chat(response_format={"type": "text"})))
    assert "system" not in srv.last.json


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                        ],
                    }
                ]
            },
            "messages[0].content",
        ),
        ({"messages": [*MESSAGES, {"role": "function", "name": "f", "content": "42"}]}, "messages[1].role"),
        (  # a tool result without the tool call it answers
            {"messages": [*MESSAGES, {"role": "tool", "content": "42", "tool_call_id": "c1"}]},
            "messages[1].tool_call_id",
        ),
        ({"n": 2}, "n"),
        ({"messages": [{"role": "system", "content": "Only a system prompt."}]}, "messages"),
    ],
)
async def test_unsupported_requests_are_rejected_before_any_call(srv, engine, fields, param):
    _, err = await drain(engine.generate("chat", chat(**fields)))
    assert isinstance(err, EngineRejected) and err.status == 400 and err.param == param, repr(err)
    assert srv.requests == []


async def test_completions_prompt_is_one_user_message(srv, engine):
    items, err = await drain(engine.generate("completions", completion(max_tokens=3, stop=["Paris"])))
    assert err is None
    assert srv.last.json == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 3,
        "stop_sequences": ["Paris"],
        "messages": [{"role": "user", "content": text_blocks("Name the capital of France.")}],
    }
    assert isinstance(items[0], Completed)
    resp = items[0].response
    assert isinstance(resp, Completion) and resp.object == "text_completion"
    assert resp.choices[0].text == "The capital of" and resp.choices[0].finish_reason == "length"


@pytest.mark.parametrize("fields", [{"prompt": ["a", "b"]}, {"prompt": [1, 2, 3]}, {"suffix": "x"}, {"best_of": 2}])
async def test_unsupported_completions_are_rejected(srv, engine, fields):
    _, err = await drain(engine.generate("completions", completion(**fields)))
    assert isinstance(err, EngineRejected) and err.status == 400
    assert srv.requests == []


# ------------------------------------------------------------------------------------------- answers


async def test_chat_non_streamed_yields_one_chat_completion(srv, engine):
    items, err = await drain(engine.generate("chat", chat()))
    assert err is None and len(items) == 1
    assert isinstance(items[0], Completed)
    resp = items[0].response
    assert isinstance(resp, ChatCompletion)
    assert resp.id.startswith("msg_") and resp.model == UPSTREAM_MODEL
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == DEFAULT_REPLY
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == 6 and resp.usage.completion_tokens == 6 and resp.usage.total_tokens == 12
    assert ChatCompletion.model_validate_json(resp.model_dump_json()) == resp


@pytest.mark.parametrize(
    ("fields", "content", "finish"),
    [
        ({"max_tokens": 2}, "The capital", "length"),
        ({"stop": [" France"]}, "The capital of", "stop"),
    ],
)
async def test_chat_finish_reasons(srv, engine, fields, content, finish):
    items, _ = await drain(engine.generate("chat", chat(**fields)))
    assert items[0].response.choices[0].message.content == content
    assert items[0].response.choices[0].finish_reason == finish


def test_finish_reason_mapping():
    assert finish_reason("end_turn") == finish_reason("stop_sequence") == finish_reason("pause_turn") == "stop"
    assert finish_reason("max_tokens") == finish_reason("model_context_window_exceeded") == "length"
    assert finish_reason("tool_use") == "tool_calls"
    assert finish_reason("refusal") == "content_filter"
    assert finish_reason(None) == "stop"


async def test_chat_streamed_sse(srv, engine):
    items, err = await drain(engine.generate("chat", streamed()))
    assert err is None
    chunks = parse_sse(items)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert c["object"] == "chat.completion.chunk" and c["id"].startswith("msg_")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == DEFAULT_REPLY
    assert len(chunks) == 1 + 6 + 1 + 1  # role, one per text delta, finish, usage
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop" and chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}
    assert srv.last.json["stream"] is True


async def test_chat_streamed_without_usage_and_with_length_finish(srv, engine):
    items, _ = await drain(engine.generate("chat", chat(stream=True, max_tokens=3)))
    chunks = parse_sse(items)
    assert all(c["choices"] for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_completions_streamed(srv, engine):
    req = completion(stream=True, stream_options={"include_usage": True}, echo=True)
    items, err = await drain(engine.generate("completions", req))
    assert err is None
    chunks = parse_sse(items)
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == "Name the capital of France." + DEFAULT_REPLY
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6


# ------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("spec", "error", "retry_after"),
    [
        ("status:429 retry-after:2", EngineRateLimited, 2.0),
        ("status:429", EngineRateLimited, None),
        ("status:529", EngineUnavailable, None),
        ("status:529 retry-after:1", EngineRateLimited, 1.0),
        ("status:503 retry-after-ms:500", EngineRateLimited, 0.5),
        ("status:500", EngineFailed, None),
        ("status:504", EngineUnavailable, None),
        ("status:401", EngineFailed, None),
        ("status:404", EngineFailed, None),
    ],
)
async def test_status_faults_map_to_engine_errors(srv, engine, spec, error, retry_after):
    srv.script(spec)
    items, err = await drain(engine.generate("chat", chat()))
    assert items == []
    assert type(err) is error, repr(err)
    assert isinstance(err, TRANSIENT_ERRORS) and "cloud-claude" in str(err)
    if error is EngineRateLimited:
        assert err.retry_after_s == retry_after
    assert_no_key(err)
    assert len(srv.requests) == 1  # no SDK retries


async def test_400_maps_to_rejected_with_the_upstream_message(srv, engine):
    srv.script("status:400 message:prompt is too long: 250000 tokens > 200000 maximum")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRejected) and not isinstance(err, TRANSIENT_ERRORS)
    assert str(err) == "prompt is too long: 250000 tokens > 200000 maximum"
    assert err.status == 400 and err.code == "invalid_request_error"
    srv.script("status:400 code:prompt_too_long message:prompt is too long")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRejected) and err.code == "prompt_too_long"


@pytest.mark.parametrize("spec", ["malformed", "no_choices"])
async def test_malformed_200_maps_to_failed(srv, engine, spec):
    srv.script(spec)
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineFailed) and "malformed response" in str(err)


async def test_timeout_maps_to_engine_timeout_within_the_deadline(srv):
    eng = AnthropicEngine("slow", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url, timeout_s=0.3)
    try:
        srv.script("delay:3")
        t0 = time.monotonic()
        _, err = await drain(eng.generate("chat", chat()))
        assert isinstance(err, EngineTimeout)
        assert time.monotonic() - t0 < 1.0
        srv.script("chunk_delay:2")
        items, err = await drain(eng.generate("chat", streamed()))
        assert len(items) == 1 and isinstance(err, EngineTimeout)  # a read timeout mid-stream
    finally:
        await eng.aclose()


async def test_connection_refused_maps_to_unavailable():
    eng = AnthropicEngine(
        "down", UPSTREAM_MODEL, api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}", timeout_s=1.0
    )
    try:
        _, err = await drain(eng.generate("chat", chat()))
        assert isinstance(err, EngineUnavailable) and not isinstance(err, EngineRateLimited)
        assert_no_key(err)
    finally:
        await eng.aclose()


async def test_broken_stream_raises_failed_after_some_chunks(srv, engine):
    srv.script("broken_stream after:5")  # message_start, block start, ping, 2 deltas
    items, err = await drain(engine.generate("chat", streamed()))
    assert len(items) == 3  # the role chunk and 2 text chunks
    assert isinstance(err, EngineFailed) and "cut" in str(err)


async def test_stream_error_event_raises_failed(srv, engine):
    srv.script("stream_error_event after:4")
    items, err = await drain(engine.generate("chat", streamed()))
    assert len(items) == 2
    assert isinstance(err, EngineFailed) and "Overloaded" in str(err)


async def test_malformed_stream_event_raises_failed(srv, engine):
    srv.script("malformed after:3")
    items, err = await drain(engine.generate("chat", streamed()))
    assert len(items) == 1 and isinstance(err, EngineFailed)


# ------------------------------------------------------------------------------------------- the API key


async def test_api_key_header_and_never_in_errors(srv, engine):
    await drain(engine.generate("chat", chat()))
    headers = srv.last.headers
    # anthropic SDK 2.x sends the key as a bearer token (the API also takes x-api-key)
    assert headers.get("authorization") == f"Bearer {API_KEY}" or headers.get("x-api-key") == API_KEY
    assert headers["anthropic-version"]
    srv.script(f"status:400 message:key {API_KEY} is not allowed here")
    _, err = await drain(engine.generate("chat", chat()))
    assert isinstance(err, EngineRejected) and "***" in str(err)
    assert_no_key(err)
    assert API_KEY not in repr(engine)


async def test_wrong_key_is_a_config_fault():
    with FakeAnthropic(api_key="sk-ant-the-right-one") as srv:
        eng = AnthropicEngine("e", UPSTREAM_MODEL, api_key=API_KEY, base_url=srv.url)
        try:
            _, err = await drain(eng.generate("chat", chat()))
            assert isinstance(err, EngineFailed) and "401" in str(err)
            assert_no_key(err)
        finally:
            await eng.aclose()


# ------------------------------------------------------------------------------------------- health


async def test_check_health(srv, engine):
    await engine.check_health()
    assert srv.last.method == "GET" and srv.last.path == "/v1/models" and srv.last.query == {"limit": "1"}
    srv.script("status:529")
    with pytest.raises(EngineUnavailable):
        await engine.check_health()

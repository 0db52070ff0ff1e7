"""Tool calling through `AnthropicEngine`, both ways: OpenAI tools / tool_choice / tool-call history in, Anthropic
tool_use blocks out as OpenAI tool_calls (non-streamed, and streamed deltas the OpenAI SDK reassembles), against
the fake Anthropic server over real HTTP with the official `anthropic` SDK."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import anthropic
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving.engines.anthropic_mapping import messages_kwargs, tool_use_id
from serving.engines.anthropic_messages import AnthropicEngine
from serving.engines.assemble import StreamAssembler
from serving.engines.base import Completed, EngineRejected
from tests.support.fake_clouds import DEFAULT_REPLY, FakeAnthropic, drain, parse_sse

API_KEY = "sk-ant-test-tools"
UPSTREAM_MODEL = "claude-upstream"
QUESTION: dict[str, Any] = {"role": "user", "content": "What is the weather in Paris?"}
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER_SCHEMA},
}
CLOCK = {"type": "function", "function": {"name": "get_time"}}  # no parameters
TOOLS: list[Any] = [WEATHER, CLOCK]
WEATHER_INPUT = {"city": "example", "unit": "celsius"}  # what the fake fills the required properties with


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    srv = FakeAnthropic()
    with srv:
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


def chat(messages: list[dict[str, Any]] | None = None, **fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {"model": "route-name", "messages": messages or [QUESTION], "tools": TOOLS, **fields}
    )


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def calls(*tool_calls: dict[str, Any]) -> dict[str, Any]:
    """An assistant message making these tool calls."""
    return {"role": "assistant", "tool_calls": list(tool_calls)}


def result(call_id: str, content: str = "x") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


C1, C2 = call("c1", "get_time", "{}"), call("c2", "get_time", "{}")


def function_calls(message: Any) -> list[Any]:
    """A message's tool calls (asserting it has some)."""
    assert message.tool_calls, message
    return list(message.tool_calls)


async def answer(engine: AnthropicEngine, request: Any) -> ChatCompletion:
    items, err = await drain(engine.generate("chat", request))
    assert err is None, repr(err)
    assert len(items) == 1 and isinstance(items[0], Completed)
    resp = items[0].response
    assert isinstance(resp, ChatCompletion)
    return resp


async def stream_items(engine: AnthropicEngine, request: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """The engine's SSE strings and their JSON chunks (each a valid `ChatCompletionChunk`)."""
    items, err = await drain(engine.generate("chat", request))
    assert err is None, repr(err)
    chunks = parse_sse(items)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    return items, chunks


def tool_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [tc for c in chunks if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]


# ------------------------------------------------------------------------------------------- request mapping


@pytest.mark.parametrize(
    ("fields", "tool_choice"),
    [
        ({}, {"type": "auto"}),  # vLLM sets tool_choice "auto" when tools come without one
        ({"tool_choice": "auto"}, {"type": "auto"}),
        ({"tool_choice": "required"}, {"type": "any"}),
        ({"tool_choice": "none"}, {"type": "none"}),
        ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}, {"type": "tool", "name": "get_time"}),
        ({"parallel_tool_calls": False}, {"type": "auto", "disable_parallel_tool_use": True}),
        ({"tool_choice": "required", "parallel_tool_calls": False}, {"type": "any", "disable_parallel_tool_use": True}),
        ({"tool_choice": "none", "parallel_tool_calls": False}, {"type": "none"}),
        ({"parallel_tool_calls": True}, {"type": "auto"}),
    ],
)
async def test_tools_and_tool_choice_as_sent(srv, engine, fields, tool_choice):
    await answer(engine, chat(**fields))
    sent = srv.last.json
    assert sent["tools"] == [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": WEATHER_SCHEMA},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert sent["tool_choice"] == tool_choice


def test_no_tool_choice_in_a_plain_body():
    def kwargs(**body: Any) -> dict[str, Any]:
        return messages_kwargs("m", "chat", {"messages": [QUESTION], **body}, 64)

    assert "tool_choice" not in kwargs(tools=TOOLS) and kwargs(tools=TOOLS)["tools"][1]["name"] == "get_time"
    assert kwargs(tools=TOOLS, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    strict = {"type": "function", "function": {"name": "f", "parameters": {"properties": {}}, "strict": True}}
    assert kwargs(tools=[strict])["tools"] == [{"name": "f", "input_schema": {"type": "object", "properties": {}},
                                                "strict": True}]
    assert "tools" not in kwargs(tool_choice="none") and "tools" not in kwargs(tool_choice="auto")
    completion = messages_kwargs("m", "completions", {"prompt": "Hi.", "tools": TOOLS, "tool_choice": "required"}, 64)
    assert "tools" not in completion and "tool_choice" not in completion  # tools do not apply to completions


async def test_history_with_tool_calls_and_results_as_sent(srv, engine):
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Use the tools."},
        QUESTION,
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                call("call_1", "get_weather", '{"city": "Paris", "unit": "celsius"}'),
                call("call_2", "get_time", ""),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:05"}]},
        {"role": "user", "content": "And tomorrow?"},
    ]
    resp = await answer(engine, chat(messages))
    assert srv.last.json["system"] == "Use the tools."
    assert srv.last.json["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What is the weather in Paris?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "call_1", "name": "get_weather",
                 "input": {"city": "Paris", "unit": "celsius"}},
                {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
            ],
        },
        {
            "role": "user",  # all results of the assistant turn in ONE user turn, the user's text after them
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "18 C, sunny"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "14:05"},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]
    # tool results in the last user turn: the fake answers with text, as a model would
    assert resp.choices[0].message.content == DEFAULT_REPLY and resp.choices[0].message.tool_calls is None
    assert resp.choices[0].finish_reason == "stop"


async def test_tool_call_ids_from_other_tiers_are_made_acceptable(srv, engine):
    odd = "functions.get_time:0"  # e.g. a vLLM tier's Kimi tool parser; Anthropic ids are [a-zA-Z0-9_-]+
    messages: list[dict[str, Any]] = [
        QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call(odd, "get_time", "{}")]},
        {"role": "tool", "tool_call_id": odd, "content": ""},
    ]
    await answer(engine, chat(messages))  # the fake refuses ids the API refuses, and unpaired results
    assistant, results = srv.last.json["messages"][1:]
    assert assistant["content"][0]["id"] == results["content"][0]["tool_use_id"] == tool_use_id(odd) != odd
    assert results["content"] == [{"type": "tool_result", "tool_use_id": tool_use_id(odd)}]  # empty: no content
    assert tool_use_id("call_abc-1_X") == "call_abc-1_X"


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [QUESTION, calls(call("c1", "get_time", "not json")), result("c1")],
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            [QUESTION, calls(C1, call("c2", "get_time", "[1]")), result("c1"), result("c2")],
            "messages[1].tool_calls[1].function.arguments",
        ),
        ([QUESTION, calls(C1), result("c9")], "messages[2].tool_call_id"),  # answers no call
        ([QUESTION, calls(C1, C2), result("c1"), {"role": "user", "content": "Well?"}], "messages[1].tool_calls"),
        ([QUESTION, calls(C1)], "messages[1].tool_calls"),  # never answered
        ([QUESTION, calls(C1), result("c1"), result("c1")], "messages[3].tool_call_id"),  # answered twice
        ([QUESTION, {"role": "tool", "content": "x"}], "messages[1].tool_call_id"),
        ([QUESTION, {"role": "function", "name": "get_time", "content": "x"}], "messages[1].role"),
        (
            [QUESTION, {"role": "assistant", "function_call": {"name": "get_time", "arguments": "{}"}}],
            "messages[1].function_call",
        ),
    ],
)
async def test_unmappable_tool_history_is_rejected_before_any_call(srv, engine, messages, param):
    _, err = await drain(engine.generate("chat", {"model": "route-name", "messages": messages, "tools": TOOLS}))
    assert isinstance(err, EngineRejected) and err.status == 400 and err.param == param, repr(err)
    assert srv.requests == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "custom", "custom": {"name": "grammar"}}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
         "tools[0].function.parameters"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
         "tool_choice.function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}},
         "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
async def test_unmappable_tools_are_rejected_before_any_call(srv, engine, fields, param):
    _, err = await drain(engine.generate("chat", {"model": "route-name", "messages": [QUESTION], **fields}))
    assert isinstance(err, EngineRejected) and err.status == 400 and err.param == param, repr(err)
    assert srv.requests == []


# ------------------------------------------------------------------------------------------- answers


async def test_forced_tool_call_then_its_result_round_trip(srv, engine):
    resp = await answer(engine, chat(tool_choice="required"))
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # a forced tool call comes without text
    (tc,) = function_calls(choice.message)
    assert tc.type == "function" and tc.id.startswith("toolu_")
    assert tc.function.name == "get_weather" and json.loads(tc.function.arguments) == WEATHER_INPUT

    # the client runs the tool and sends the conversation back, as OpenAI clients do
    history = [QUESTION, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": tc.id, "content": "18 C, sunny"}]
    resp = await answer(engine, chat(history, tool_choice="required"))
    sent = srv.last.json["messages"]
    assert sent[1] == {"role": "assistant",
                       "content": [{"type": "tool_use", "id": tc.id, "name": "get_weather", "input": WEATHER_INPUT}]}
    assert sent[2] == {"role": "user",
                       "content": [{"type": "tool_result", "tool_use_id": tc.id, "content": "18 C, sunny"}]}
    assert resp.choices[0].message.content == DEFAULT_REPLY and resp.choices[0].finish_reason == "stop"


async def test_named_tool_choice_calls_that_tool(srv, engine):
    resp = await answer(engine, chat(tool_choice={"type": "function", "function": {"name": "get_time"}}))
    (tc,) = function_calls(resp.choices[0].message)
    assert tc.function.name == "get_time" and tc.function.arguments == "{}"


async def test_text_and_parallel_tool_calls_non_streamed(srv, engine):
    srv.script("tool_use:2")  # tool_choice auto: the model says something, then calls two tools
    resp = await answer(engine, chat())
    message = resp.choices[0].message
    assert message.content == DEFAULT_REPLY
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in function_calls(message)] == [
        ("get_weather", WEATHER_INPUT),
        ("get_time", {}),
    ]
    assert len({tc.id for tc in function_calls(message)}) == 2
    assert resp.choices[0].finish_reason == "tool_calls"
    assert ChatCompletion.model_validate_json(resp.model_dump_json()) == resp


async def test_parallel_tool_calls_false_gets_at_most_one_call(srv, engine):
    srv.script("tool_use:2")
    resp = await answer(engine, chat(parallel_tool_calls=False))
    assert [tc.function.name for tc in function_calls(resp.choices[0].message)] == ["get_weather"]


async def test_tool_choice_none_answers_with_text(srv, engine):
    srv.script("tool_use:1")
    resp = await answer(engine, chat(tool_choice="none"))
    assert resp.choices[0].message.content == DEFAULT_REPLY and resp.choices[0].message.tool_calls is None


async def test_streamed_tool_calls_reassemble_with_the_openai_sdk(srv, engine):
    srv.script("tool_use:2")
    items, chunks = await stream_items(engine, chat(stream=True, stream_options={"include_usage": True}))
    deltas = tool_deltas(chunks)
    # content blocks 1 and 2 (after the text block) are tool calls 0 and 1
    starts = [d for d in deltas if "id" in d]
    assert [(d["index"], d["type"], d["function"]) for d in starts] == [
        (0, "function", {"name": "get_weather", "arguments": ""}),
        (1, "function", {"name": "get_time", "arguments": ""}),
    ]
    assert all(d["id"].startswith("toolu_") for d in starts)
    pieces = [d for d in deltas if "id" not in d]
    assert all(set(d) == {"index", "function"} and set(d["function"]) == {"arguments"} for d in pieces)
    assert all(d["function"]["arguments"] for d in pieces)  # the API's leading empty partial_json is not relayed
    assert json.loads("".join(d["function"]["arguments"] for d in pieces if d["index"] == 0)) == WEATHER_INPUT
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"

    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState(input_tools=TOOLS)
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    final = state.get_final_completion()
    message = final.choices[0].message
    assert message.content == DEFAULT_REPLY and final.choices[0].finish_reason == "tool_calls"
    assert [(tc.id, tc.function.name, json.loads(tc.function.arguments)) for tc in function_calls(message)] == [
        (starts[0]["id"], "get_weather", WEATHER_INPUT),
        (starts[1]["id"], "get_time", {}),
    ]
    assert final.usage is not None and final.usage.completion_tokens > 0

    assembler = StreamAssembler("chat")  # the gateway's own accumulator (for non-streamed clients) agrees
    for item in items:
        assembler.add(item)
    assembled = assembler.response()["choices"][0]
    assert assembled["message"]["content"] == DEFAULT_REPLY and assembled["finish_reason"] == "tool_calls"
    assert [(tc["id"], tc["function"]["name"], tc["function"]["arguments"]) for tc in assembled["message"]["tool_calls"]
            ] == [(tc.id, tc.function.name, tc.function.arguments) for tc in function_calls(message)]


async def test_streamed_forced_tool_call_has_no_text(srv, engine):
    named = {"type": "function", "function": {"name": "get_weather"}}
    _, chunks = await stream_items(engine, chat(stream=True, tool_choice=named))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert not any(c["choices"][0]["delta"].get("content") for c in chunks)
    deltas = tool_deltas(chunks)
    assert deltas[0]["index"] == 0 and deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert {d["index"] for d in deltas} == {0}
    assert json.loads("".join(d["function"]["arguments"] for d in deltas)) == WEATHER_INPUT
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


class _Events:
    """A raw Messages event stream as the SDK hands it over (an async iterator with `close`)."""

    def __init__(self, events: list[Any]):
        self._events = iter(events)
        self.closed = False

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._events)
        except StopIteration:
            raise StopAsyncIteration from None

    async def close(self) -> None:
        self.closed = True


async def test_streamed_tool_use_without_argument_deltas_gets_its_start_input(engine):
    from anthropic.types import (
        RawContentBlockDeltaEvent,
        RawContentBlockStartEvent,
        RawContentBlockStopEvent,
        RawMessageDeltaEvent,
        RawMessageStartEvent,
        RawMessageStopEvent,
    )

    def start(i: int, block: dict[str, Any]) -> Any:
        return RawContentBlockStartEvent.model_validate({"type": "content_block_start", "index": i,
                                                         "content_block": block})

    events = [
        RawMessageStartEvent.model_validate({"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": UPSTREAM_MODEL, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}}),
        start(0, {"type": "tool_use", "id": "toolu_a", "name": "get_time", "input": {}}),
        RawContentBlockDeltaEvent.model_validate({"type": "content_block_delta", "index": 0,
                                                  "delta": {"type": "input_json_delta", "partial_json": ""}}),
        RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 0}),
        start(1, {"type": "tool_use", "id": "toolu_b", "name": "get_weather", "input": {"city": "Oslo"}}),
        RawContentBlockStopEvent.model_validate({"type": "content_block_stop", "index": 1}),
        RawMessageDeltaEvent.model_validate({"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                                             "usage": {"output_tokens": 9}}),
        RawMessageStopEvent.model_validate({"type": "message_stop"}),
    ]
    stream = _Events(events)
    chunks = parse_sse([c async for c in engine._relay("chat", stream, False, "")])
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    made = function_calls(state.get_final_completion().choices[0].message)
    assert [(tc.id, tc.function.arguments) for tc in made] == [("toolu_a", "{}"), ("toolu_b", '{"city": "Oslo"}')]
    assert stream.closed


# ------------------------------------------------------------------------------------------- the fake checks


@pytest.fixture
async def client(srv: FakeAnthropic) -> AsyncIterator[anthropic.AsyncAnthropic]:
    c = anthropic.AsyncAnthropic(api_key=API_KEY, base_url=srv.url, max_retries=0)
    yield c
    await c.close()


TOOL = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
USE = {"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tools": [{"name": "get_time"}]}, "tools.0.custom.input_schema: Field required"),
        ({"tools": [{"input_schema": {"type": "object"}}]}, "tools.0.custom.name: Field required"),
        ({"tools": [{**TOOL, "parameters": {}}]}, "tools.0.custom.parameters: Extra inputs are not permitted"),
        ({"tools": [TOOL], "tool_choice": {"type": "tool", "name": "nope"}}, "Tool 'nope' not found"),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]}]},
            "unexpected `tool_use_id`",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": [USE]},
                          {"role": "user", "content": "Well?"}]},
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": [USE]},
                          {"role": "user", "content": [{"type": "text", "text": "Here:"},
                                                       {"type": "tool_result", "tool_use_id": "toolu_1"}]}]},
            "tool_result blocks must come before",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi."},
                          {"role": "assistant", "content": [{**USE, "id": "call:1"}]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call:1"}]}]},
            "messages.1.content.0.tool_use.id: String should match pattern",
        ),
    ],
)
async def test_fake_refuses_what_the_api_refuses(client, fields, message):
    body: dict[str, Any] = {"model": UPSTREAM_MODEL, "max_tokens": 16,
                            "messages": [{"role": "user", "content": "Hi."}], **fields}
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(**body)
    error = cast(dict[str, Any], info.value.body)["error"]
    assert error["type"] == "invalid_request_error" and message in error["message"]


async def test_fake_tool_use_answer_parses_in_the_sdk(client):
    msg = await client.messages.create(model=UPSTREAM_MODEL, max_tokens=16, tools=[TOOL], tool_choice={"type": "any"},
                                       messages=[{"role": "user", "content": "Time?"}])
    assert msg.stop_reason == "tool_use" and [b.type for b in msg.content] == ["tool_use"]
    async with client.messages.stream(model=UPSTREAM_MODEL, max_tokens=16, tools=[TOOL],
                                      tool_choice={"type": "any"},
                                      messages=[{"role": "user", "content": "Time?"}]) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[0].type == "tool_use"
    assert final.content[0].input == {}

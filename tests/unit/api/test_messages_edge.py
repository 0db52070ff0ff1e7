"""The Anthropic Messages API edge (`serving.api.messages`): request translation, answers, streams and errors,
checked against the official `anthropic` SDK's types, stream accumulation and error classes."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import anthropic
import httpx2
import pytest

from serving.api.errors import APIError
from serving.api.messages import MessagesEdge, error_envelope, error_type
from serving.api.messages_request import parse_messages
from serving.api.protocol import ParsedRequest
from serving.api.streaming import DONE, error_event, replay

MODEL = "claude-compatible"
BASE: dict[str, Any] = {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOL_HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris and Rome?"},
    {"role": "assistant", "content": [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {"city": "Rome"}},
    ]},
    {"role": "user", "content": [
        {"type": "text", "text": "Here you go."},
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C, sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_02", "is_error": True,
         "content": [{"type": "text", "text": "service down"}]},
    ]},
]


def parse(**fields: Any) -> ParsedRequest:
    return parse_messages(json.dumps({**BASE, **fields}).encode())


def refused(body: dict[str, Any]) -> APIError:
    with pytest.raises(APIError) as info:
        parse_messages(json.dumps(body).encode())
    assert info.value.status == 400
    return info.value


# ---- requests ------------------------------------------------------------------------------------------------


def test_parse_minimal_body() -> None:
    parsed = parse()
    assert parsed.body == {"model": MODEL, "max_tokens": 64, "messages": [{"role": "user", "content": "Hello"}]}
    assert parsed.model == MODEL and parsed.endpoint == "chat" and not parsed.stream
    assert isinstance(parsed.edge, MessagesEdge) and parsed.edge.name == "messages" and parsed.edge.model == MODEL
    assert parsed.client_usage is True
    assert parsed.request.max_tokens == 64


def test_parse_every_scalar_field() -> None:
    parsed = parse(
        system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Answer in French."}],
        stop_sequences=["\n\nHuman:", "END"], temperature=0.5, top_p=0.9, top_k=40, stream=True,
        metadata={"user_id": "user-7"}, serving={"route": "default"},
        thinking={"type": "enabled", "budget_tokens": 2048}, service_tier="auto",  # accepted, ignored
    )
    body = parsed.body
    assert body["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "Be terse."},
                                                                 {"type": "text", "text": "Answer in French."}]}
    assert body["stop"] == ["\n\nHuman:", "END"]
    assert (body["temperature"], body["top_p"], body["top_k"], body["user"]) == (0.5, 0.9, 40, "user-7")
    assert parsed.stream and body["stream_options"] == {"include_usage": True} and parsed.client_usage
    assert parsed.overrides is not None and parsed.overrides.route == "default" and "serving" not in body
    assert "thinking" not in body and "service_tier" not in body
    assert parsed.edge.stop_sequences == ("\n\nHuman:", "END")


def test_parse_system_string() -> None:
    assert parse(system="Be terse.").body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert parse(system=[]).body["messages"][0]["role"] == "user"


def test_parse_tools_and_tool_result_history() -> None:
    parsed = parse(messages=TOOL_HISTORY, tools=[WEATHER],
                   tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    body = parsed.body
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER["input_schema"], "description": "The weather in a city."}}]
    assert body["tool_choice"] == "auto" and body["parallel_tool_calls"] is False
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "toolu_01", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_02", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, sunny"},
        {"role": "tool", "tool_call_id": "toolu_02", "content": "Error: service down"},
        {"role": "user", "content": "Here you go."},
    ]
    assert "continue_final_message" not in body
    assert [m["role"] for m in parsed.request.messages] == ["user", "assistant", "tool", "tool", "user"]


def test_parse_tool_result_only_turn() -> None:
    history = [*TOOL_HISTORY[:2], {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01"}, {"type": "tool_result", "tool_use_id": "toolu_02",
                                                              "content": []}]}]
    messages = parse(messages=history, tools=[WEATHER]).body["messages"]
    assert messages[-2:] == [{"role": "tool", "tool_call_id": "toolu_01", "content": ""},
                             {"role": "tool", "tool_call_id": "toolu_02", "content": ""}]


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, "auto"),
    ({"type": "any"}, "required"),
    ({"type": "none"}, "none"),
    ({"type": "tool", "name": "get_weather"}, {"type": "function", "function": {"name": "get_weather"}}),
])
def test_parse_tool_choice(choice: dict[str, Any], expected: Any) -> None:
    body = parse(tools=[WEATHER], tool_choice=choice).body
    assert body["tool_choice"] == expected and "parallel_tool_calls" not in body


def test_parse_tool_choice_without_tools_is_dropped() -> None:
    body = parse(tool_choice={"type": "auto"}).body
    assert "tool_choice" not in body and "tools" not in body


def test_parse_merges_consecutive_turns_and_prefill() -> None:
    body = parse(messages=[
        {"role": "user", "content": "One."},
        {"role": "user", "content": [{"type": "text", "text": "Two."}]},
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                          {"type": "text", "text": "The answer is ("}]},
    ]).body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "One."}, {"type": "text", "text": "Two."}]},
        {"role": "assistant", "content": "The answer is ("},
    ]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


def test_parse_empty_final_assistant_message() -> None:
    body = parse(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]).body
    assert body["messages"] == [{"role": "user", "content": "Hi"}] and "continue_final_message" not in body


def test_parse_output_config_format() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    body = parse(output_config={"effort": "low", "format": {"type": "json_schema", "schema": schema}}).body
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}


def test_parse_not_json() -> None:
    with pytest.raises(APIError) as info:
        parse_messages(b"{not json")
    assert info.value.status == 400


def _with(path: str, value: Any) -> dict[str, Any]:
    """BASE (with tools and the tool history) with the field at `path` (dotted, list indices as numbers) set."""
    body = copy.deepcopy({**BASE, "messages": TOOL_HISTORY, "tools": [WEATHER]})
    *parents, last = path.split(".")
    node: Any = body
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return body


_DELETE = object()
_IMAGE = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}


@pytest.mark.parametrize(("path", "value", "param", "fragment"), [
    ("model", _DELETE, "model", "Field required"),
    ("model", 3, "model", "string"),
    ("max_tokens", _DELETE, "max_tokens", "Field required"),
    ("max_tokens", 0, "max_tokens", "greater than or equal to 1"),
    ("max_tokens", "64", "max_tokens", "integer"),
    ("max_tokens", True, "max_tokens", "integer"),
    ("messages", _DELETE, "messages", "Field required"),
    ("messages", [], "messages", "at least one message"),
    ("messages", "hi", "messages", "list"),
    ("messages.0", "hi", "messages.0", "object"),
    ("messages.0.role", "system", "messages.0.role", "'user' or 'assistant'"),
    ("messages.0.name", "bob", "messages.0.name", "Extra inputs are not permitted"),
    ("messages.0.content", _DELETE, "messages.0.content", "Field required"),
    ("messages.0.content", "", "messages.0", "non-empty content"),
    ("messages.0.content", 5, "messages.0.content", "string or a list"),
    ("messages.1.content.0.text", "", "messages.1.content.0.text", "non-empty"),
    ("messages.1.content.0.text", 5, "messages.1.content.0.text", "string"),
    ("messages.1.content.1", _IMAGE, "messages.1.content.1", "images are not supported by this model"),
    ("messages.2.content.0", _IMAGE, "messages.2.content.0", "images are not supported by this model"),
    ("messages.2.content.0", {"type": "document", "source": {}}, "messages.2.content.0", "documents are not"),
    ("messages.2.content.0", {"type": "tool_use", "id": "x", "name": "get_weather", "input": {}},
     "messages.2.content.0.type", "tool_use blocks are not allowed in user messages"),
    ("messages.1.content.0", {"type": "tool_result", "tool_use_id": "toolu_01"},
     "messages.1.content.0.type", "tool_result blocks are not allowed in assistant messages"),
    ("messages.1.content.0", {"type": "web_search_tool_result"}, "messages.1.content.0.type", "not supported"),
    ("messages.1.content.0", {"type": "bogus"}, "messages.1.content.0.type", "not supported"),
    ("messages.1.content.0", "text", "messages.1.content.0", "object"),
    ("messages.1.content.1.id", _DELETE, "messages.1.content.1.id", "non-empty string"),
    ("messages.1.content.1.name", 7, "messages.1.content.1.name", "non-empty string"),
    ("messages.1.content.1.input", '{"city": "Paris"}', "messages.1.content.1.input", "object"),
    ("messages.2.content.1.tool_use_id", _DELETE, "messages.2.content.1.tool_use_id", "non-empty string"),
    ("messages.2.content.1.tool_use_id", "toolu_99", "messages.2.content.1", "unexpected `tool_use_id`"),
    ("messages.2.content.1", {"type": "text", "text": "no result"}, "messages.1",
     "ids were found without `tool_result` blocks immediately after: toolu_01"),
    ("messages.2.content.1.is_error", "yes", "messages.2.content.1.is_error", "boolean"),
    ("messages.2.content.2.content.0", _IMAGE, "messages.2.content.2.content.0", "images are not supported"),
    ("messages.2.content.2.content.0", {"type": "search_result"}, "messages.2.content.2.content.0.type",
     "expected a text block"),
    ("messages.2.content.2.content", 5, "messages.2.content.2.content", "string or a list"),
    ("system", 5, "system", "string or a list"),
    ("system", [{"type": "image"}], "system.0", "images are not supported"),
    ("system", [{"type": "text"}], "system.0.text", "Field required"),
    ("stop_sequences", "END", "stop_sequences", "list"),
    ("stop_sequences", ["END", 3], "stop_sequences.1", "string"),
    ("stop_sequences", [" "], "stop_sequences.0", "non-whitespace"),
    ("temperature", 1.5, "temperature", "between 0 and 1"),
    ("temperature", "hot", "temperature", "number"),
    ("top_p", 0, "top_p", "greater than 0"),
    ("top_p", 1.1, "top_p", "at most 1"),
    ("top_k", -1, "top_k", "greater than or equal to 0"),
    ("top_k", 2.5, "top_k", "integer"),
    ("stream", "yes", "stream", "boolean"),
    ("metadata", "user", "metadata", "object"),
    ("metadata", {"user_id": 7}, "metadata.user_id", "string"),
    ("metadata", {"session": "s"}, "metadata.session", "Extra inputs are not permitted"),
    ("tools", {"name": "x"}, "tools", "list"),
    ("tools.0", "get_weather", "tools.0", "object"),
    ("tools.0.name", "get weather!", "tools.0.name", "pattern"),
    ("tools.0.name", _DELETE, "tools.0.name", "pattern"),
    ("tools.0.description", 5, "tools.0.description", "string"),
    ("tools.0.input_schema", _DELETE, "tools.0.input_schema", "Field required"),
    ("tools.0.input_schema", "object", "tools.0.input_schema", "JSON schema object"),
    ("tools.0.input_schema", {"type": "object", "properties": {"city": {"type": "text"}}},
     "tools.0.input_schema", "invalid JSON schema"),
    ("tools.0.input_schema", {"type": "object", "required": "city"}, "tools.0.input_schema", "invalid JSON schema"),
    ("tools.0.input_schema", {"type": "string"}, "tools.0.input_schema.type", "'object'"),
    ("tools.0.type", "web_search_20250305", "tools.0.type", "server tools"),
    ("tools", [WEATHER, WEATHER], "tools.1.name", "unique"),
    ("tool_choice", "auto", "tool_choice", "object"),
    ("tool_choice", {"type": "required"}, "tool_choice.type", "'auto', 'any', 'tool' or 'none'"),
    ("tool_choice", {"type": "tool", "name": "get_time"}, "tool_choice.name", "not among the declared tools"),
    ("tool_choice", {"type": "tool"}, "tool_choice.name", "not among the declared tools"),
    ("tool_choice", {"type": "auto", "disable_parallel_tool_use": "no"}, "tool_choice.disable_parallel_tool_use",
     "boolean"),
    ("output_config", {"format": {"type": "json_object"}}, "output_config.format.type", "'json_schema'"),
    ("output_config", {"format": {"type": "json_schema", "schema": {"type": 5}}}, "output_config.format.schema",
     "invalid JSON schema"),
    ("container", "container_01", "container", "not supported"),
    ("mcp_servers", [{"type": "url", "url": "https://x", "name": "x"}], "mcp_servers", "not supported"),
    ("frequency_penalty", 0.5, "frequency_penalty", "Extra inputs are not permitted"),
])
def test_parse_refuses(path: str, value: Any, param: str, fragment: str) -> None:
    exc = refused(_with(path, value))
    assert exc.param == param
    assert exc.message.startswith(f"{param}: ") and fragment in exc.message


def test_parse_refuses_tool_choice_needing_tools() -> None:
    for kind in ("any", "tool"):
        exc = refused({**BASE, "tool_choice": {"type": kind, "name": "get_weather"}})
        assert exc.param == "tool_choice" and "while providing tools" in exc.message


def test_parse_refuses_tool_result_without_tool_use() -> None:
    exc = refused({**BASE, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_01", "content": "x"}]}]})
    assert exc.param == "messages.0.content.0" and "unexpected `tool_use_id`" in exc.message


def test_parse_refuses_a_conversation_of_thinking_only() -> None:
    """Fuzz finding: thinking blocks are dropped, so a conversation of only them was an empty chat request, refused
    in the OpenAI wording without naming the field; now a 400 naming `messages` in the Messages API's wording."""
    thinking = {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "s"},
                                                 {"type": "redacted_thinking", "data": "x"}]}
    exc = refused({**BASE, "messages": [thinking]})
    assert exc.param == "messages" and exc.message.startswith("messages: ") and "thinking" in exc.message


def test_parse_refuses_bad_serving_extension() -> None:
    exc = refused({**BASE, "serving": {"nope": 1}})
    assert exc.param is not None and exc.param.startswith("serving")


# ---- answers -------------------------------------------------------------------------------------------------


def completion(message: dict[str, Any], finish_reason: str = "stop", stop_reason: Any = None,
               **extra: Any) -> dict[str, Any]:
    """A vLLM chat.completion body."""
    return {
        "id": "chatcmpl-7d4e2a", "object": "chat.completion", "created": 1760000000, "model": "qwen2.5-1.5b",
        "choices": [{"index": 0, "message": {"role": "assistant", "reasoning_content": None, "tool_calls": [],
                                             **message},
                     "logprobs": None, "finish_reason": finish_reason, "stop_reason": stop_reason}],
        "usage": {"prompt_tokens": 21, "total_tokens": 30, "completion_tokens": 9, "prompt_tokens_details": None},
        "prompt_logprobs": None, **extra,
    }


TOOL_CALL = {"id": "chatcmpl-tool-9f1c", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}


def test_render_text() -> None:
    out = MessagesEdge(MODEL).render(completion({"content": "Bonjour."}))
    assert out == {
        "id": "msg_7d4e2a", "type": "message", "role": "assistant", "model": MODEL,
        "content": [{"type": "text", "text": "Bonjour."}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 9, "cache_creation_input_tokens": 0,
                  "cache_read_input_tokens": 0},
    }
    message = anthropic.types.Message.model_validate(out)
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour."


def test_render_tool_calls() -> None:
    second = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    out = MessagesEdge(MODEL).render(completion({"content": "Checking.", "tool_calls": [TOOL_CALL, second]},
                                                finish_reason="tool_calls"))
    message = anthropic.types.Message.model_validate(out)
    assert message.stop_reason == "tool_use"
    text, first, other = message.content
    assert text.type == "text" and text.text == "Checking."
    assert first.type == "tool_use" and (first.id, first.name, first.input) == (
        "chatcmpl-tool-9f1c", "get_weather", {"city": "Paris"})
    assert other.type == "tool_use" and other.id.startswith("toolu_") and other.input == {"city": "Rome"}


def test_render_forced_tool_call_finishing_with_stop() -> None:
    out = MessagesEdge(MODEL).render(completion({"content": None, "tool_calls": [TOOL_CALL]}))
    assert out["stop_reason"] == "tool_use" and [b["type"] for b in out["content"]] == ["tool_use"]


@pytest.mark.parametrize(("finish", "matched", "stop_reason", "stop_sequence"), [
    ("stop", "END", "stop_sequence", "END"),
    ("stop", 151645, "end_turn", None),  # vLLM reports a stop token id: the model's own end of turn
    ("stop", "other", "end_turn", None),
    ("length", None, "max_tokens", None),
    ("content_filter", None, "refusal", None),
])
def test_render_stop_reasons(finish: str, matched: Any, stop_reason: str, stop_sequence: str | None) -> None:
    out = MessagesEdge(MODEL, ["END"]).render(completion({"content": "x"}, finish, matched))
    assert (out["stop_reason"], out["stop_sequence"]) == (stop_reason, stop_sequence)
    anthropic.types.Message.model_validate(out)


def test_render_cached_tokens_and_serving_extension() -> None:
    body = completion({"content": "x"}, serving={"route": "default", "engine": "qwen"})
    body["usage"]["prompt_tokens_details"] = {"cached_tokens": 16}
    out = MessagesEdge(MODEL).render(body)
    assert out["usage"] == {"input_tokens": 5, "output_tokens": 9, "cache_creation_input_tokens": 0,
                            "cache_read_input_tokens": 16}
    assert out["serving"] == {"route": "default", "engine": "qwen"}


def test_render_empty_answer_and_bad_arguments() -> None:
    call = {**TOOL_CALL, "function": {"name": "get_weather", "arguments": "not json"}}
    out = MessagesEdge(MODEL).render(completion({"content": "", "tool_calls": [call]}))
    assert out["content"] == [{"type": "tool_use", "id": TOOL_CALL["id"], "name": "get_weather", "input": {}}]
    assert MessagesEdge(MODEL).render(completion({"content": ""}))["content"] == []


# ---- streams -------------------------------------------------------------------------------------------------

CHUNK_ID = "chatcmpl-b31f"


def chunk(delta: dict[str, Any], finish_reason: str | None = None, stop_reason: Any = None) -> str:
    """One vLLM `chat.completion.chunk` SSE event."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    if finish_reason is not None:
        choice["stop_reason"] = stop_reason
    data = {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1760000000, "model": "qwen2.5-1.5b",
            "choices": [choice]}
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def usage_chunk(prompt: int = 12, completion: int = 7, **extra: Any) -> str:
    data = {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1760000000, "model": "qwen2.5-1.5b",
            "choices": [], "usage": {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                                     "completion_tokens": completion}, **extra}
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


TEXT_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Bon"}),
    chunk({"content": "jour"}),
    chunk({"content": "."}),
    chunk({"content": ""}, "stop"),
    usage_chunk(serving={"route": "default"}),
    DONE,
]

TOOL_STREAM = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me check."}),
    chunk({"tool_calls": [{"id": "chatcmpl-tool-a1", "type": "function", "index": 0,
                           "function": {"name": "get_weather"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'Paris"}'}}]}),
    chunk({"tool_calls": [{"id": "chatcmpl-tool-b2", "type": "function", "index": 1,
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}),
    chunk({"content": ""}, "tool_calls"),
    usage_chunk(30, 25),
    DONE,
]


async def _aiter(events: Iterable[str]) -> AsyncIterator[str]:
    for e in events:
        yield e


async def translate(events: Iterable[str], edge: MessagesEdge | None = None) -> list[str]:
    return [e async for e in (edge or MessagesEdge(MODEL)).stream(_aiter(events))]


def decode(events: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for e in events:
        head, data = e.removesuffix("\n\n").split("\n")
        assert head.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == head.removeprefix("event: ")
        out.append((payload["type"], payload))
    return out


async def test_stream_text_events() -> None:
    events = decode(await translate(TEXT_STREAM))
    assert [kind for kind, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_delta",
        "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"] == "msg_b31f" and start["model"] == MODEL and start["content"] == []
    assert start["stop_reason"] is None and start["usage"] == {"input_tokens": 0, "output_tokens": 0}
    assert events[1][1] == {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    assert events[2][1]["delta"] == {"type": "text_delta", "text": "Bon"}
    delta = events[6][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["input_tokens"] == 12 and delta["usage"]["output_tokens"] == 7
    assert delta["serving"] == {"route": "default"}


async def test_stream_tool_calls_events() -> None:
    events = decode(await translate(TOOL_STREAM))
    starts = [(p["index"], p["content_block"]) for kind, p in events if kind == "content_block_start"]
    assert starts == [
        (0, {"type": "text", "text": ""}),
        (1, {"type": "tool_use", "id": "chatcmpl-tool-a1", "name": "get_weather", "input": {}}),
        (2, {"type": "tool_use", "id": "chatcmpl-tool-b2", "name": "get_weather", "input": {}}),
    ]
    json_deltas = [(p["index"], p["delta"]["partial_json"]) for kind, p in events
                   if kind == "content_block_delta" and p["delta"]["type"] == "input_json_delta"]
    assert json_deltas == [(1, '{"city": "'), (1, 'Paris"}'), (2, '{"city": "Rome"}')]
    assert [p["index"] for kind, p in events if kind == "content_block_stop"] == [0, 1, 2]
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_stream_tool_name_after_id() -> None:
    events = decode(await translate([
        chunk({"tool_calls": [{"id": "call_1", "index": 0, "function": {"arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": '{"city"'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]}, "tool_calls"),
        usage_chunk(), DONE,
    ]))
    blocks = [p for kind, p in events if kind.startswith("content_block")]
    assert blocks[0]["content_block"] == {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}
    assert "".join(p["delta"]["partial_json"] for p in blocks[1:] if "delta" in p) == '{"city": "Oslo"}'


async def test_stream_stop_sequence_and_length() -> None:
    edge = MessagesEdge(MODEL, ["END"])
    events = decode(await translate([chunk({"content": "a"}), chunk({}, "stop", "END"), usage_chunk(), DONE], edge))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
    events = decode(await translate([chunk({"content": "a"}), chunk({}, "length"), usage_chunk(), DONE]))
    assert events[-2][1]["delta"]["stop_reason"] == "max_tokens"


async def test_stream_error_event_ends_the_stream() -> None:
    fault = error_event(APIError(502, "engine qwen failed while streaming", code="engine_error"))
    events = decode(await translate([chunk({"content": "Bon"}), fault, DONE]))
    assert [kind for kind, _ in events] == ["message_start", "content_block_start", "content_block_delta", "error"]
    assert events[-1][1] == {"type": "error", "error": {"type": "api_error",
                                                         "message": "engine qwen failed while streaming"}}
    timeout = error_event(APIError(504, "engine qwen: no token for 30s", code="timeout"))
    assert decode(await translate([chunk({"content": "a"}), timeout, DONE]))[-1][1]["error"]["type"] == "timeout_error"


async def test_stream_of_a_replayed_answer() -> None:
    """A buffered or cached answer replayed as chunks (`serving.api.streaming.replay`) streams the same message."""
    body = completion({"content": "Checking.", "tool_calls": [TOOL_CALL]}, "tool_calls", serving={"route": "r"})
    events = decode(await translate(replay(body, "chat", client_usage=True)))
    blocks = [p["content_block"] for kind, p in events if kind == "content_block_start"]
    assert blocks == [{"type": "text", "text": ""},
                      {"type": "tool_use", "id": "chatcmpl-tool-9f1c", "name": "get_weather", "input": {}}]
    assert events[-2][1]["usage"]["input_tokens"] == 21 and events[-2][1]["serving"] == {"route": "r"}


# ---- the anthropic SDK against the edge ---------------------------------------------------------------------


def sdk(status: int, body: dict[str, Any] | list[str], seen: list[dict[str, Any]] | None = None) -> anthropic.Anthropic:
    """An SDK client whose every request is answered with `body` (JSON, or SSE events when a list)."""

    def handle(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(json.loads(request.content))
        if isinstance(body, list):
            return httpx2.Response(status, content="".join(body).encode(),
                                   headers={"content-type": "text/event-stream"})
        return httpx2.Response(status, json=body)

    return anthropic.Anthropic(api_key="test", base_url="http://gateway", max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(handle)))


SDK_TOOL = {"name": WEATHER["name"], "description": WEATHER["description"], "input_schema": WEATHER["input_schema"]}


def test_sdk_request_parses_and_message_round_trips() -> None:
    seen: list[dict[str, Any]] = []
    edge = MessagesEdge(MODEL)
    answer = edge.render(completion({"content": "Checking.", "tool_calls": [TOOL_CALL]}, "tool_calls"))
    client = sdk(200, answer, seen)
    message = client.messages.create(model=MODEL, max_tokens=64, messages=TOOL_HISTORY, tools=[SDK_TOOL],
                                     tool_choice={"type": "any"}, stop_sequences=["END"], system="Be terse.",
                                     metadata={"user_id": "u1"}, extra_body={"temperature": 0.2})
    parsed = parse_messages(json.dumps(seen[0]).encode())  # what the SDK sends is what we take
    assert parsed.body["tool_choice"] == "required" and parsed.body["user"] == "u1"
    assert parsed.body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert message.stop_reason == "tool_use" and message.usage.input_tokens == 21
    assert message.content[0].type == "text" and message.content[0].text == "Checking."
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.input == {"city": "Paris"} and tool.id == "chatcmpl-tool-9f1c"


async def test_sdk_stream_text() -> None:
    events = await translate(TEXT_STREAM)
    with sdk(200, events).messages.stream(model=MODEL, max_tokens=64, messages=BASE["messages"]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == ["Bon", "jour", "."]
    assert final.id == "msg_b31f" and final.model == MODEL
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == "Bonjour."
    assert final.stop_reason == "end_turn" and final.stop_sequence is None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)


async def test_sdk_stream_tool_calls() -> None:
    events = await translate(TOOL_STREAM)
    with sdk(200, events).messages.stream(model=MODEL, max_tokens=64, messages=BASE["messages"],
                                          tools=[SDK_TOOL]) as stream:
        final = stream.get_final_message()
    text, paris, rome = final.content
    assert text.type == "text" and text.text == "Let me check."
    assert paris.type == "tool_use" and (paris.id, paris.name, paris.input) == (
        "chatcmpl-tool-a1", "get_weather", {"city": "Paris"})
    assert rome.type == "tool_use" and rome.input == {"city": "Rome"}
    assert final.stop_reason == "tool_use" and (final.usage.input_tokens, final.usage.output_tokens) == (30, 25)


async def test_sdk_stream_error_event() -> None:
    events = await translate([chunk({"content": "Bon"}),
                              error_event(APIError(503, "engine qwen is unavailable", code="engine_unavailable")),
                              DONE])
    with pytest.raises(anthropic.APIStatusError) as info, \
            sdk(200, events).messages.stream(model=MODEL, max_tokens=64, messages=BASE["messages"]) as stream:
        stream.get_final_message()
    assert "engine qwen is unavailable" in str(info.value)
    assert info.value.type == "overloaded_error"


def test_sdk_bad_request_error() -> None:
    exc = refused({**BASE, "messages": [{"role": "user", "content": [_IMAGE]}]})
    body = MessagesEdge(MODEL).error_body(exc)
    assert body == {"type": "error", "error": {"type": "invalid_request_error",
                                               "message": "messages.0.content.0: images are not supported by this "
                                                          "model"}}
    with pytest.raises(anthropic.BadRequestError) as info:
        sdk(400, body).messages.create(model=MODEL, max_tokens=64, messages=BASE["messages"])
    assert info.value.status_code == 400 and info.value.api_message == exc.message
    assert info.value.type == "invalid_request_error"


@pytest.mark.parametrize(("status", "kind", "error"), [
    (401, "authentication_error", anthropic.AuthenticationError),
    (403, "permission_error", anthropic.PermissionDeniedError),
    (404, "not_found_error", anthropic.NotFoundError),
    (413, "request_too_large", anthropic.APIStatusError),
    (429, "rate_limit_error", anthropic.RateLimitError),
    (500, "api_error", anthropic.InternalServerError),
    (502, "api_error", anthropic.InternalServerError),
    (503, "overloaded_error", anthropic.InternalServerError),
    (504, "timeout_error", anthropic.InternalServerError),
])
def test_error_envelope_by_status(status: int, kind: str, error: type[Exception]) -> None:
    exc = APIError(status, "nope", extra={"serving": {"route": "r"}})
    body = error_envelope(exc)
    assert body == {"type": "error", "error": {"type": kind, "message": "nope"}, "serving": {"route": "r"}}
    assert error_type(status) == kind
    with pytest.raises(error) as info:
        sdk(status, body).messages.create(model=MODEL, max_tokens=8, messages=BASE["messages"])
    assert getattr(info.value, "api_message", None) == "nope"

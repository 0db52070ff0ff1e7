"""The Responses API edge (`serving.api.responses`): parsing into the chat request, rendering and streaming the
pipeline's chat answers as Responses, `previous_response_id` over a (fake) response store, and a round trip
through the official `openai` SDK (`httpx.MockTransport` serving what the edge renders and streams).

Chat answers are written the way vLLM serializes them (compact `chat.completion.chunk` events, a usage chunk with
`"choices":[]`, `data: [DONE]`, the gateway's OpenAI error event after a fault)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionToolCall,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import TypeAdapter

from serving.api.edge import aiter_of
from serving.api.errors import APIError
from serving.api.responses import ResponsesEdge, delete, retrieve
from serving.api.responses_request import parse_responses
from tests.support.response_store_fake import FakeResponseStore

MODEL = "qwen2.5-0.5b-instruct"
EVENT = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


# ------------------------------------------------------------------------------------------ vLLM-shaped answers


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish:
        choice["stop_reason"] = None
    body = {"id": "chatcmpl-5f1c", "object": "chat.completion.chunk", "created": 1767225600, "model": MODEL,
            "choices": [choice]}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


def usage_chunk(prompt: int = 11, completion: int = 7, cached: int | None = None, **extra: Any) -> str:
    usage: dict[str, Any] = {"prompt_tokens": prompt, "total_tokens": prompt + completion,
                             "completion_tokens": completion}
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    body = {"id": "chatcmpl-5f1c", "object": "chat.completion.chunk", "created": 1767225600, "model": MODEL,
            "choices": [], "usage": usage, **extra}
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"


DONE = "data: [DONE]\n\n"
ROLE = chunk({"role": "assistant", "content": ""})
TEXT_CHUNKS = [ROLE, chunk({"content": "The capital"}), chunk({"content": " of France is Paris."}),
               chunk({"content": ""}, "stop"), usage_chunk(), DONE]
TOOL_CHUNKS = [  # vLLM's hermes tool parser: id + name first, then argument fragments; two parallel calls
    ROLE,
    chunk({"tool_calls": [{"id": "chatcmpl-tool-a1", "type": "function", "index": 0,
                           "function": {"name": "get_weather"}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'Paris"}'}}]}),
    chunk({"tool_calls": [{"id": "chatcmpl-tool-b2", "type": "function", "index": 1,
                           "function": {"name": "get_weather", "arguments": ""}}]}),
    chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"city": "Rome"}'}}]}),
    chunk({"content": ""}, "tool_calls"), usage_chunk(40, 30), DONE,
]
ERROR_EVENT = ('data: {"error": {"message": "engine qwen failed while streaming", "type": "api_error", '
               '"param": null, "code": "engine_error"}}\n\n')


def completion(content: str | None = "Paris.", tool_calls: list[dict[str, Any]] | None = None,
               finish: str = "stop", **extra: Any) -> dict[str, Any]:
    """A `chat.completion` body as the pipeline passes it to `render` (vLLM's `model_dump()`)."""
    return {
        "id": "chatcmpl-77", "object": "chat.completion", "created": 1767225600, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                             "annotations": None, "audio": None, "function_call": None,
                                             "tool_calls": tool_calls or [], "reasoning_content": None},
                     "logprobs": None, "finish_reason": finish, "stop_reason": None}],
        "usage": {"prompt_tokens": 11, "total_tokens": 13, "completion_tokens": 2,
                  "prompt_tokens_details": {"cached_tokens": 4}},
        "prompt_logprobs": None, "kv_transfer_params": None, **extra,
    }


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# ------------------------------------------------------------------------------------------------- helpers


def parse(store: FakeResponseStore | None = None, /, **body: Any) -> Any:
    return parse_responses(json.dumps({"model": MODEL, **body}).encode(), store)


def edge_of(parsed: Any) -> ResponsesEdge:
    assert isinstance(parsed.edge, ResponsesEdge)
    return parsed.edge


async def streamed(edge: ResponsesEdge, chunks: list[str]) -> list[dict[str, Any]]:
    """The edge's SSE events as dicts, each checked: `event:` equals `type`, a valid SDK stream event."""
    out = []
    async for raw in edge.stream(aiter_of(chunks)):
        assert raw.endswith("\n\n")
        lines = raw.strip("\n").split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: ") and len(lines) == 2
        data = json.loads(lines[1][6:])
        assert lines[0][7:] == data["type"]
        EVENT.validate_python(data)
        out.append(data)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


async def answer(parsed: Any, tenant: str, body: dict[str, Any]) -> dict[str, Any]:
    """What the server does for a non-streamed request: prepare, render, finish."""
    edge = edge_of(parsed)
    await edge.prepare(parsed, tenant)
    rendered = edge.render(body)
    await edge.finish(rendered)
    return rendered


def rejects(status: int, param: str | None, code: str | None = None, **body: Any) -> APIError:
    with pytest.raises(APIError) as info:
        parse(**body)
    assert (info.value.status, info.value.param) == (status, param), info.value.message
    if code is not None:
        assert info.value.code == code
    return info.value


# ------------------------------------------------------------------------------------------------- parsing


def test_parse_string_input_and_instructions():
    parsed = parse(input="Capital of France?", instructions="Answer in one word.")
    assert parsed.body["messages"] == [{"role": "system", "content": "Answer in one word."},
                                       {"role": "user", "content": "Capital of France?"}]
    assert parsed.endpoint == "chat" and parsed.model == MODEL and not parsed.stream
    assert parsed.client_usage is True
    edge = edge_of(parsed)
    assert edge.name == "responses" and edge.id.startswith("resp_") and len(edge.id) == 37
    assert len(parsed.request.messages) == 2


def test_parse_message_items_of_every_shape():
    parsed = parse(input=[
        {"role": "user", "content": "plain"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "answer", "annotations": [], "logprobs": []}]},
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": [{"type": "input_text", "text": "dev"}]},
    ])
    assert parsed.body["messages"] == [
        {"role": "user", "content": "plain"}, {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "answer"}, {"role": "system", "content": "sys"},
        {"role": "system", "content": "dev"},  # developer: system (chat templates rarely know it)
    ]


def test_parse_function_calls_and_outputs():
    parsed = parse(tools=[WEATHER], input=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}',
         "id": "fc_1", "status": "completed"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": '{"city":"Rome"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "assistant", "content": "Checking once more."},
        {"type": "function_call", "call_id": "call_3", "name": "get_weather", "arguments": "{}"},
    ])
    assert parsed.body["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", '{"city":"Paris"}'),
                                                              call("call_2", "get_weather", '{"city":"Rome"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
        {"role": "assistant", "content": "Checking once more.", "tool_calls": [call("call_3", "get_weather", "{}")]},
    ]


def test_parse_tools_choice_format_and_sampling():
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    parsed = parse(
        input="hi", tools=[{**WEATHER, "strict": True}], tool_choice={"type": "function", "name": "get_weather"},
        parallel_tool_calls=False, text={"format": {"type": "json_schema", "name": "out", "schema": schema,
                                                    "strict": True}},
        max_output_tokens=64, temperature=0.2, top_p=0.9, user="u-1", stream=True, store=False,
        metadata={"ticket": "42"}, reasoning={"effort": "low"}, include=["message.output_text.logprobs"],
        truncation="disabled", background=False, serving={"route": "fast"},
    )
    body = parsed.body
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city", "parameters": WEATHER["parameters"],
        "strict": True}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "out", "schema": schema,
                                                                              "strict": True}}
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["user"]) == (64, 0.2, 0.9, "u-1")
    assert "serving" not in body and parsed.overrides.route == "fast"
    assert parsed.stream and parsed.client_usage and body["stream_options"] == {"include_usage": True}
    assert parse(input="x", text={"format": {"type": "json_object"}}).body["response_format"] == {
        "type": "json_object"}
    assert "response_format" not in parse(input="x", text={"format": {"type": "text"}}).body


def test_parse_empty_tools_and_default_choice_leave_chat_tools_out():
    body = parse(input="hi", tools=[], tool_choice="auto", parallel_tool_calls=True).body
    assert "tools" not in body and "tool_choice" not in body and "parallel_tool_calls" not in body
    assert parse(input="hi", tools=[WEATHER], tool_choice="none").body["tool_choice"] == "none"


def test_parse_max_output_tokens_below_openai_minimum():
    """OpenAI's minimum is 16; this server takes any value >= 1 (a self-hosted model has no reason for one)."""
    assert parse(input="hi", max_output_tokens=1).body["max_tokens"] == 1


def test_parse_nulls_take_defaults():
    parsed = parse(input="hi", instructions=None, tools=None, temperature=None, previous_response_id=None)
    assert parsed.body["messages"] == [{"role": "user", "content": "hi"}]


IMAGE = {"type": "input_image", "image_url": "https://example.com/cat.png"}
FILE = {"type": "input_file", "file_id": "file-1"}


@pytest.mark.parametrize(("body", "status", "param", "code"), [
    ({"input": "hi", "model": None}, 400, "model", "missing_required_parameter"),
    ({"input": "hi", "model": 7}, 400, "model", None),
    ({}, 400, "input", "missing_required_parameter"),
    ({"input": 5}, 400, "input", None),
    ({"input": []}, 400, "input", "empty_array"),
    ({"input": ["hi"]}, 400, "input[0]", None),
    ({"input": [{"role": "tool", "content": "x"}]}, 400, "input[0].role", "invalid_value"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "input_text", "text": "x"},
                                                                              IMAGE]}]},
     400, "input[1].content[1].type", "unsupported_content"),
    ({"input": [{"role": "user", "content": [FILE]}]}, 400, "input[0].content[0].type", "unsupported_content"),
    ({"input": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, 400, "input[0].content[0].type",
     "invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]}, 400,
     "input[0].content[0].text", None),
    ({"input": [{"role": "user", "content": 3}]}, 400, "input[0].content", None),
    ({"input": [{"role": "user", "content": "x"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
     400, "input[1].call_id", None),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": 1}}]}, 400,
     "input[0].arguments", None),
    ({"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]}, 400, "input[0].name", None),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": [IMAGE]}]}, 400,
     "input[0].output[0].type", "unsupported_content"),
    ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, 400, "input[0].type", "unsupported_value"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, 400, "input[0].type", "unsupported_value"),
    ({"input": [{"content": "no role"}]}, 400, "input[0].type", None),
    ({"input": "hi", "instructions": ["x"]}, 400, "instructions", None),
    ({"input": "hi", "tools": {"type": "function"}}, 400, "tools", None),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools[0].type", "unsupported_value"),
    ({"input": "hi", "tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs"]}]}, 400,
     "tools[1].type", "unsupported_value"),
    ({"input": "hi", "tools": [{"type": "function", "parameters": {}}]}, 400, "tools[0].name", None),
    ({"input": "hi", "tools": [WEATHER, {**WEATHER, "name": "f", "parameters": {"type": "objekt"}}]}, 400,
     "tools[1].parameters", "invalid_schema"),
    ({"input": "hi", "tools": [{**WEATHER, "parameters": {"$schema": 5}}]}, 400, "tools[0].parameters",
     "invalid_schema"),
    ({"input": "hi", "tools": [{**WEATHER, "parameters": "object"}]}, 400, "tools[0].parameters", None),
    ({"input": "hi", "tools": [WEATHER, WEATHER]}, 400, "tools[1].name", None),
    ({"input": "hi", "tools": [{**WEATHER, "strict": "yes"}]}, 400, "tools[0].strict", None),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_time"}}, 400,
     "tool_choice", "invalid_value"),
    ({"input": "hi", "tool_choice": "required"}, 400, "tool_choice", None),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": "sometimes"}, 400, "tool_choice", "invalid_value"),
    ({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "web_search_preview"}}, 400, "tool_choice",
     "invalid_value"),
    ({"input": "hi", "text": "json"}, 400, "text", None),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, 400, "text.format.type", "invalid_value"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}, 400,
     "text.format.name", None),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "o", "schema": {"type": 12}}}}, 400,
     "text.format.schema", "invalid_schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "o", "schema": {"$schema": []}}}}, 400,
     "text.format.schema", "invalid_schema"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "o"}}}, 400, "text.format.schema", None),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens", "invalid_value"),
    ({"input": "hi", "max_output_tokens": "10"}, 400, "max_output_tokens", "invalid_value"),
    ({"input": "hi", "temperature": 3}, 400, "temperature", "invalid_value"),
    ({"input": "hi", "top_p": 0}, 400, "top_p", "invalid_value"),
    ({"input": "hi", "stream": "yes"}, 400, "stream", None),
    ({"input": "hi", "store": "no"}, 400, "store", None),
    ({"input": "hi", "parallel_tool_calls": 1}, 400, "parallel_tool_calls", None),
    ({"input": "hi", "metadata": {"n": 1}}, 400, "metadata", None),
    ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata", None),
    ({"input": "hi", "previous_response_id": 5}, 400, "previous_response_id", None),
    ({"input": "hi", "user": 5}, 400, "user", None),
    ({"input": "hi", "reasoning": "high"}, 400, "reasoning", None),
    ({"input": "hi", "messages": []}, 400, "messages", "unknown_parameter"),
    ({"input": "hi", "conversation": "conv_1"}, 400, "conversation", "unsupported_parameter"),
    ({"input": "hi", "background": True}, 400, "background", "unsupported_parameter"),
    ({"input": "hi", "prompt": {"id": "pmpt_1"}}, 400, "prompt", "unsupported_parameter"),
    ({"input": "hi", "serving": {"route": 5}}, 400, "serving.route", None),
])
def test_parse_rejects(body: dict[str, Any], status: int, param: str, code: str | None):
    rejects(status, param, code, **body)


def test_parse_rejects_media_in_the_models_words():
    exc = rejects(400, "input[0].content[0].type", input=[{"role": "user", "content": [IMAGE]}])
    assert "not supported by this model" in exc.message and exc.envelope()["error"]["type"] == "invalid_request_error"


def test_parse_rejects_bad_json():
    for raw in (b"", b"{", b"[1]"):
        with pytest.raises(APIError) as info:
            parse_responses(raw, None)
        assert info.value.status == 400


def test_previous_response_id_needs_a_store():
    exc = rejects(400, "previous_response_id", "store_not_configured", input="hi", previous_response_id="resp_1")
    assert "policies.redis" in exc.message


# ---------------------------------------------------------------------------------------------- rendering


def test_render_text_answer():
    parsed = parse(input="Capital of France?", instructions="Be brief.", temperature=0.5, max_output_tokens=50,
                   metadata={"k": "v"})
    edge = edge_of(parsed)
    out = edge.render(completion(serving={"route": "fast", "engine": "qwen"}))
    Response.model_validate(out)
    assert (out["id"], out["object"], out["status"], out["model"]) == (edge.id, "response", "completed", MODEL)
    assert out["output"] == [{"type": "message", "id": out["output"][0]["id"], "status": "completed",
                              "role": "assistant", "content": [{"type": "output_text", "text": "Paris.",
                                                                "annotations": [], "logprobs": []}]}]
    assert out["output"][0]["id"].startswith("msg_")
    assert out["usage"] == {"input_tokens": 11, "input_tokens_details": {"cached_tokens": 4, "cache_write_tokens": 0},
                            "output_tokens": 2, "output_tokens_details": {"reasoning_tokens": 0},
                            "total_tokens": 13}
    assert (out["instructions"], out["temperature"], out["max_output_tokens"], out["metadata"]) == (
        "Be brief.", 0.5, 50, {"k": "v"})
    assert (out["tools"], out["tool_choice"], out["parallel_tool_calls"], out["text"]) == (
        [], "auto", True, {"format": {"type": "text"}})
    assert out["error"] is None and out["incomplete_details"] is None
    assert out["store"] is False  # no response store configured
    assert out["serving"] == {"route": "fast", "engine": "qwen"}
    assert Response.model_validate(out).output_text == "Paris."


def test_render_tool_calls():
    edge = edge_of(parse(input="Weather?", tools=[WEATHER], tool_choice="required"))
    out = edge.render(completion(None, [call("chatcmpl-tool-a1", "get_weather", '{"city": "Paris"}'),
                                        call("chatcmpl-tool-b2", "get_weather", '{"city": "Rome"}')], "tool_calls"))
    resp = Response.model_validate(out)
    assert [item["type"] for item in out["output"]] == ["function_call", "function_call"]
    first = out["output"][0]
    assert first["id"].startswith("fc_") and first["status"] == "completed"
    assert (first["call_id"], first["name"], first["arguments"]) == ("chatcmpl-tool-a1", "get_weather",
                                                                     '{"city": "Paris"}')
    assert out["tools"] == [WEATHER] and out["tool_choice"] == "required" and resp.output_text == ""


def test_render_length_is_incomplete():
    out = edge_of(parse(input="Tell a story", max_output_tokens=2)).render(completion("Once upon", finish="length"))
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete" and "completed_at" not in out
    Response.model_validate(out)


def test_error_body_is_the_openai_envelope():
    exc = APIError(429, "Rate limit reached", code="rate_limit_exceeded")
    assert edge_of(parse(input="hi")).error_body(exc) == exc.envelope()


# ---------------------------------------------------------------------------------------------- streaming


async def test_stream_text():
    parsed = parse(input="Capital of France?", stream=True)
    events = await streamed(edge_of(parsed), TEXT_CHUNKS)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    added, delta = events[2], events[4]
    assert added["item"]["type"] == "message" and added["item"]["status"] == "in_progress"
    assert (delta["item_id"], delta["output_index"], delta["content_index"], delta["delta"], delta["logprobs"]) == (
        added["item"]["id"], 0, 0, "The capital", [])
    assert events[6]["text"] == "The capital of France is Paris."
    final = events[-1]["response"]
    assert final["status"] == "completed" and final["id"] == events[0]["response"]["id"]
    assert final["output"] == [events[8]["item"]] and final["output"][0]["status"] == "completed"
    assert final["usage"]["input_tokens"] == 11 and final["usage"]["output_tokens"] == 7
    assert final["usage"]["total_tokens"] == 18


async def test_stream_tool_calls():
    events = await streamed(edge_of(parse(input="Weather?", tools=[WEATHER], stream=True)), TOOL_CHUNKS)
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    first, second = events[2], events[7]
    assert first["item"] == {"type": "function_call", "id": first["item"]["id"], "call_id": "chatcmpl-tool-a1",
                             "name": "get_weather", "arguments": "", "status": "in_progress"}
    assert (first["output_index"], second["output_index"]) == (0, 1)
    assert events[5]["arguments"] == '{"city": "Paris"}' and events[5]["item_id"] == first["item"]["id"]
    output = events[-1]["response"]["output"]
    assert [(o["call_id"], o["arguments"], o["status"]) for o in output] == [
        ("chatcmpl-tool-a1", '{"city": "Paris"}', "completed"), ("chatcmpl-tool-b2", '{"city": "Rome"}', "completed")]


async def test_stream_text_then_tool_call_closes_the_message_first():
    chunks = [ROLE, chunk({"content": "Let me check."}),
              chunk({"tool_calls": [{"id": "chatcmpl-tool-c3", "type": "function", "index": 0,
                                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
              chunk({}, "tool_calls"), usage_chunk(), DONE]
    events = await streamed(edge_of(parse(input="Weather?", tools=[WEATHER], stream=True)), chunks)
    types = [e["type"] for e in events]
    assert types.index("response.output_item.done") < types.index("response.function_call_arguments.delta")
    assert [o["type"] for o in events[-1]["response"]["output"]] == ["message", "function_call"]


async def test_stream_cut_by_length_is_incomplete():
    chunks = [ROLE, chunk({"content": "Once"}), chunk({"content": " upon"}, "length"), usage_chunk(5, 2), DONE]
    events = await streamed(edge_of(parse(input="Story", max_output_tokens=2, stream=True)), chunks)
    assert events[-1]["type"] == "response.incomplete"
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and final["output"][0]["content"][0]["text"] == "Once upon"


async def test_stream_error_event_is_response_failed():
    store = FakeResponseStore()
    parsed = parse(store, input="Capital?", stream=True)
    await edge_of(parsed).prepare(parsed, "acme")
    events = await streamed(edge_of(parsed), [ROLE, chunk({"content": "The cap"}), ERROR_EVENT, DONE])
    assert [e["type"] for e in events][-3:] == ["response.content_part.added", "response.output_text.delta",
                                                "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"] == {"code": "server_error", "message": "engine qwen failed while streaming"}
    assert failed["output"][0]["status"] == "incomplete"
    assert store.records == {}  # failed responses are not stored


async def test_stream_keeps_serving_and_comments():
    chunks = [": keep-alive\n\n", ROLE, chunk({"content": "Hi"}, "stop"),
              usage_chunk(3, 1, cached=2, serving={"route": "fast"}), DONE]
    raw = [e async for e in edge_of(parse(input="hi", stream=True)).stream(aiter_of(chunks))]
    assert raw[2] == ": keep-alive\n\n"
    final = json.loads(raw[-1].split("data: ", 1)[1])["response"]
    assert final["serving"] == {"route": "fast"}
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 2
    assert not any("[DONE]" in e for e in raw)


async def test_stream_stores_before_the_completed_event():
    store = FakeResponseStore()
    parsed = parse(store, input="Capital?", stream=True)
    edge = edge_of(parsed)
    await edge.prepare(parsed, "acme")
    async for raw in edge.stream(aiter_of(TEXT_CHUNKS)):
        if raw.startswith("event: response.completed"):
            assert ("acme", edge.id) in store.records
    record = await store.get("acme", edge.id)
    assert record is not None
    assert record["messages"][-1] == {"role": "assistant", "content": "The capital of France is Paris."}
    assert record["response"]["status"] == "completed"


# ------------------------------------------------------------------------------- store and previous_response_id


async def test_finish_stores_the_conversation_without_instructions():
    store = FakeResponseStore()
    parsed = parse(store, input="Capital of France?", instructions="Be brief.")
    out = await answer(parsed, "acme", completion(serving={"route": "fast"}))
    assert out["store"] is True and "serving" in out
    record = await store.get("acme", out["id"])
    assert record is not None and record["messages"] == [{"role": "user", "content": "Capital of France?"},
                                  {"role": "assistant", "content": "Paris."}]
    assert record["response"] == {k: v for k, v in out.items() if k != "serving"}


async def test_store_false_is_not_stored():
    store = FakeResponseStore()
    out = await answer(parse(store, input="hi", store=False), "acme", completion())
    assert out["store"] is False and store.records == {}


async def test_store_outage_while_saving_still_answers(caplog: pytest.LogCaptureFixture):
    store = FakeResponseStore()
    parsed = parse(store, input="hi")
    await edge_of(parsed).prepare(parsed, "acme")
    store.down = True
    rendered = edge_of(parsed).render(completion())
    await edge_of(parsed).finish(rendered)
    assert "not stored" in caplog.text


async def test_previous_response_rebuilds_history():
    store = FakeResponseStore()
    first = await answer(parse(store, input="Capital of France?", instructions="Answer in French."), "acme",
                         completion("Paris."))
    second = parse(store, input=[{"role": "user", "content": "And of Italy?"}], previous_response_id=first["id"],
                   instructions="Answer in English.")
    out = await answer(second, "acme", completion("Rome."))
    assert second.body["messages"] == [  # the earlier instructions are not carried over
        {"role": "system", "content": "Answer in English."},
        {"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    assert len(second.request.messages) == 4  # revalidated into the engine request
    assert out["previous_response_id"] == first["id"]

    # a third turn: the model calls a tool, the client answers it with only a function_call_output
    third = parse(store, input="Weather there?", tools=[WEATHER], previous_response_id=out["id"])
    calls = await answer(third, "acme", completion(None, [call("call_9", "get_weather", '{"city":"Rome"}')],
                                                   "tool_calls"))
    fourth = parse(store, input=[{"type": "function_call_output", "call_id": "call_9", "output": "sunny"}],
                   tools=[WEATHER], previous_response_id=calls["id"])
    await edge_of(fourth).prepare(fourth, "acme")
    assert fourth.body["messages"][-3:] == [
        {"role": "user", "content": "Weather there?"},
        {"role": "assistant", "content": None, "tool_calls": [call("call_9", "get_weather", '{"city":"Rome"}')]},
        {"role": "tool", "tool_call_id": "call_9", "content": "sunny"},
    ]
    assert len(fourth.body["messages"]) == 7


async def test_previous_response_of_another_tenant_is_unknown():
    store = FakeResponseStore()
    first = await answer(parse(store, input="secret"), "acme", completion())
    errors = []
    for tenant, rid in (("globex", first["id"]), ("acme", "resp_0000")):
        parsed = parse(store, input="again", previous_response_id=rid)
        with pytest.raises(APIError) as info:
            await edge_of(parsed).prepare(parsed, tenant)
        exc = info.value
        assert (exc.status, exc.param, exc.code) == (404, "previous_response_id", "previous_response_not_found")
        assert exc.message == f"Previous response with id '{rid}' not found."
        errors.append(exc.envelope()["error"] | {"message": None})
    assert errors[0] == errors[1]


async def test_previous_response_store_down_is_503():
    store = FakeResponseStore()
    parsed = parse(store, input="again", previous_response_id="resp_1")
    store.down = True
    with pytest.raises(APIError) as info:
        await edge_of(parsed).prepare(parsed, "acme")
    assert (info.value.status, info.value.code) == (503, "store_unavailable")


async def test_retrieve_and_delete():
    store = FakeResponseStore()
    out = await answer(parse(store, input="hi"), "acme", completion())
    assert await retrieve(store, "acme", out["id"]) == {k: v for k, v in out.items() if k != "serving"}
    with pytest.raises(APIError) as info:
        await retrieve(store, "globex", out["id"])
    assert info.value.status == 404 and info.value.message == f"Response with id '{out['id']}' not found."
    with pytest.raises(APIError):
        await delete(store, "globex", out["id"])
    assert await delete(store, "acme", out["id"]) == {"id": out["id"], "object": "response.deleted",
                                                      "deleted": True}
    for fn in (retrieve, delete):
        with pytest.raises(APIError) as info:
            await fn(store, "acme", out["id"])
        assert info.value.status == 404
        with pytest.raises(APIError) as info:
            await fn(None, "acme", out["id"])
        assert (info.value.status, info.value.code) == (400, "store_not_configured")
    store.down = True
    with pytest.raises(APIError) as info:
        await retrieve(store, "acme", out["id"])
    assert (info.value.status, info.value.code) == (503, "store_unavailable")


# ------------------------------------------------------------------------------------ the official openai SDK


class Server:
    """`/v1/responses` as the gateway will serve it, the pipeline replaced by canned vLLM answers; the tenant is
    the API key."""

    def __init__(self) -> None:
        self.store = FakeResponseStore()
        self.answer: dict[str, Any] = completion()
        self.chunks: list[str] = TEXT_CHUNKS
        self.requests: list[Any] = []

    def client(self, key: str = "acme") -> openai.OpenAI:
        http = httpx.Client(transport=httpx.MockTransport(self.handle), base_url="http://gw")
        return openai.OpenAI(api_key=key, base_url="http://gw/v1", http_client=http,  # type: ignore[arg-type]
                             max_retries=0)  # the SDK takes a legacy httpx client too

    def handle(self, request: httpx.Request) -> httpx.Response:
        tenant = request.headers["authorization"].removeprefix("Bearer ")
        try:
            return asyncio.run(self._serve(request, tenant))
        except APIError as exc:
            return httpx.Response(exc.status, json=exc.envelope())

    async def _serve(self, request: httpx.Request, tenant: str) -> httpx.Response:
        path = request.url.path
        if request.method == "POST" and path == "/v1/responses":
            parsed = parse_responses(request.content, self.store)
            self.requests.append(parsed)
            edge = edge_of(parsed)
            await edge.prepare(parsed, tenant)
            if parsed.stream:
                body = "".join([e async for e in edge.stream(aiter_of(self.chunks))])
                return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
            rendered = edge.render(self.answer)
            await edge.finish(rendered)
            return httpx.Response(200, json=rendered)
        response_id = path.rsplit("/", 1)[1]
        if request.method == "GET":
            return httpx.Response(200, json=await retrieve(self.store, tenant, response_id))
        return httpx.Response(200, json=await delete(self.store, tenant, response_id))


def test_sdk_create_text_and_follow_up():
    server = Server()
    client = server.client()
    resp = client.responses.create(model=MODEL, input="Capital of France?", instructions="Be brief.")
    assert isinstance(resp, Response) and resp.output_text == "Paris." and resp.status == "completed"
    assert isinstance(resp.output[0], ResponseOutputMessage) and resp.usage is not None
    assert (resp.usage.input_tokens, resp.usage.input_tokens_details.cached_tokens) == (11, 4)

    server.answer = completion("Rome.")
    again = client.responses.create(model=MODEL, input="And Italy?", previous_response_id=resp.id)
    assert again.output_text == "Rome." and again.previous_response_id == resp.id
    assert [m["content"] for m in server.requests[-1].body["messages"]] == [
        "Capital of France?", "Paris.", "And Italy?"]

    with pytest.raises(openai.NotFoundError) as info:  # another tenant cannot continue it
        server.client("globex").responses.create(model=MODEL, input="x", previous_response_id=resp.id)
    assert info.value.code == "previous_response_not_found" and info.value.param == "previous_response_id"


def test_sdk_create_function_calls():
    server = Server()
    server.answer = completion(None, [call("call_1", "get_weather", '{"city": "Paris"}')], "tool_calls")
    client = server.client()
    resp = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
    (fc,) = resp.output
    assert isinstance(fc, ResponseFunctionToolCall)
    assert (fc.call_id, fc.name, json.loads(fc.arguments)) == ("call_1", "get_weather", {"city": "Paris"})

    server.answer = completion("It is sunny in Paris.")
    final = client.responses.create(model=MODEL, previous_response_id=resp.id, tools=[WEATHER],  # type: ignore[list-item]
                                    input=[{"type": "function_call_output", "call_id": fc.call_id,
                                            "output": "sunny"}])
    assert final.output_text == "It is sunny in Paris."
    assert server.requests[-1].body["messages"][-2:] == [
        {"role": "assistant", "content": None, "tool_calls": [call("call_1", "get_weather", '{"city": "Paris"}')]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


def test_sdk_stream_true_yields_typed_events():
    server = Server()
    events = list(server.client().responses.create(model=MODEL, input="Capital of France?", stream=True))
    assert [type(e) for e in events[:4]] == [ResponseCreatedEvent, ResponseInProgressEvent,
                                             ResponseOutputItemAddedEvent, ResponseContentPartAddedEvent]
    assert isinstance(events[-1], ResponseCompletedEvent)
    text = "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))
    assert text == "The capital of France is Paris." == events[-1].response.output_text
    assert any(isinstance(e, ResponseTextDoneEvent) for e in events)
    assert any(isinstance(e, ResponseOutputItemDoneEvent) for e in events)


def test_sdk_responses_stream_final_response():
    server = Server()
    client = server.client()
    with client.responses.stream(model=MODEL, input="Capital of France?") as stream:
        deltas = [e.delta for e in stream if isinstance(e, ResponseTextDeltaEvent)]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "The capital of France is Paris."
    assert final.usage is not None and final.usage.total_tokens == 18
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored before completed

    server.chunks = TOOL_CHUNKS
    with client.responses.stream(model=MODEL, input="Weather?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        arg_deltas = [e.delta for e in stream if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
        final = stream.get_final_response()
    assert arg_deltas == ['{"city": "', 'Paris"}', '{"city": "Rome"}']
    assert [(o.type, getattr(o, "arguments", None)) for o in final.output] == [
        ("function_call", '{"city": "Paris"}'), ("function_call", '{"city": "Rome"}')]


def test_sdk_stream_failure():
    """`response.failed` is delivered as a typed event; `get_final_response()` then raises (no `completed`)."""
    server = Server()
    server.chunks = [ROLE, chunk({"content": "The cap"}), ERROR_EVENT, DONE]
    with server.client().responses.stream(model=MODEL, input="Capital?") as stream:
        events = list(stream)
        assert isinstance(events[-1], ResponseFailedEvent)
        assert events[-1].response.error is not None and events[-1].response.error.code == "server_error"
        with pytest.raises(RuntimeError, match=r"response\.completed"):
            stream.get_final_response()


def test_sdk_retrieve_delete_and_errors():
    server = Server()
    client = server.client()
    resp = client.responses.create(model=MODEL, input="hi")
    assert client.responses.retrieve(resp.id).id == resp.id
    with pytest.raises(openai.NotFoundError):
        server.client("globex").responses.retrieve(resp.id)
    client.responses.delete(resp.id)  # the SDK returns nothing for a deletion
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=MODEL, input=[{"role": "user", "content": [IMAGE]}])  # type: ignore[list-item,misc]
    assert info.value.param == "input[0].content[0].type"

"""Streams folded back into complete responses (serving.engines.assemble): the result is what the OpenAI SDK and
vLLM's protocol models accept as a non-streamed answer, with text, tool calls, logprobs and usage intact."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from ray.serve.llm.openai_api_models import ChatCompletionResponse, CompletionResponse

from serving.engines.assemble import StreamAssembler
from serving.engines.base import EngineFailed, EngineRejected

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "smollm2-v1"}


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def chat_chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None, index: int = 0) -> str:
    return sse({**HEAD, "choices": [{"index": index, "delta": delta, "logprobs": logprobs,
                                     "finish_reason": finish}]})


def token_lp(token: str, lp: float) -> dict[str, Any]:
    return {"content": [{"token": token, "logprob": lp, "bytes": list(token.encode()), "top_logprobs": []}]}


USAGE = sse({**HEAD, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})


def fold(endpoint: str, chunks: list[str]) -> dict[str, Any]:
    asm = StreamAssembler(endpoint)
    for c in chunks:
        asm.add(c)
    return asm.response()


def test_chat_text_logprobs_and_usage() -> None:
    body = fold("chat", [
        chat_chunk({"role": "assistant", "content": ""}),
        chat_chunk({"content": "Par"}, logprobs=token_lp("Par", -0.1)),
        chat_chunk({"content": "is"}, logprobs=token_lp("is", -0.2)),
        chat_chunk({"content": "."}, logprobs=token_lp(".", -0.3)),
        chat_chunk({}, finish="stop"),
        USAGE, "data: [DONE]\n\n",
    ])
    completion = ChatCompletion.model_validate(body)
    ChatCompletionResponse.model_validate(body)
    assert completion.id == "chatcmpl-1" and completion.model == "smollm2-v1"
    choice = completion.choices[0]
    assert choice.message.content == "Paris." and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None and [t.logprob for t in choice.logprobs.content or []] == [-0.1, -0.2, -0.3]
    assert completion.usage is not None and completion.usage.total_tokens == 12


def test_chat_tool_call_deltas_merge_by_index() -> None:
    body = fold("chat", [
        chat_chunk({"role": "assistant"}),
        chat_chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                    "function": {"name": "get_weather", "arguments": ""}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chat_chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                                    "function": {"name": "get_time", "arguments": "{}"}}]}),
        chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
        chat_chunk({}, finish="tool_calls"),
        USAGE,
    ])
    message = ChatCompletion.model_validate(body).choices[0].message
    assert message.content is None
    calls = message.tool_calls or []
    assert [(c.id, c.function.name) for c in calls] == [("call_a", "get_weather"), ("call_b", "get_time")]  # type: ignore[union-attr]
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_several_choices_stay_apart() -> None:
    body = fold("chat", [
        chat_chunk({"role": "assistant", "content": "A"}, index=0),
        chat_chunk({"role": "assistant", "content": "B"}, index=1),
        chat_chunk({"content": "a"}, index=0),
        chat_chunk({}, finish="length", index=1),
        chat_chunk({}, finish="stop", index=0),
    ])
    choices = ChatCompletion.model_validate(body).choices
    assert [(c.index, c.message.content, c.finish_reason) for c in choices] == [(0, "Aa", "stop"), (1, "B", "length")]
    assert "usage" not in body  # the client did not ask for usage and none came


def test_completions_text_and_logprob_lists() -> None:
    head = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": "tiny"}

    def chunk(text: str, lp: float | None = None, finish: str | None = None) -> str:
        logprobs = None if lp is None else {"tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}],
                                            "text_offset": [0]}
        return sse({**head, "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish,
                                         "stop_reason": None}]})

    body = fold("completions", [chunk(" one", -1.0), chunk(" two", -2.0), chunk("", finish="length"),
                                sse({**head, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 2,
                                                                      "total_tokens": 4}})])
    completion = Completion.model_validate(body)
    CompletionResponse.model_validate(body)
    assert completion.object == "text_completion"
    assert completion.choices[0].text == " one two" and completion.choices[0].finish_reason == "length"
    assert completion.choices[0].logprobs is not None
    assert completion.choices[0].logprobs.token_logprobs == [-1.0, -2.0]


def test_vllm_stop_reason_is_kept() -> None:
    body = fold("chat", [chat_chunk({"role": "assistant", "content": "x"}),
                         sse({**HEAD, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop",
                                                   "stop_reason": "###"}]})])
    assert body["choices"][0]["stop_reason"] == "###"


@pytest.mark.parametrize("event", [
    'data: {"error": {"message": "boom", "type": "InternalServerError", "code": 500}}\n\n',
    'data: {"object": "error", "message": "boom", "type": "InternalServerError", "code": 500}\n\n',
    "data: {not json\n\n",
])
def test_error_and_malformed_events_raise(event: str) -> None:
    asm = StreamAssembler("chat")
    asm.add(chat_chunk({"role": "assistant", "content": "x"}))
    with pytest.raises(EngineFailed):
        asm.add(event)


def test_a_stream_without_chunks_is_a_failure() -> None:
    asm = StreamAssembler("chat")
    asm.add("data: [DONE]\n\n")
    with pytest.raises(EngineFailed, match="before any answer"):
        asm.response()


def test_an_in_stream_refusal_is_a_client_error_and_a_fault_is_not() -> None:
    """vLLM reports a request it refuses mid-stream (a token id out of vocabulary) as an error event with code 400:
    that is the client's error (a 400, no breaker fault), a 500 event is the engine's (found by fuzzing: a 502)."""
    refusal = {"error": {"message": "Token id 15396422 is out of vocabulary", "type": "BadRequestError",
                         "param": None, "code": 400}}
    with pytest.raises(EngineRejected) as rejected:
        StreamAssembler("completions").add(f"data: {json.dumps(refusal)}\n\n")
    assert rejected.value.status == 400 and "out of vocabulary" in str(rejected.value)
    fault = {"error": {"message": "Internal server error", "type": "InternalServerError", "code": 500}}
    with pytest.raises(EngineFailed):
        StreamAssembler("completions").add(f"data: {json.dumps(fault)}\n\n")

"""`Engine` over Anthropic's Messages API through the official `anthropic` SDK, answering in OpenAI's formats.

Requests (vLLM's `ChatCompletionRequest` / `CompletionRequest`) are mapped to `POST /v1/messages`:

* system/developer messages -> `system` (joined with blank lines); user/assistant messages -> `messages`, with
  consecutive same-role messages merged and OpenAI text parts turned into text blocks; image/audio/file parts,
  legacy `function` messages / `function_call` -> `EngineRejected` (400); `n > 1` -> `EngineRejected`;
* tools: function `tools` -> `tools` (`{"name", "description", "input_schema": parameters}`, an empty object schema
  without parameters; `strict` kept); `tool_choice` "auto" -> `{"type": "auto"}`, "required" -> `{"type": "any"}`,
  "none" -> `{"type": "none"}` (the tools are still sent: the history may use them), a named function ->
  `{"type": "tool", "name"}`; `parallel_tool_calls: false` -> `disable_parallel_tool_use: true` in it (with
  `{"type": "auto"}` when no tool_choice was given); other tool types -> `EngineRejected`;
* history: an assistant message's `tool_calls` -> `tool_use` blocks after its text (`input` = the parsed
  `arguments`, which must be a JSON object: else `EngineRejected` naming `messages[i].tool_calls[j].function.
  arguments`); `tool` messages -> `tool_result` blocks (`tool_use_id`, the text as `content`) of ONE user turn,
  which a following user message's text joins; a tool message that answers no pending call, or a tool call left
  unanswered, -> `EngineRejected`. Ids Anthropic would refuse (outside `[a-zA-Z0-9_-]`) are rewritten the same way
  in calls and results;
* `max_completion_tokens` / `max_tokens` (else `default_max_tokens`: Anthropic requires one); `stop` ->
  `stop_sequences`; `user` -> `metadata.user_id`; `response_format` json_object / json_schema -> an instruction
  appended to the system prompt ("Reply with only a JSON object ..." + the schema);
* `temperature` (clamped to [0, 1]) and `top_p` are sent only with `send_sampling_params=True`: the API version the
  SDK speaks (`anthropic-version: 2026-10-21`) rejects them (400 "Extra inputs are not permitted"), even at their
  defaults; older API versions and some proxies accept them. Logprobs, seed, penalties, logit_bias are ignored
  (Anthropic has none; the router skips its confidence gate for Anthropic tiers);
* completions: the prompt (a string, or a list of one string) is one user message; the answer comes back in the
  `text_completion` shape (`echo` prepends the prompt; `suffix`, `best_of > 1`, several prompts -> rejected);
  tools do not apply.

Non-streamed: yields ONE `Completed` holding an `openai.types.chat.ChatCompletion` / `openai.types.Completion`
(id = the message id; `tool_use` blocks -> `message.tool_calls` `{"id", "type": "function", "function": {"name",
"arguments": json.dumps(input)}}` with `content` None when there is no text; finish_reason mapped:
end_turn/stop_sequence/pause_turn -> stop, max_tokens/model_context_window_exceeded -> length, tool_use ->
tool_calls, refusal -> content_filter; usage with prompt_tokens = input + cache tokens).
Streamed: the raw event stream becomes `chat.completion.chunk` (or `text_completion`) SSE `Chunk`s: a role chunk,
one chunk per text delta, per `tool_use` block a chunk `delta.tool_calls=[{"index": k, "id", "type": "function",
"function": {"name", "arguments": ""}}]` (k counts tool calls from 0) then one `{"index": k, "function":
{"arguments": partial_json}}` per `input_json_delta` (`"{}"` at the block's end when none came), a finish chunk,
the usage chunk (`"choices": []`) when `stream_options.include_usage`, then `data: [DONE]`.

Errors map like `serving.engines.openai_compat` (see its table; 529 overloaded -> `EngineUnavailable`, or
`EngineRateLimited` with a retry-after); an in-stream `error` event -> `EngineFailed`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import anthropic
from openai.types import Completion
from openai.types.chat import ChatCompletion

from serving.engines.anthropic_mapping import finish_reason, messages_kwargs, openai_usage
from serving.engines.base import (
    Chunk,
    Completed,
    Endpoint,
    EngineFailed,
    EngineItem,
    EngineTimeout,
    EngineUnavailable,
)
from serving.engines.cloud_http import (
    DONE,
    HTTP_ERRORS,
    HTTP_TIMEOUT_ERRORS,
    Redactor,
    request_body,
    sdk_http_client,
    sse,
    status_error,
)
from serving.observability.tracing import inject_headers

_CALL_ERRORS: tuple[type[BaseException], ...] = (
    anthropic.AnthropicError, asyncio.TimeoutError, *HTTP_ERRORS, ValueError,
)


def _error_fields(body: object, default: str) -> tuple[str, str | None]:
    """(message, code) from an Anthropic error body `{"type": "error", "error": {"type", "message", "details"}}`;
    the code is `details.error_code`, else the error type (e.g. `invalid_request_error`)."""
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        error = body["error"]
        message = error.get("message")
        details = error.get("details")
        code = details.get("error_code") if isinstance(details, Mapping) else None
        code = code if isinstance(code, str) else error.get("type")
        return (message if isinstance(message, str) and message else default), (str(code) if code else None)
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None
    return default, None


class AnthropicEngine:
    """An `Engine` over Anthropic's Messages API (see the module docstring for the mapping)."""

    def __init__(
        self,
        name: str,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 100,
        default_max_tokens: int | None = 1024,
        send_sampling_params: bool = False,
    ):
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.default_max_tokens = default_max_tokens or 1024
        self.send_sampling_params = send_sampling_params
        self._redact = Redactor(api_key)
        self._http, timeout = sdk_http_client(anthropic.DefaultAsyncHttpxClient, timeout_s, max_connections)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout, http_client=self._http
        )

    def __repr__(self) -> str:
        return f"AnthropicEngine(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    # -- request mapping ----------------------------------------------------------------------------------------

    def build_kwargs(self, endpoint: Endpoint, request: Any) -> dict[str, Any]:
        """The SDK's `messages.create` kwargs for an OpenAI chat/completions request; raises `EngineRejected`."""
        return messages_kwargs(self.model, endpoint, request_body(request), self.default_max_tokens,
                               send_sampling_params=self.send_sampling_params)

    # -- errors -------------------------------------------------------------------------------------------------

    def _map_error(self, exc: BaseException, *, in_stream: bool = False) -> BaseException:
        redact = self._redact
        if isinstance(exc, (anthropic.APITimeoutError, asyncio.TimeoutError, *HTTP_TIMEOUT_ERRORS)):
            err: BaseException = EngineTimeout(
                f"engine {self.name}: no answer from {self.model} within {self.timeout_s:g}s"
                + (" (mid-stream)" if in_stream else "")
            )
        elif in_stream:
            if isinstance(exc, anthropic.APIStatusError):
                detail = _error_fields(exc.body, "error")[0]
                err = EngineFailed(f"engine {self.name}: upstream sent an error in the stream: {redact(detail)}")
            elif isinstance(exc, (anthropic.APIConnectionError, *HTTP_ERRORS)):
                err = EngineFailed(f"engine {self.name}: the stream was cut ({type(exc).__name__})")
            else:
                err = EngineFailed(f"engine {self.name}: malformed stream event ({type(exc).__name__})")
        elif isinstance(exc, anthropic.APIStatusError):
            message, code = _error_fields(exc.body, f"HTTP {exc.status_code}")
            err = status_error(self.name, exc.status_code, redact(message), exc.response.headers, code=code)
        elif isinstance(exc, (anthropic.APIConnectionError, *HTTP_ERRORS)):
            err = EngineUnavailable(f"engine {self.name}: cannot reach the API ({type(exc).__name__})")
        else:
            err = EngineFailed(f"engine {self.name}: malformed response from upstream ({type(exc).__name__})")
        return redact.raise_from(err, exc)

    # -- Engine -------------------------------------------------------------------------------------------------

    async def generate(self, endpoint: Endpoint, request: Any) -> AsyncGenerator[EngineItem, None]:
        kwargs = self.build_kwargs(endpoint, request)
        if trace_headers := inject_headers():  # W3C traceparent of this tier attempt
            kwargs["extra_headers"] = trace_headers
        body = request_body(request)
        echo = body.get("prompt") if endpoint == "completions" and body.get("echo") else None
        echo = (echo[0] if isinstance(echo, list) else echo) or ""
        error: BaseException | None = None
        try:
            result = await asyncio.wait_for(self._client.messages.create(**kwargs), self.timeout_s)
        except _CALL_ERRORS as exc:
            error = self._map_error(exc)
        if error is not None:
            raise error  # outside the except block: no implicit __context__ (it may quote the key)
        if not kwargs.get("stream"):
            yield Completed(self._response(endpoint, result, echo))
            return
        opts = body.get("stream_options") or {}
        async for item in self._relay(endpoint, result, bool(opts.get("include_usage")), echo):
            yield item

    def _response(self, endpoint: Endpoint, msg: Any, echo: str) -> Any:
        content = getattr(msg, "content", None) if isinstance(msg, anthropic.types.Message) else None
        usage = getattr(msg, "usage", None)
        if not isinstance(content, list) or usage is None or not getattr(msg, "id", None):
            raise EngineFailed(f"engine {self.name}: malformed response from upstream (no message content)")
        text = "".join(getattr(b, "text", "") or "" for b in content if getattr(b, "type", None) == "text")
        tool_calls = [
            {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": json.dumps(b.input)}}
            for b in content
            if getattr(b, "type", None) == "tool_use"
        ]
        reason = finish_reason(getattr(msg, "stop_reason", None))
        usage_out = openai_usage(
            usage.input_tokens or 0,
            getattr(usage, "cache_creation_input_tokens", None),
            getattr(usage, "cache_read_input_tokens", None),
            usage.output_tokens or 0,
        )
        model = getattr(msg, "model", None) or self.model
        if endpoint == "chat":
            return ChatCompletion.model_validate(
                {
                    "id": msg.id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": text or (None if tool_calls else ""),
                                **({"tool_calls": tool_calls} if tool_calls else {}),
                            },
                            "logprobs": None,
                            "finish_reason": reason,
                        }
                    ],
                    "usage": usage_out,
                }
            )
        return Completion.model_validate(
            {
                "id": msg.id,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": echo + text, "logprobs": None, "finish_reason": reason}],
                "usage": usage_out,
            }
        )

    async def _relay(self, endpoint: Endpoint, stream: Any, include_usage: bool, echo: str) -> AsyncIterator[Chunk]:
        """Anthropic's raw events as OpenAI chunks; faults while reading raise `EngineFailed` / `EngineTimeout`."""
        chat = endpoint == "chat"
        rid, model, created = "", self.model, int(time.time())
        input_tokens = output_tokens = 0
        cache_creation = cache_read = None
        stop_reason: str | None = None
        stopped = False
        tool_index: dict[int, int] = {}  # content block index -> tool call index (0, 1, ...)
        no_arguments: dict[int, Any] = {}  # tool blocks no argument delta came for yet -> their input at start

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> Chunk:
            return sse(
                json.dumps(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": created,
                        "model": model,
                        "choices": choices,
                        **extra,
                    },
                    separators=(",", ":"),
                )
            )

        def tool_delta(call: dict[str, Any]) -> Chunk:
            return chunk([{"index": 0, "delta": {"tool_calls": [call]}, "logprobs": None, "finish_reason": None}])

        def content(text: str, reason: str | None = None) -> Chunk:
            if chat:
                delta = {"content": text} if reason is None else {}
                return chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}])
            return chunk([{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}])

        iterator = stream.__aiter__()
        try:
            while not stopped:
                error: BaseException | None = None
                try:
                    event = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    error = self._map_error(exc, in_stream=True)
                if error is not None:
                    raise error
                kind = getattr(event, "type", None)
                if kind == "message_start":
                    message = event.message
                    rid, model = message.id, message.model or self.model
                    usage = message.usage
                    if usage is not None:
                        input_tokens = usage.input_tokens or 0
                        cache_creation = getattr(usage, "cache_creation_input_tokens", None)
                        cache_read = getattr(usage, "cache_read_input_tokens", None)
                        output_tokens = usage.output_tokens or 0
                    if chat:
                        yield chunk(
                            [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    if echo:
                        yield content(echo)
                elif kind == "content_block_start":
                    block = event.content_block
                    if getattr(block, "type", None) == "text" and getattr(block, "text", ""):
                        yield content(block.text)
                    elif getattr(block, "type", None) == "tool_use" and chat:
                        k = tool_index[event.index] = len(tool_index)
                        no_arguments[event.index] = block.input
                        fn = {"name": block.name, "arguments": ""}
                        yield tool_delta({"index": k, "id": block.id, "type": "function", "function": fn})
                elif kind == "content_block_delta":
                    delta = event.delta
                    dtype = getattr(delta, "type", None)
                    if dtype == "text_delta" and delta.text:
                        yield content(delta.text)
                    elif dtype == "input_json_delta" and delta.partial_json and event.index in tool_index:
                        no_arguments.pop(event.index, None)
                        fn = {"arguments": delta.partial_json}
                        yield tool_delta({"index": tool_index[event.index], "function": fn})
                elif kind == "content_block_stop" and event.index in no_arguments:  # the input as it started
                    fn = {"arguments": json.dumps(no_arguments.pop(event.index) or {})}
                    yield tool_delta({"index": tool_index[event.index], "function": fn})
                elif kind == "message_delta":
                    stop_reason = event.delta.stop_reason or stop_reason
                    usage = event.usage
                    if usage is not None:
                        output_tokens = usage.output_tokens if usage.output_tokens is not None else output_tokens
                        if getattr(usage, "input_tokens", None) is not None:
                            input_tokens = usage.input_tokens
                        if getattr(usage, "cache_creation_input_tokens", None) is not None:
                            cache_creation = usage.cache_creation_input_tokens
                        if getattr(usage, "cache_read_input_tokens", None) is not None:
                            cache_read = usage.cache_read_input_tokens
                elif kind == "message_stop":
                    stopped = True
                # other content_block_stop, ping and unknown events carry nothing to relay
        finally:
            await stream.close()
        if not stopped or not rid:
            raise EngineFailed(f"engine {self.name}: the stream ended before message_stop")
        yield content("", finish_reason(stop_reason))
        if include_usage:
            yield chunk([], usage=openai_usage(input_tokens, cache_creation, cache_read, output_tokens))
        yield DONE

    async def check_health(self) -> None:
        error: BaseException | None = None
        try:
            await asyncio.wait_for(self._client.models.list(limit=1), self.timeout_s)
        except _CALL_ERRORS as exc:
            error = self._map_error(exc)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        await self._client.close()

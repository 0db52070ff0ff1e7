"""`Engine` over an OpenAI-compatible HTTP API (OpenAI, proxies, a remote vLLM) through the official `openai` SDK.

What `generate` yields is what the gateway gets from a local engine (see `serving.engines.base.Engine`):

* non-streamed request: ONE `Completed` holding an `openai.types.chat.ChatCompletion` / `openai.types.Completion`;
* streamed request: a `Chunk` `"data: <chunk json>\\n\\n"` per upstream chunk (the usage chunk with `"choices": []`
  included when `stream_options.include_usage`), then `"data: [DONE]\\n\\n"`.

Upstream faults are raised as the engine errors of `serving.engines.base`, never as SDK exceptions:

=====================================================  =====================================================
upstream                                               raised
=====================================================  =====================================================
timeout (connect/read, or `timeout_s` to the answer)   `EngineTimeout`
connection refused / reset before an answer            `EngineUnavailable`
429                                                    `EngineRateLimited(retry_after_s=retry-after[-ms])`
503 / 529 with a retry-after header                    `EngineRateLimited`
502, 503, 504, 529 (no retry-after)                    `EngineUnavailable`
500, other 5xx, 408, 409                               `EngineFailed`
401, 402, 403, 404 (credentials, billing, model name)  `EngineFailed`: the gateway's config is wrong, not the
                                                       client's request; the upstream text is not passed on
other 4xx                                              `EngineRejected(message, status, code, param)`
200 with a non-JSON body, or without `choices`         `EngineFailed("malformed response ...")`
stream cut, bad JSON chunk, `error` event, stream      `EngineFailed` (a read timeout mid-stream:
  ending before any finish_reason                        `EngineTimeout`)
=====================================================  =====================================================

No message ever contains the API key (it is masked wherever an upstream text is quoted).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import openai
from openai.types import Completion
from openai.types.chat import ChatCompletion

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

CHAT_PARAMS = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "user",
        "stream",
        "stream_options",
    }
)
"""The standard OpenAI chat parameters passed upstream; vLLM's extensions (top_k, guided_*, ...) are dropped."""

COMPLETION_PARAMS = frozenset(
    {
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "echo",
        "suffix",
        "best_of",
        "user",
        "stream",
        "stream_options",
    }
)

def _error_fields(body: object, default: str) -> tuple[str, str | None, str | None]:
    """(message, code, param) from an OpenAI error body (`{"error": {...}}` or the inner object)."""
    if isinstance(body, Mapping):
        inner = body.get("error", body)
        if isinstance(inner, Mapping):
            msg = inner.get("message")
            code, param = inner.get("code"), inner.get("param")
            return (
                msg if isinstance(msg, str) and msg else default,
                str(code) if code is not None else None,
                str(param) if param is not None else None,
            )
    if isinstance(body, str) and body.strip():
        return body.strip()[:500], None, None
    return default, None, None


_CALL_ERRORS: tuple[type[BaseException], ...] = (openai.OpenAIError, asyncio.TimeoutError, *HTTP_ERRORS, ValueError)
"""What an SDK call may raise: its own errors, a deadline, a raw transport error, a bad JSON body."""


# ------------------------------------------------------------------------------------------------- engine


class OpenAICompatEngine:
    """An `Engine` over any OpenAI-compatible API.

    `name` is the tier's engine name (used in error messages); `model` the provider's model name sent upstream;
    `timeout_s` bounds connecting, each read, and the whole wait for a non-streamed answer (for a stream: the wait
    for the response headers); `default_max_tokens` is sent when the client sets no max_tokens.
    """

    def __init__(
        self,
        name: str,
        model: str,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_connections: int = 100,
        default_max_tokens: int | None = None,
    ):
        self.name = name
        self.model = model
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.default_max_tokens = default_max_tokens
        self._redact = Redactor(api_key)
        self._http, timeout = sdk_http_client(openai.DefaultAsyncHttpxClient, timeout_s, max_connections)
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout, http_client=self._http
        )

    def __repr__(self) -> str:
        return f"OpenAICompatEngine(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r})"

    # -- request mapping ----------------------------------------------------------------------------------------

    def build_kwargs(self, endpoint: Endpoint, request: Any) -> dict[str, Any]:
        """The SDK's `create` kwargs for `request`: standard OpenAI params only, `model` replaced."""
        allowed = CHAT_PARAMS if endpoint == "chat" else COMPLETION_PARAMS
        kwargs = {k: v for k, v in request_body(request).items() if k in allowed}
        if not kwargs.get("stream"):
            kwargs.pop("stream", None)
            kwargs.pop("stream_options", None)
        kwargs["model"] = self.model
        if self.default_max_tokens is not None and "max_tokens" not in kwargs and "max_completion_tokens" not in kwargs:
            kwargs["max_tokens"] = self.default_max_tokens
        return kwargs

    # -- errors -------------------------------------------------------------------------------------------------

    def _map_error(self, exc: BaseException, *, in_stream: bool = False) -> BaseException:
        redact = self._redact
        if isinstance(exc, (openai.APITimeoutError, asyncio.TimeoutError, *HTTP_TIMEOUT_ERRORS)):
            err: BaseException = EngineTimeout(
                f"engine {self.name}: no answer from {self.model} within {self.timeout_s:g}s"
                + (" (mid-stream)" if in_stream else "")
            )
        elif isinstance(exc, openai.APIStatusError) and not in_stream:
            message, code, param = _error_fields(exc.body, f"HTTP {exc.status_code}")
            if code is None and exc.code is not None:
                code = exc.code
            if param is None and exc.param is not None:
                param = exc.param
            err = status_error(
                self.name, exc.status_code, redact(message), exc.response.headers, code=code, param=param
            )
        elif in_stream:
            if isinstance(exc, openai.APIError) and not isinstance(exc, openai.APIConnectionError):
                detail = redact(_error_fields(exc.body, exc.message)[0])
                err = EngineFailed(f"engine {self.name}: upstream sent an error in the stream: {detail}")
            elif isinstance(exc, (openai.APIConnectionError, *HTTP_ERRORS)):
                err = EngineFailed(f"engine {self.name}: the stream was cut ({type(_root(exc)).__name__})")
            else:
                err = EngineFailed(f"engine {self.name}: malformed stream chunk ({type(exc).__name__})")
        elif isinstance(exc, openai.APIConnectionError):
            err = EngineUnavailable(f"engine {self.name}: cannot reach the API ({type(_root(exc)).__name__})")
        else:  # JSON decode errors, validation errors, anything the SDK raises on a bad 200
            err = EngineFailed(f"engine {self.name}: malformed response from upstream ({type(exc).__name__})")
        return redact.raise_from(err, exc)

    # -- Engine -------------------------------------------------------------------------------------------------

    async def generate(self, endpoint: Endpoint, request: Any) -> AsyncGenerator[EngineItem, None]:
        kwargs = self.build_kwargs(endpoint, request)
        if trace_headers := inject_headers():  # W3C traceparent of this tier attempt
            kwargs["extra_headers"] = trace_headers
        stream = bool(kwargs.get("stream"))
        create = self._client.chat.completions.create if endpoint == "chat" else self._client.completions.create
        error: BaseException | None = None
        try:
            result = await asyncio.wait_for(create(**kwargs), self.timeout_s)
        except _CALL_ERRORS as exc:
            error = self._map_error(exc)
        if error is not None:
            raise error  # outside the except block: no implicit __context__ (it may quote the key)
        if not stream:
            yield Completed(self._check_response(endpoint, result))
            return
        async for item in self._relay(result):
            yield item

    def _check_response(self, endpoint: Endpoint, result: Any) -> Any:
        expected = ChatCompletion if endpoint == "chat" else Completion
        choices = getattr(result, "choices", None) if isinstance(result, expected) else None
        if not isinstance(choices, list) or not choices:
            got = "no choices" if isinstance(result, expected) else type(result).__name__
            raise EngineFailed(f"engine {self.name}: malformed response from upstream ({got})")
        return result

    async def _relay(self, stream: Any) -> AsyncIterator[Chunk]:
        """Upstream chunks as SSE strings, then `[DONE]`; faults while reading raise `EngineFailed`/`Timeout`."""
        iterator = stream.__aiter__()
        finished = False
        try:
            while True:
                error: BaseException | None = None
                try:
                    chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    error = self._map_error(exc, in_stream=True)
                if error is not None:
                    raise error
                choices = getattr(chunk, "choices", None)
                if not isinstance(choices, list):
                    raise EngineFailed(f"engine {self.name}: malformed stream chunk (no choices)")
                finished = finished or any(getattr(c, "finish_reason", None) for c in choices)
                yield sse(chunk.model_dump_json(exclude_unset=True))
        finally:
            await stream.close()
        if not finished:
            raise EngineFailed(f"engine {self.name}: the stream ended before a finish_reason")
        yield DONE

    async def check_health(self) -> None:
        error: BaseException | None = None
        try:
            await asyncio.wait_for(self._client.models.list(), self.timeout_s)
        except _CALL_ERRORS as exc:
            error = self._map_error(exc)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        await self._client.close()


def _root(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc

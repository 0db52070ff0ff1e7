"""Test doubles for the gateway: an `Engine` that answers like vLLM behind Ray Serve LLM, without either.

`FakeEngine` yields what `RayLLMEngine` yields from a real `LLMServer` replica: vLLM's outputs, made typed engine
items by the same `serving.engines.ray_handle.to_item`:

* streamed request: SSE strings built from vLLM's own protocol models, serialized the way vLLM's
  `OpenAIServingChat` / `OpenAIServingCompletion` do: a first chat chunk with `role: assistant`, one
  content delta per token, a finish chunk with `finish_reason`, then (when `stream_options.include_usage`)
  a usage chunk `{"id":…,"object":…,"created":…,"model":…,"choices":[],"usage":{…}}`, then `data: [DONE]`;
* non-streamed request: one `ChatCompletionResponse` / `CompletionResponse` with usage (rebuilt from
  `model_dump()` like Ray Serve LLM's `VLLMEngine.chat` does, so every field counts as set);
* a request vLLM rejects: an `ErrorResponse` first and only (e.g. context length exceeded, code 400);
* with `tool_calls` (a list of calls, or a function of the request giving them): the answer is those calls, the
  way vLLM's tool parsers answer: non-streamed, `message.tool_calls` with `content: null` and finish_reason
  `tool_calls`; streamed, per call a first delta `{index, id, type, function: {name, arguments: ""}}`, then its
  argument fragments, then the finish chunk and the usage chunk;
* `generate("embeddings", request)`: one `Completed` with vLLM's `EmbeddingResponse` (one deterministic vector per
  input, `embedding_dims` long or `request.dimensions`; a base64 float32 string for `encoding_format: base64`).

Faults are configured per instance: `unavailable` (raise `EngineUnavailable` before the first item),
`fail_after=k` (raise `fail_with`, by default `EngineFailed`, after k streamed chunks), `error=` (yield an
error object), `hang` (never answer), `crash` (raise an unexpected exception before the first item),
`healthy=False` (health check fails). Delays: `first_token_delay_s`, `token_delay_s` (between chunks).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import struct
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from ray.serve.llm.openai_api_models import (
    ChatCompletionResponse,
    ChatCompletionStreamResponse,
    CompletionResponse,
    CompletionStreamResponse,
    EmbeddingResponse,
    ErrorResponse,
)

from serving.engines.base import EngineFailed, EngineItem, EngineUnavailable
from serving.engines.ray_handle import to_item

DONE = "data: [DONE]\n\n"
DEFAULT_REPLY = "The capital of France is Paris."


def tokenize(text: str) -> list[str]:
    """The fake's tokens: words with their leading whitespace (`"a b"` -> `["a", " b"]`)."""
    return re.findall(r"\s*\S+", text)


def context_length_error(max_len: int = 2048, requested: int = 5000) -> ErrorResponse:
    """The error object vLLM answers for a prompt longer than the model's context (HTTP 400)."""
    return ErrorResponse(
        error={
            "message": (
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{requested} tokens ({requested - 16} in the messages, 16 in the completion). "
                "Please reduce the length of the messages or completion."
            ),
            "type": "BadRequestError",
            "param": "input_tokens",
            "code": 400,
        }
    )


def sse(data: str) -> str:
    return f"data: {data}\n\n"


ToolCalls = list[dict[str, Any]]
"""Tool calls a `FakeEngine` answers with: each `{"name", "arguments"}` (arguments a JSON string or an object;
optionally an `id`), or already in OpenAI's shape `{"id", "type": "function", "function": {"name", "arguments"}}`."""


def tool_call(name: str, arguments: str | dict[str, Any], call_id: str | None = None) -> dict[str, Any]:
    """One tool call in OpenAI's (and vLLM's) shape; the id is vLLM's `chatcmpl-tool-…` when not given."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": call_id or f"chatcmpl-tool-{uuid.uuid4().hex[:16]}", "type": "function",
            "function": {"name": name, "arguments": args}}


def _openai_call(call: dict[str, Any]) -> dict[str, Any]:
    if "function" in call:
        fn = call["function"]
        return tool_call(fn["name"], fn.get("arguments", ""), call.get("id"))
    return tool_call(call["name"], call.get("arguments", {}), call.get("id"))


def embedding_of(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for `text` (the same text always gets the same vector)."""
    out: list[float] = []
    block = 0
    while len(out) < dims:
        digest = hashlib.sha256(f"{block}:{text}".encode()).digest()
        out += [b / 127.5 - 1.0 for b in digest]
        block += 1
    vec = out[:dims]
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [x / norm for x in vec]


def decode_base64_embedding(data: str) -> list[float]:
    """A base64 embedding (little-endian float32, as vLLM and OpenAI encode it) as floats."""
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


@dataclass
class Call:
    """One request the engine received."""

    endpoint: str
    request: Any


@dataclass
class FakeEngine:
    """An `Engine` (serving.engines.base) answering like vLLM behind Ray Serve LLM."""

    name: str
    reply: str | Callable[[Any], str] = DEFAULT_REPLY
    replies: list[str] = field(default_factory=list)  # consumed one per request before `reply` applies
    token_logprob: float | Callable[[int, str], float] = -0.05  # per token, when the request asks for logprobs
    prompt_tokens: int = 11
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    unavailable: bool = False
    fail_after: int | None = None
    stall_after: int | None = None  # streamed: hang (no more chunks) after this many
    fail_with: type[BaseException] = EngineFailed
    error: Any = None
    hang: bool = False
    crash: bool = False
    healthy: bool = True
    fail_first: int = 0  # the first k requests raise `fail_first_exc()` before answering
    fail_first_exc: Callable[[], BaseException] = lambda: EngineUnavailable("engine is unavailable: 503")
    tool_calls: ToolCalls | Callable[[Any], ToolCalls | None] | None = None  # answer with these calls (see above)
    embedding_dims: int = 8  # embeddings: the vector length when the request sets no `dimensions`
    calls: list[Call] = field(default_factory=list)
    _texts: dict[int, str] = field(default_factory=dict, repr=False)
    started: int = 0
    closed: int = 0

    # -- what a test inspects -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Any]:
        return [c.request for c in self.calls]

    @property
    def last_request(self) -> Any:
        assert self.calls, f"engine {self.name} received no request"
        return self.calls[-1].request

    def text_for(self, request: Any) -> str:
        """The reply text for `request` (picked once per request, when it arrives)."""
        if id(request) in self._texts:
            return self._texts[id(request)]
        if self.replies:
            return self.replies[0]
        return self.reply(request) if callable(self.reply) else self.reply

    def logprob(self, i: int, token: str) -> float:
        return self.token_logprob(i, token) if callable(self.token_logprob) else self.token_logprob

    def calls_for(self, request: Any) -> list[dict[str, Any]]:
        """The tool calls this engine answers `request` with (OpenAI's shape; empty: a text answer)."""
        calls = self.tool_calls(request) if callable(self.tool_calls) else self.tool_calls
        return [_openai_call(c) for c in calls or ()]

    @staticmethod
    def _tool_tokens(calls: list[dict[str, Any]]) -> int:
        """Completion tokens of a tool-call answer: the name and the argument fragments of each call."""
        return sum(1 + len(tokenize(c["function"]["arguments"])) for c in calls)

    def tokens_for(self, request: Any) -> tuple[list[str], str]:
        """The tokens this engine answers `request` with, and the finish reason (max_tokens applies)."""
        tokens = tokenize(self.text_for(request))
        limit = getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None)
        if limit is not None and limit < len(tokens):
            return tokens[:limit], "length"
        return tokens, "stop"

    # -- the Engine protocol --------------------------------------------------------------------------------

    async def check_health(self) -> None:
        if not self.healthy:
            raise EngineUnavailable(f"engine {self.name} is unavailable: ReplicaUnavailable")

    async def generate(self, endpoint: str, request: Any) -> AsyncGenerator[EngineItem, None]:
        self.calls.append(Call(endpoint, request.model_copy(deep=True)))
        self.started += 1
        request = request.model_copy()
        if endpoint != "embeddings":  # an embedding request has no reply text (nor messages for `reply` to read)
            self._texts[id(request)] = self.replies.pop(0) if self.replies else self.text_for(request)
        try:
            if self.started <= self.fail_first:
                raise self.fail_first_exc()
            if self.unavailable:
                raise EngineUnavailable(f"engine {self.name} is unavailable: DeploymentUnavailableError")
            if self.crash:
                raise RuntimeError("unexpected failure inside the engine client")
            if self.hang:
                await asyncio.Event().wait()
            if self.first_token_delay_s:
                await asyncio.sleep(self.first_token_delay_s)
            if self.error is not None:
                yield to_item(self.error)
                return
            if endpoint == "embeddings":
                yield to_item(self._embedding_response(request))
                return
            calls = self.calls_for(request) if endpoint == "chat" else []
            if calls:
                if getattr(request, "stream", False):
                    for chunk in self._tool_chunks(request, calls):
                        yield to_item(chunk)
                else:
                    yield to_item(self._tool_response(request, calls))
                return
            if getattr(request, "stream", False):
                chunks = self._chat_chunks(request) if endpoint == "chat" else self._completion_chunks(request)
                for i, chunk in enumerate(chunks):
                    if self.fail_after is not None and i >= self.fail_after:
                        raise self.fail_with(f"engine {self.name} failed: EngineDeadError")
                    if self.stall_after is not None and i >= self.stall_after:
                        await asyncio.Event().wait()
                    if i and self.token_delay_s:
                        await asyncio.sleep(self.token_delay_s)
                    yield to_item(chunk)
            else:
                if self.token_delay_s:
                    await asyncio.sleep(self.token_delay_s * len(self.tokens_for(request)[0]))
                yield to_item(self._chat_response(request) if endpoint == "chat"
                              else self._completion_response(request))
        finally:
            self._texts.pop(id(request), None)
            self.closed += 1

    # -- vLLM's wire format ---------------------------------------------------------------------------------

    def _usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    @staticmethod
    def _include_usage(request: Any) -> bool:
        opts = getattr(request, "stream_options", None)
        return bool(opts is not None and opts.include_usage)

    def _chat_chunks(self, request: Any) -> list[str]:
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model
        tokens, finish = self.tokens_for(request)
        n = request.n or 1

        def chunk(choices: list[dict[str, Any]]) -> str:
            return sse(ChatCompletionStreamResponse(
                id=rid, object="chat.completion.chunk", created=created, model=model, choices=choices,
            ).model_dump_json(exclude_unset=True))

        out = [chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                       "finish_reason": None}]) for i in range(n)]
        def lp(j: int, token: str) -> dict[str, Any] | None:  # vLLM streams each token's logprob with it
            if not request.logprobs:
                return None
            return {"content": [{"token": token, "logprob": self.logprob(j, token), "bytes": None,
                                 "top_logprobs": []}]}

        for i in range(n):
            body = tokens if finish == "stop" else tokens[:-1]
            out += [chunk([{"index": i, "delta": {"content": t}, "logprobs": lp(j, t), "finish_reason": None}])
                    for j, t in enumerate(body)]
            last = "" if finish == "stop" else tokens[-1]
            out.append(chunk([{"index": i, "delta": {"content": last},
                               "logprobs": lp(len(tokens) - 1, last) if last else None,
                               "finish_reason": finish, "stop_reason": None}]))
        if self._include_usage(request):
            usage = ChatCompletionStreamResponse(
                id=rid, object="chat.completion.chunk", created=created, model=model, choices=[],
                usage=self._usage(n * len(tokens)),
            )
            out.append(sse(usage.model_dump_json(exclude_unset=True, exclude_none=True)))
        out.append(DONE)
        return out

    def _tool_chunks(self, request: Any, calls: list[dict[str, Any]]) -> list[str]:
        """A tool-call answer streamed the way vLLM's tool parsers stream it."""
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), request.model
        n = request.n or 1

        def chunk(i: int, delta: dict[str, Any], finish: str | None = None) -> str:
            choice: dict[str, Any] = {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
            return sse(ChatCompletionStreamResponse(
                id=rid, object="chat.completion.chunk", created=created, model=model, choices=[choice],
            ).model_dump_json(exclude_unset=True))

        out = [chunk(i, {"role": "assistant", "content": ""}) for i in range(n)]
        for i in range(n):
            for k, call in enumerate(calls):
                fn = call["function"]
                out.append(chunk(i, {"tool_calls": [{"index": k, "id": call["id"], "type": "function",
                                                     "function": {"name": fn["name"], "arguments": ""}}]}))
                out += [chunk(i, {"tool_calls": [{"index": k, "function": {"arguments": part}}]})
                        for part in tokenize(fn["arguments"])]
            out.append(chunk(i, {}, "tool_calls"))
        if self._include_usage(request):
            usage = ChatCompletionStreamResponse(
                id=rid, object="chat.completion.chunk", created=created, model=model, choices=[],
                usage=self._usage(n * self._tool_tokens(calls)),
            )
            out.append(sse(usage.model_dump_json(exclude_unset=True, exclude_none=True)))
        out.append(DONE)
        return out

    def _tool_response(self, request: Any, calls: list[dict[str, Any]]) -> ChatCompletionResponse:
        n = request.n or 1
        resp = ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=request.model,
            choices=[{"index": i, "message": {"role": "assistant", "content": None, "tool_calls": calls},
                      "logprobs": None, "finish_reason": "tool_calls", "stop_reason": None} for i in range(n)],
            usage=self._usage(n * self._tool_tokens(calls)),
        )
        return ChatCompletionResponse(**resp.model_dump())

    def _embedding_response(self, request: Any) -> dict[str, Any]:
        """vLLM's `EmbeddingResponse` for an embedding request, as the JSON object Ray Serve LLM hands back."""
        value = request.input
        if isinstance(value, str):
            inputs: list[Any] = [value]
        elif value and all(isinstance(v, int) for v in value):
            inputs = [value]  # one prompt of token ids
        else:
            inputs = list(value)
        dims = request.dimensions or self.embedding_dims
        data, prompt_tokens = [], 0
        for i, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            prompt_tokens += len(tokenize(item)) if isinstance(item, str) else len(item)
            vec = embedding_of(text, dims)
            embedding: list[float] | str = vec
            if request.encoding_format == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()
            data.append({"index": i, "object": "embedding", "embedding": embedding})
        resp = EmbeddingResponse(id=f"embd-{uuid.uuid4().hex}", object="list", created=int(time.time()),
                                 model=request.model, data=data,
                                 usage={"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens})
        return resp.model_dump(mode="json", exclude_unset=True)

    def _completion_chunks(self, request: Any) -> list[str]:
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), request.model
        tokens, finish = self.tokens_for(request)
        n = request.n or 1

        def chunk(index: int, j: int, text: str, finish_reason: str | None) -> str:
            logprobs = None
            if request.logprobs is not None:
                logprobs = {"tokens": [text], "token_logprobs": [self.logprob(j, text)], "text_offset": [0],
                            "top_logprobs": [{}]}
            return sse(CompletionStreamResponse(
                id=rid, object="text_completion", created=created, model=model,
                choices=[{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
                          "stop_reason": None}],
            ).model_dump_json(exclude_unset=True))

        out = []
        for i in range(n):
            out += [chunk(i, j, t, None) for j, t in enumerate(tokens[:-1])]
            out.append(chunk(i, len(tokens) - 1, tokens[-1], finish))
        if self._include_usage(request):
            usage = CompletionStreamResponse(
                id=rid, created=created, model=model, choices=[], usage=self._usage(n * len(tokens)),
            )
            out.append(sse(usage.model_dump_json(exclude_unset=False, exclude_none=True)))
        out.append(DONE)
        return out

    def _chat_response(self, request: Any) -> ChatCompletionResponse:
        tokens, finish = self.tokens_for(request)
        n = request.n or 1
        logprobs = None
        if request.logprobs:
            logprobs = {"content": [{"token": t, "logprob": self.logprob(j, t), "bytes": None, "top_logprobs": []}
                                    for j, t in enumerate(tokens)]}
        resp = ChatCompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()), model=request.model,
            choices=[{"index": i, "message": {"role": "assistant", "content": "".join(tokens)},
                      "logprobs": logprobs, "finish_reason": finish, "stop_reason": None} for i in range(n)],
            usage=self._usage(n * len(tokens)),
        )
        return ChatCompletionResponse(**resp.model_dump())  # as Ray Serve LLM's VLLMEngine.chat rebuilds it

    def _completion_response(self, request: Any) -> CompletionResponse:
        tokens, finish = self.tokens_for(request)
        n = request.n or 1
        logprobs = None
        if request.logprobs is not None:
            logprobs = {"tokens": tokens, "token_logprobs": [self.logprob(j, t) for j, t in enumerate(tokens)],
                        "text_offset": [0] * len(tokens), "top_logprobs": [{} for _ in tokens]}
        resp = CompletionResponse(
            id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=request.model,
            choices=[{"index": i, "text": "".join(tokens), "logprobs": logprobs, "finish_reason": finish,
                      "stop_reason": None} for i in range(n)],
            usage=self._usage(n * len(tokens)),
        )
        return CompletionResponse(**resp.model_dump())


async def scrape(http: Any, path: str = "/metrics") -> dict[str, list[Any]]:
    """GET the Prometheus exposition at `path` -> {sample name: [samples]}."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families((await http.get(path)).text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def metric(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 when none)."""
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

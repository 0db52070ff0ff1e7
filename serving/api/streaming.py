"""Server-sent events, the one SSE module: relaying an engine's stream to the client (bookkeeping done exactly once),
replaying a buffered answer as a stream, and error events."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from serving.api.errors import APIError
from serving.engines.base import EngineFailed, EngineItem, EngineTimeout, EngineUnavailable
from serving.policy.layer import StreamMeter
from serving.routing.progress import DeadlinePassed, StallGuard
from serving.routing.resilience import TierBreaker

logger = logging.getLogger("serving.gateway")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DONE = "data: [DONE]\n\n"

FinishHook = Callable[[int, "dict[str, Any] | None", "float | None"], None]
"""`(status, usage, t_first) -> None`, called once when a stream ends (status 499: the client left)."""


def error_event(exc: APIError) -> str:
    """An OpenAI-shaped error as an SSE event (what a stream ends with after a fault)."""
    return f"data: {json.dumps(exc.envelope())}\n\n"


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


def is_usage_chunk(chunk: str) -> bool:
    """vLLM's final usage chunk: `{"id":…,"choices":[],"usage":{…}}`."""
    return chunk.startswith('data: {"id"') and '"choices":[]' in chunk and '"usage":{' in chunk


class StreamRelay:
    """One streamed answer: passes the engine's SSE chunks through untouched, takes usage from the final usage
    chunk (sent on only if the client asked for it, optionally rewritten by `usage_chunk`), ends the stream with
    an OpenAI error event if the engine fails after the first byte, and calls `on_finish` exactly once.

    Waiting on the engine is bounded by `stall_s` between chunks and by the request's `deadline` (a
    `time.monotonic()` value); time spent sending to a slow client does not count. The tier's `breaker` gets its
    verdict when the stream ends: a success when the engine finished it, a fault when it stalled or broke (the
    stream then ends with a `timeout` / `engine_error` event); the deadline or the client leaving is neither."""

    def __init__(self, gen: AsyncGenerator[EngineItem, None], engine: str, on_finish: FinishHook, *,
                 usage_chunk: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 meter: StreamMeter | None = None, stall_s: float = math.inf, deadline: float | None = None,
                 breaker: TierBreaker | None = None):
        self.gen, self.engine, self.on_finish = gen, engine, on_finish
        self.usage_chunk = usage_chunk
        self.meter = meter
        self.stall_s, self.deadline, self.breaker = stall_s, deadline, breaker
        self.t_first: float | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False

    async def relay(self, first: str, client_usage: bool) -> AsyncIterator[str]:
        self.t_first = time.perf_counter()
        status = 200
        gen = self.gen
        try:
            async with StallGuard(self.stall_s, self.deadline) as guard:
                chunk = first
                while True:
                    guard.hold()
                    if is_usage_chunk(chunk):
                        data = json.loads(chunk[6:])
                        self.usage = data.get("usage")
                        if client_usage:
                            yield sse(self.usage_chunk(data)) if self.usage_chunk is not None else chunk
                    else:
                        yield chunk
                        if self.meter is not None and (check := self.meter.tick()) is not None:
                            refused = await check
                            if refused is not None:  # a budget or quota ran out mid-stream: stop the engine here
                                status = refused.status
                                yield error_event(APIError(refused.status, refused.message, code=refused.code))
                                yield DONE
                                break
                    guard.wait()
                    try:
                        item = await gen.__anext__()
                    except StopAsyncIteration:
                        if self.breaker is not None:
                            self.breaker.record_success()
                        break
                    if not isinstance(item, str):  # an engine sends chunks only once its stream has started
                        raise EngineFailed(f"engine {self.engine} sent a {type(item).__name__} inside a stream")
                    chunk = item
        except Exception as exc:
            # Bytes already went out: end the stream with an error event in the OpenAI shape.
            status, event = self._fault(exc)
            yield error_event(event)
            yield DONE
        finally:
            await self.finish(status)

    def _fault(self, exc: Exception) -> tuple[int, APIError]:
        """The status and error event of a stream the engine broke (a stall or failure also goes to `on_fault`)."""
        if isinstance(exc, EngineUnavailable):
            status, code, message = 503, "engine_unavailable", str(exc)
        elif isinstance(exc, EngineTimeout):
            status, code, message = 504, "timeout", f"engine {self.engine}: {exc}"
        elif isinstance(exc, EngineFailed):
            status, code, message = 502, "engine_error", str(exc)
        else:
            logger.exception("engine %s failed while streaming", self.engine)
            status, code, message = 502, "engine_error", f"engine {self.engine} failed while streaming"
        if self.breaker is not None and not isinstance(exc, DeadlinePassed):
            self.breaker.record_fault(exc)
        return status, APIError(status, message, code=code)

    async def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        await self.gen.aclose()
        self.on_finish(status, self.usage, self.t_first)


class RelayResponse(StreamingResponse):
    """Makes sure the stream's bookkeeping runs even if the client left before the body started (499)."""

    def __init__(self, stream: StreamRelay, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.finish(499)


def replay(body: dict[str, Any], endpoint: str, client_usage: bool) -> Iterator[str]:
    """A complete (buffered or cached) answer as OpenAI stream chunks: role, content, finish, usage, [DONE]."""
    base = {"id": body.get("id"), "created": body.get("created", int(time.time())), "model": body.get("model")}
    serving = body.get("serving")
    if endpoint == "chat":
        base["object"] = "chat.completion.chunk"
        for c in body.get("choices", []):
            i, msg = c.get("index", 0), c.get("message") or {}
            yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
            delta = {k: msg[k] for k in ("content", "refusal") if msg.get(k) is not None}
            if msg.get("tool_calls"):  # stream deltas carry each call's position (what the SDKs accumulate by)
                delta["tool_calls"] = [{"index": k, **call} for k, call in enumerate(msg["tool_calls"])]
            if delta:
                yield sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": c.get("logprobs"),
                                                "finish_reason": None}]})
            yield sse({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": c.get("finish_reason")}]})
    else:
        base["object"] = "text_completion"
        for c in body.get("choices", []):
            yield sse({**base, "choices": [{"index": c.get("index", 0), "text": c.get("text") or "",
                                            "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason")}]})
    if client_usage:
        usage_chunk: dict[str, Any] = {**base, "choices": [], "usage": body.get("usage")}
        if serving is not None:
            usage_chunk["serving"] = serving
        yield sse(usage_chunk)
    yield DONE

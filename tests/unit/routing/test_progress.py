"""Timeouts on progress (serving.routing.progress): a steady generation is never cut, a stall is, the deadline is,
and a client's cancellation stays a cancellation; the engine's stream is closed when the gateway gives up."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from serving.engines.base import Chunk, Completed, EngineItem, EngineTimeout
from serving.routing.progress import StallGuard, collect

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}


def chunk(content: str, finish: str | None = None) -> Chunk:
    return Chunk("data: " + json.dumps({**HEAD, "choices": [{"index": 0, "delta": {"content": content},
                                                             "finish_reason": finish}]}) + "\n\n")


class Stream:
    """An engine stream: `tokens` chunks `gap_s` apart, optionally hanging after `hang_after` chunks."""

    def __init__(self, tokens: int, gap_s: float, hang_after: int | None = None):
        self.tokens, self.gap_s, self.hang_after = tokens, gap_s, hang_after
        self.closed = False

    async def gen(self) -> AsyncGenerator[EngineItem, None]:
        try:
            for i in range(self.tokens):
                if self.hang_after is not None and i >= self.hang_after:
                    await asyncio.Event().wait()
                if i:
                    await asyncio.sleep(self.gap_s)
                yield chunk("x", "stop" if i == self.tokens - 1 else None)
        finally:
            self.closed = True


async def run(stream: Stream, stall_s: float, deadline_in_s: float | None = None) -> Completed:
    gen = stream.gen()
    first = await gen.__anext__()
    deadline = None if deadline_in_s is None else time.monotonic() + deadline_in_s
    return await collect(gen, first, "chat", stall_s, deadline)


async def test_a_steady_generation_longer_than_the_stall_timeout_completes() -> None:
    stream = Stream(tokens=30, gap_s=0.02)  # ~0.6 s in all, never more than 0.02 s between tokens
    done = await run(stream, stall_s=0.15)
    assert done.body["choices"][0]["message"]["content"] == "x" * 30
    assert done.body["choices"][0]["finish_reason"] == "stop" and stream.closed


async def test_a_stall_is_a_timeout_and_closes_the_engine_stream() -> None:
    stream = Stream(tokens=30, gap_s=0.01, hang_after=5)
    start = time.monotonic()
    with pytest.raises(EngineTimeout, match=r"no token for 0\.2 s"):
        await run(stream, stall_s=0.2)
    assert 0.2 <= time.monotonic() - start < 1.5
    assert stream.closed  # the engine sees the call closed: vLLM aborts the request


async def test_the_deadline_ends_a_generation_that_still_progresses() -> None:
    stream = Stream(tokens=1000, gap_s=0.01)
    with pytest.raises(EngineTimeout, match="deadline"):
        await run(stream, stall_s=5.0, deadline_in_s=0.3)
    assert stream.closed


async def test_a_client_cancellation_is_not_a_timeout() -> None:
    stream = Stream(tokens=1000, gap_s=0.01)
    task = asyncio.ensure_future(run(stream, stall_s=5.0))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.closed


async def test_a_complete_first_item_is_returned_as_it_is() -> None:
    async def gen() -> AsyncGenerator[EngineItem, None]:
        yield Completed({"id": "x", "choices": []})

    g = gen()
    first = await g.__anext__()
    assert await collect(g, first, "chat", 1.0, None) is first


async def test_the_guard_uses_one_timer_per_stall_period_not_per_chunk() -> None:
    calls: list[Any] = []
    loop = asyncio.get_running_loop()
    real_call_at = loop.call_at

    def counting_call_at(when: float, cb: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        if getattr(cb, "__self__", None).__class__ is StallGuard:
            calls.append(when)
        return real_call_at(when, cb, *args, **kwargs)

    loop.call_at = counting_call_at  # type: ignore[method-assign]
    try:
        async with StallGuard(0.2) as guard:
            for _ in range(50):
                await asyncio.sleep(0.005)
                guard.progress()
    finally:
        loop.call_at = real_call_at  # type: ignore[method-assign]
    assert 1 <= len(calls) <= 4  # ~0.25 s of chunks: armed once, re-armed at most a few times

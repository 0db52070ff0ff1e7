"""Timeouts on progress, not on length: a generation is given up only when its engine stops producing tokens
(`stall_s` without a chunk) or the request's own deadline passes; an answer that keeps coming is never a timeout.

`StallGuard` costs one attribute write per chunk: a single timer checks the time of the last chunk when it
fires and re-arms itself from there, instead of one timer per chunk. `collect` reads a stream the gateway opened
on the client's behalf (a non-streamed or gated request) and folds it into the complete response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from types import TracebackType

from serving.engines.assemble import StreamAssembler
from serving.engines.base import Completed, EngineFailed, EngineItem, EngineTimeout


class GenerationStalled(EngineTimeout):
    """The engine produced no token for the tier's stall timeout: a fault of the tier (its breaker counts it)."""


class DeadlinePassed(EngineTimeout):
    """The request's own deadline passed while the answer was still coming: not a fault of the tier."""


class StallGuard:
    """`async with StallGuard(stall_s, deadline):` around a loop reading chunks; call `progress()` per chunk.

    When `stall_s` pass without progress the block raises `GenerationStalled`, when the deadline passes
    `DeadlinePassed` (the task is cancelled inside the block, so the work being awaited, e.g. the engine call,
    sees the cancellation and is aborted). A reader that also awaits something else between chunks (a relay sending
    to the client) brackets its engine waits with `wait()` and `hold()`, so only time spent on the engine counts."""

    __slots__ = ("_handle", "_loop", "_task", "deadline", "last", "reason", "stall_s", "waiting")

    def __init__(self, stall_s: float, deadline: float | None = None):
        """`deadline`: a `time.monotonic()` value (inf or None: none)."""
        self.stall_s = stall_s
        self.reason: str | None = None
        self._loop = asyncio.get_running_loop()
        self.deadline = None if deadline is None else self._loop.time() + (deadline - time.monotonic())
        self._task: asyncio.Task[object] | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.last = self._loop.time()
        self.waiting = True

    def progress(self) -> None:
        self.last = self._loop.time()

    def wait(self) -> None:
        """About to await the engine (from now on a stall counts)."""
        self.last = self._loop.time()
        self.waiting = True

    def hold(self) -> None:
        """Busy elsewhere (e.g. sending to a slow client): neither a stall nor the deadline cancels the task."""
        self.waiting = False

    def _arm(self) -> None:
        when = self.last + self.stall_s
        if self.deadline is not None:
            when = min(when, self.deadline)
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        if not self.waiting:
            self.last = now
            self._arm()
            return
        if self.deadline is not None and now >= self.deadline:
            self.reason = "deadline"
        elif now - self.last >= self.stall_s:
            self.reason = "stall"
        else:
            self._arm()
            return
        assert self._task is not None
        self._task.cancel()

    async def __aenter__(self) -> StallGuard:
        self._task = asyncio.current_task()
        self.last = self._loop.time()
        self._arm()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self.reason is not None and exc_type is asyncio.CancelledError:
            assert self._task is not None
            if self._task.uncancel() == 0:  # our cancellation, not the client's
                if self.reason == "deadline":
                    raise DeadlinePassed("the request's deadline passed while the answer was coming") from None
                raise GenerationStalled(f"the engine stalled: no token for {self.stall_s:g} s") from None


async def collect(gen: AsyncGenerator[EngineItem, None], first: EngineItem, endpoint: str, stall_s: float,
                  deadline: float | None) -> Completed:
    """The complete answer of a call the gateway streams internally: `first` and the rest of `gen` folded into
    one response (a `Completed` first item is returned as it is). Raises `GenerationStalled` / `DeadlinePassed`
    (the engine call is closed, so the engine aborts the generation) and `EngineFailed` on a bad stream."""
    if isinstance(first, Completed):
        await gen.aclose()
        return first
    if not isinstance(first, str):
        await gen.aclose()
        raise EngineFailed(f"unexpected first item {type(first).__name__}")
    assembler = StreamAssembler(endpoint)
    assembler.add(first)
    try:
        async with StallGuard(stall_s, deadline) as guard:
            async for item in gen:
                if not isinstance(item, str):
                    raise EngineFailed(f"the engine sent a {type(item).__name__} inside a stream")
                guard.progress()
                assembler.add(item)
    finally:
        await gen.aclose()
    return Completed(assembler.response())

"""Transport-fault handling for tier calls: a circuit breaker per tier and retries with backoff and jitter.

Built on `circuitbreaker` (closed / open / half-open, with a cooldown) and `tenacity` (async retries).
Only transport faults count (`serving.engines.base.TRANSIENT_ERRORS`); an answer that fails a quality gate
is a healthy tier and never trips a breaker.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from time import monotonic
from typing import TypeVar

from circuitbreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreaker
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_exponential_jitter

from serving.config import BreakerConfig, RetryConfig
from serving.engines.base import TRANSIENT_ERRORS, EngineRateLimited, EngineRejected

T = TypeVar("T")
BREAKER_STATES = {STATE_CLOSED: 0, STATE_HALF_OPEN: 1, STATE_OPEN: 2}
"""Gauge values of `serving_breaker_state`."""


class BreakerOpen(Exception):
    """The tier's circuit is open: it is skipped without a call."""


class TierDown(Exception):
    """Every engine of a local tier is known to be down (health probes), or a cloud tier has no API key."""


class _Breaker(CircuitBreaker):
    """`circuitbreaker`'s breaker, which another replica's verdict can open."""

    def force_open(self, remaining_s: float) -> None:
        self._state = STATE_OPEN
        self._opened = monotonic() - max(0.0, self._recovery_timeout - remaining_s)


BreakerHook = Callable[[str, float], None]
"""`(tier, open_remaining_s) -> None`: called when a tier's breaker opens (remaining > 0) or closes again (0)."""


class TierBreaker:
    """A circuit breaker for one tier: `failure_threshold` transport faults in a row open it for `cooldown_s`;
    after the cooldown it is half-open, and the next call's outcome closes or re-opens it. `on_change` hears of
    its own openings and closings (to share them with other gateway replicas); `force_open` applies theirs."""

    def __init__(self, name: str, cfg: BreakerConfig, on_change: BreakerHook | None = None):
        self.name = name
        self.on_change = on_change
        self._cb = _Breaker(
            failure_threshold=cfg.failure_threshold,
            recovery_timeout=cfg.cooldown_s,
            expected_exception=TRANSIENT_ERRORS,
            name=name,
        )

    @property
    def state(self) -> str:
        """closed, open or half_open."""
        return self._cb.state

    def allows(self) -> bool:
        return self._cb.state != STATE_OPEN

    @property
    def open_remaining_s(self) -> float:
        return max(0.0, float(self._cb.open_remaining)) if self._cb.state == STATE_OPEN else 0.0

    def force_open(self, remaining_s: float) -> None:
        """Open for `remaining_s` (another replica opened it); no `on_change`."""
        if remaining_s > self.open_remaining_s:
            self._cb.force_open(remaining_s)

    def _settle(self, exc: BaseException | None) -> None:
        before = self._cb.state
        self._cb.__exit__(type(exc) if exc is not None else None, exc, None)
        after = self._cb.state
        if after != before and self.on_change is not None and (after == STATE_OPEN or before != STATE_CLOSED):
            self.on_change(self.name, self.open_remaining_s if after == STATE_OPEN else 0.0)

    def record_fault(self, exc: BaseException) -> None:
        """Count a fault seen after the call itself returned (a generation that stalled midway)."""
        self._settle(exc)

    def record_success(self) -> None:
        """Count a call whose whole answer came (for calls run with `settle=False`)."""
        self._settle(None)

    async def call(self, fn: Callable[[], Awaitable[T]], *, settle: bool = True) -> T:
        """Run `fn` through the breaker (raises `BreakerOpen` while open). `settle=False`: a successful `fn` is
        not counted yet; the caller calls `record_success` or `record_fault` once the answer is complete."""
        if not self.allows():
            raise BreakerOpen(f"tier {self.name}: circuit open for {self.open_remaining_s:.1f} s more")
        try:
            result = await fn()
        except TRANSIENT_ERRORS as exc:  # a transport fault counts
            self._settle(exc)
            raise
        except EngineRejected:  # the tier answered (it refused this request): it is alive
            self._settle(None)
            raise
        if settle:
            self._settle(None)
        return result


def _is_retryable(cfg: RetryConfig) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        if isinstance(exc, EngineRateLimited) and exc.retry_after_s is not None:
            return exc.retry_after_s <= cfg.max_retry_after_s
        return isinstance(exc, TRANSIENT_ERRORS)

    return check


def _wait(cfg: RetryConfig) -> Callable[[RetryCallState], float]:
    backoff = wait_exponential_jitter(multiplier=cfg.backoff_initial_s, max=cfg.backoff_max_s, jitter=cfg.jitter_s)

    def wait(state: RetryCallState) -> float:
        delay = backoff(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, EngineRateLimited) and exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        return delay

    return wait


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    cfg: RetryConfig,
    deadline: float,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Call `fn` until it succeeds, a non-transient error is raised, the tries are used up, or the next
    backoff would end past `deadline` (a `time.monotonic()` value); the last error is re-raised."""

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        if on_retry is not None and exc is not None and state.next_action is not None:
            on_retry(exc, state.next_action.sleep)

    retrying = AsyncRetrying(
        stop=stop_after_attempt(cfg.attempts) | stop_before_delay(max(0.0, deadline - time.monotonic())),
        wait=_wait(cfg),
        retry=retry_if_exception(_is_retryable(cfg)),
        before_sleep=before_sleep,
        reraise=True,
    )
    return await retrying(fn)

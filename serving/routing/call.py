"""One call to a tier: pick its engine, send the request, wait for the first item; retries and the breaker.

The wait for the first item (the first chunk: the gateway streams from engines, also for non-streamed requests)
is bounded by the tier's `ttft_timeout_s` and the request's deadline; `complete` reads the rest within the tier's
`stall_timeout_s` between tokens (`serving.routing.progress`). Transport faults are retried with backoff
(`tenacity`) and counted by the tier's circuit breaker; a refusal (`EngineRejected`) is neither.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

from serving.engines.base import (
    TRANSIENT_ERRORS,
    Completed,
    Engine,
    EngineFailed,
    EngineItem,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    Rejected,
)
from serving.observability.metrics import GatewayMetrics
from serving.routing.outcomes import Attempt
from serving.routing.progress import GenerationStalled, collect
from serving.routing.resilience import BreakerOpen, TierDown, call_with_retries
from serving.routing.tiers import Tier, TierSet

logger = logging.getLogger("serving.routing")

Started = tuple[Engine, AsyncGenerator[EngineItem, None], EngineItem]
"""(the engine that answered, its item stream, the first item)."""


class DeadlineReached(Exception):
    """The request's deadline passed before this try could start."""


def rejection(item: Rejected) -> Exception:
    """An engine's refusal item as the exception the cascade handles: a 4xx is `EngineRejected`; a 5xx, 408 or 429
    is a fault of the engine (`EngineFailed`), never shown to the client as is."""
    if item.status >= 500 or item.status in (408, 429):
        return EngineFailed(f"engine error {item.status}: {item.message}")
    return EngineRejected(item.message, status=item.status, code=item.code, param=item.param, detail=item)


def outcome_of(exc: BaseException) -> str:
    """An attempt's outcome for a failed call."""
    if isinstance(exc, BreakerOpen):
        return "circuit_open"
    if isinstance(exc, TierDown):
        return "unavailable"
    if isinstance(exc, EngineRejected):
        return "rejected"
    if isinstance(exc, EngineTimeout):
        return "timeout"
    return "transport_error"


class TierCaller:
    """Calls tiers of a `TierSet` (one per gateway replica)."""

    def __init__(self, tiers: TierSet, metrics: GatewayMetrics):
        self.tiers = tiers
        self.metrics = metrics

    async def first_item(self, tier: Tier, engine: Engine, endpoint: str, request: Any, timeout: float) -> Started:
        """One try: send to `engine`, wait up to `timeout` for its first item."""
        req = request.model_copy(update={"model": self.tiers.model_name(tier, engine)})
        gen = engine.generate(endpoint, req)  # type: ignore[arg-type]
        try:
            async with asyncio.timeout(timeout):  # in this task: no extra task per call, unlike wait_for
                first = await gen.__anext__()
        except TimeoutError:
            await gen.aclose()
            raise EngineTimeout(f"{tier.label} did not answer within {timeout:.3g} s") from None
        except StopAsyncIteration:
            raise EngineFailed(f"{tier.label} returned no answer") from None
        except EngineUnavailable as exc:
            if tier.config.model_group is not None and not isinstance(exc, EngineRateLimited):
                self.tiers.health.mark_failed(engine.name)  # the next try (and request) skips it at once
            raise
        except (*TRANSIENT_ERRORS, EngineRejected):
            raise
        except Exception as exc:
            logger.exception("%s failed before answering", tier.label)
            raise EngineFailed(f"{tier.label} failed: {type(exc).__name__}") from None
        except BaseException:
            await gen.aclose()
            raise
        if isinstance(first, Rejected):
            await gen.aclose()
            raise rejection(first)
        return engine, gen, first

    async def complete(self, tier: Tier, gen: AsyncGenerator[EngineItem, None], first: EngineItem, endpoint: str,
                       deadline: float) -> Completed:
        """The whole answer of a started call (read on, within the tier's stall timeout and the deadline); a
        stall or a broken stream counts on the tier's breaker."""
        try:
            done = await collect(gen, first, endpoint, tier.config.stall_timeout_s, deadline)
        except (GenerationStalled, EngineFailed) as exc:
            if tier.breaker is not None:
                tier.breaker.record_fault(exc)
            raise
        if tier.breaker is not None:
            tier.breaker.record_success()
        return done

    async def call(self, tier: Tier, endpoint: str, request: Any, deadline: float, attempt: Attempt,
                   pin: str | None = None, *, whole: bool = False) -> Started:
        """A tier call with its breaker and retries; counts tries and names the engine tried on `attempt`.
        `whole`: the caller reads the whole answer (`complete`, or the stream relay), which gives the breaker its
        verdict once the answer has come or stalled."""

        async def one_try() -> Started:
            timeout = min(tier.config.ttft_timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineReached()
            engine = self.tiers.engine_for(tier, pin)  # TierDown: skip the tier, no retry, no breaker verdict
            attempt.tries += 1
            attempt.model = self.tiers.model_name(tier, engine)
            if tier.breaker is None:
                return await self.first_item(tier, engine, endpoint, request, timeout)
            return await tier.breaker.call(lambda: self.first_item(tier, engine, endpoint, request, timeout),
                                           settle=not whole)

        def on_retry(exc: BaseException, sleep: float) -> None:
            reason = "rate_limited" if isinstance(exc, EngineRateLimited) else outcome_of(exc)
            self.metrics.retries.labels(tier.name, reason).inc()
            logger.info("%s: %s; retrying in %.2f s", tier.label, exc, sleep)

        if tier.breaker is not None and not tier.breaker.allows():
            raise BreakerOpen(f"tier {tier.name}: circuit open for {tier.breaker.open_remaining_s:.1f} s more")
        if tier.config.retry.attempts == 1:
            return await one_try()
        return await call_with_retries(one_try, tier.config.retry, deadline, on_retry)

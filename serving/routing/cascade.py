"""The cascade: generate with the cheapest tier, check the answer, escalate only when it fails.

For each tier of a route's chain: skip it at once if its circuit is open or all its engines are down; call it
(transport faults are retried with backoff, within the tier's timeout and the request's deadline); run the
route's gates on the answer; accept it, or ask the same tier once more with the gates' reasons
(self-correction), or move on to the next tier. When every tier failed, the route's policy returns the best
answer flagged, or a 422.

Ungated streamed requests do not buffer: `open_stream` falls back between tiers only before the first chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from serving.engines.base import (
    TRANSIENT_ERRORS,
    Engine,
    EngineFailed,
    EngineRateLimited,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
)
from serving.observability.metrics import GatewayMetrics
from serving.routing.gates import Answer, Gate, GateContext, GateResult, build_gates, run_gates
from serving.routing.resilience import BREAKER_STATES, BreakerOpen, TierDown, call_with_retries
from serving.routing.routes import Route
from serving.routing.tiers import Tier, TierSet
from serving.routing_config import RequestOverrides, RouteConfig

logger = logging.getLogger("serving.routing")

CORRECTION_PROMPT = (
    "Your previous answer failed these checks:\n{reasons}\n"
    "Answer the original request again, fixing these problems. Reply with the corrected answer only."
)


SAME = object()
"""`cloud_request` default: cloud tiers get the request as sent."""


class CascadeError(Exception):
    """No acceptable answer: the API layer turns this into an OpenAI error envelope."""

    def __init__(self, status: int, message: str, code: str, attempts: list[Attempt], *,
                 detail: Any = None, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.attempts = attempts
        self.detail = detail  # an engine's own error object (e.g. vLLM's context-length error)
        self.retry_after_s = retry_after_s


@dataclass
class Attempt:
    """One call to a tier (or its skip) while serving a request."""

    tier: str
    kind: str  # answer | self_correction | judge
    outcome: str  # accepted | gate_failed | transport_error | rejected | circuit_open | unavailable | timeout
    #               | pii_blocked
    model: str | None = None
    gates: list[GateResult] = field(default_factory=list)
    cost_usd: float = 0.0
    latency_s: float = 0.0
    tries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tier": self.tier, "kind": self.kind, "outcome": self.outcome, "model": self.model,
                               "cost_usd": round(self.cost_usd, 10), "latency_ms": round(self.latency_s * 1000, 1)}
        if self.tries > 1:
            out["tries"] = self.tries
        if self.gates:
            out["gates"] = [g.to_dict() for g in self.gates]
        if self.error:
            out["error"] = self.error
        return out

    @property
    def counted(self) -> bool:
        """Whether it reached a tier (skips of open circuits, down tiers and PII blocks are not attempts)."""
        return self.outcome not in ("circuit_open", "unavailable", "pii_blocked")


@dataclass
class Outcome:
    """The accepted (or best, flagged) answer of a routed request, and how it was reached."""

    route: str
    tenant: str
    answer: Answer | None = None
    tier: str | None = None
    model: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    flagged: bool = False
    streaming: bool = False

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def attempt_count(self) -> int:
        return sum(1 for a in self.attempts if a.counted and a.kind != "judge")

    def headers(self, *, with_cost: bool = True) -> dict[str, str]:
        out = {"x-serving-route": self.route, "x-serving-tier": self.tier or "",
               "x-serving-model": self.model or "", "x-serving-attempts": str(self.attempt_count)}
        if with_cost:
            out["x-serving-cost-usd"] = f"{self.cost_usd:.8f}"
        if self.flagged:
            out["x-serving-flagged"] = "true"
        return out

    def extension(self) -> dict[str, Any]:
        """The `serving` field added to the response body (documented in docs/routing.md)."""
        return {"route": self.route, "tier": self.tier, "model": self.model, "flagged": self.flagged,
                "attempts": [a.to_dict() for a in self.attempts], "cost_usd": round(self.cost_usd, 10)}


@dataclass
class StreamStart:
    """An ungated stream that has its first chunk: relay `first` then the rest of `gen`."""

    outcome: Outcome
    tier: Tier
    gen: AsyncIterator[Any]
    first: Any
    started: float


def _to_body(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    return obj.model_dump(mode="json", exclude_unset=True)


def _is_error(item: Any) -> bool:
    return not isinstance(item, str) and hasattr(item, "error") and not hasattr(item, "choices")


def _rejection(item: Any) -> Exception:
    info = getattr(item, "error", item)
    status = int(getattr(info, "code", 500) or 500)
    message = str(getattr(info, "message", "engine error"))
    if status >= 500 or status in (408, 429):
        return EngineFailed(f"engine error {status}: {message}")
    exc = EngineRejected(message, status=status, param=getattr(info, "param", None))
    exc.detail = item  # type: ignore[attr-defined]
    return exc


def _outcome_of(exc: BaseException) -> str:
    if isinstance(exc, BreakerOpen):
        return "circuit_open"
    if isinstance(exc, TierDown):
        return "unavailable"
    if isinstance(exc, EngineRejected):
        return "rejected"
    if isinstance(exc, EngineTimeout):
        return "timeout"
    return "transport_error"


class _Deadline(Exception):
    pass


class Cascade:
    """Runs requests through routes' tier chains."""

    def __init__(self, tiers: TierSet, metrics: GatewayMetrics):
        self.tiers = tiers
        self.metrics = metrics
        metrics.on_render(self.export_breakers)

    def export_breakers(self) -> None:
        for name, tier in self.tiers.tiers.items():
            self.metrics.breaker_state.labels(name).set(BREAKER_STATES.get(tier.breaker.state, 0))

    # -------------------------------------------------------------------------------------------- planning

    def plan(self, route: Route, overrides: RequestOverrides | None) -> tuple[RouteConfig, dict[str, Gate]]:
        """The route's config and gates with the request's overrides applied (a ValueError names the field)."""
        if overrides is None or (overrides.gates is None and overrides.self_correct is None
                                 and overrides.on_exhausted is None and overrides.deadline_s is None):
            return route.config, dict(route.gates)
        if not route.config.allow_overrides:
            raise ValueError(f"route {route.name} does not accept per-request overrides")
        cfg = overrides.apply(route.config)
        judge = cfg.gates.judge
        if judge is not None and judge.tier not in self.tiers.tiers:
            raise ValueError(f"serving.gates.judge.tier: unknown tier {judge.tier!r}")
        return cfg, dict(build_gates(cfg.gates)) if overrides.gates is not None else dict(route.gates)

    # -------------------------------------------------------------------------------------------- one call

    async def _first(self, tier: Tier, engine: Engine, endpoint: str, request: Any,
                     timeout: float) -> tuple[Engine, Any, Any]:
        """One try: send to `engine`, wait for its first item (the answer, or the first chunk)."""
        req = request.model_copy(update={"model": self.tiers.model_name(tier, engine)})
        gen = engine.generate(endpoint, req)  # type: ignore[arg-type]
        try:
            first = await asyncio.wait_for(gen.__anext__(), timeout)
        except asyncio.TimeoutError:
            await gen.aclose()
            raise EngineTimeout(f"tier {tier.name} did not answer within {timeout:.3g} s") from None
        except StopAsyncIteration:
            raise EngineFailed(f"tier {tier.name} returned no answer") from None
        except EngineUnavailable as exc:
            if tier.config.model_group is not None and not isinstance(exc, EngineRateLimited):
                self.tiers.health.mark_failed(engine.name)  # the next try (and request) skips it at once
            raise
        except (*TRANSIENT_ERRORS, EngineRejected):
            raise
        except Exception as exc:
            logger.exception("tier %s failed before answering", tier.name)
            raise EngineFailed(f"tier {tier.name} failed: {type(exc).__name__}") from None
        except BaseException:
            await gen.aclose()
            raise
        if _is_error(first):
            await gen.aclose()
            raise _rejection(first)
        return engine, gen, first

    async def _call(self, tier: Tier, endpoint: str, request: Any, deadline: float,
                    attempt: Attempt) -> tuple[Engine, Any, Any]:
        """A tier call with its breaker and retries; counts tries on `attempt`."""

        async def one_try() -> tuple[Engine, Any, Any]:
            timeout = min(tier.config.timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise _Deadline()
            engine = self.tiers.engine_for(tier)  # TierDown: skip the tier, no retry, no breaker verdict
            attempt.tries += 1
            return await tier.breaker.call(lambda: self._first(tier, engine, endpoint, request, timeout))

        def on_retry(exc: BaseException, sleep: float) -> None:
            reason = "rate_limited" if isinstance(exc, EngineRateLimited) else _outcome_of(exc)
            self.metrics.retries.labels(tier.name, reason).inc()
            logger.info("tier %s: %s; retrying in %.2f s", tier.name, exc, sleep)

        if not tier.breaker.allows():
            raise BreakerOpen(f"tier {tier.name}: circuit open for {tier.breaker.open_remaining_s:.1f} s more")
        return await call_with_retries(one_try, tier.config.retry, deadline, on_retry)

    def _prepare(self, tier: Tier, endpoint: str, request: Any, gates: list[Gate]) -> Any:
        update: dict[str, Any] = {}
        if getattr(request, "stream", False):
            update.update(stream=False, stream_options=None)
        if tier.logprobs and any(g.name == "confidence" for g in gates) and not request.logprobs:
            update["logprobs"] = True if endpoint == "chat" else 0
        return request.model_copy(update=update) if update else request

    async def _judge(self, outcome: Outcome, deadline: float, tier_name: str, prompt: str, max_tokens: int) -> str:
        from ray.serve.llm.openai_api_models import ChatCompletionRequest

        tier = self.tiers.tiers[tier_name]
        request = ChatCompletionRequest.model_validate({
            "model": tier_name, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0,
        })
        attempt = Attempt(tier_name, "judge", "accepted")
        outcome.attempts.append(attempt)
        start = time.monotonic()
        try:
            engine, _, first = await self._call(tier, "chat", request, deadline, attempt)
        except BaseException as exc:
            attempt.outcome, attempt.error = _outcome_of(exc), str(exc)
            raise
        finally:
            attempt.latency_s = time.monotonic() - start
        answer = Answer.from_body(_to_body(first), "chat")
        attempt.model = self.tiers.model_name(tier, engine)
        self._charge(outcome, tier, attempt, answer)
        return answer.texts[0] if answer.texts else ""

    def _charge(self, outcome: Outcome, tier: Tier, attempt: Attempt, answer: Answer) -> None:
        attempt.cost_usd = tier.cost(answer.prompt_tokens, answer.completion_tokens)
        self.metrics.tier_tokens.labels(tier.name, "prompt").inc(answer.prompt_tokens)
        self.metrics.tier_tokens.labels(tier.name, "completion").inc(answer.completion_tokens)
        if attempt.cost_usd:
            self.metrics.cost.labels(outcome.route, tier.name, outcome.tenant).inc(attempt.cost_usd)

    # ---------------------------------------------------------------------------------------- gated path

    async def run(self, route: Route, cfg: RouteConfig, gates: dict[str, Gate], endpoint: str, request: Any,
                  tenant: str, *, cloud_request: Any = SAME) -> Outcome:
        """Serve a request to completion (non-streamed internally): the accepted or best answer.

        `cloud_request`: what cloud tiers get instead of `request` (its PII redacted), or None to skip them."""
        outcome = Outcome(route.name, tenant)
        deadline = time.monotonic() + cfg.deadline_s
        best: tuple[int, Answer, str, str] | None = None  # (failed gates, answer, tier, model)
        last_exc: BaseException | None = None
        steps = cfg.tiers
        for i, step in enumerate(steps):
            tier = self.tiers.tiers[step.tier]
            step_gates = [g for k, g in gates.items() if step.gates is None or k in step.gates]
            self_correct = step.self_correct if step.self_correct is not None else cfg.self_correct
            base = self._for_tier(tier, request, cloud_request)
            if base is None:
                self._pii_blocked(outcome, route, tier, steps[i + 1].tier if i + 1 < len(steps) else "none")
                continue
            ctx = GateContext(base, endpoint, logprobs_available=tier.logprobs,
                              judge=lambda t, p, m: self._judge(outcome, deadline, t, p, m))
            req = self._prepare(tier, endpoint, base, step_gates)
            reason = ""
            last_local: tuple[str, str] | None = None  # (group, engine) whose answer this tier gated last
            for kind in ("answer", "self_correction"):
                attempt = Attempt(tier.name, kind, "accepted")
                outcome.attempts.append(attempt)
                start = time.monotonic()
                try:
                    engine, _, first = await self._call(tier, endpoint, req, deadline, attempt)
                except _Deadline:
                    attempt.outcome, attempt.error = "timeout", "request deadline reached"
                    self._count(outcome, attempt)
                    return self._exhausted(outcome, cfg, best, deadline_hit=True)
                except Exception as exc:
                    attempt.latency_s = time.monotonic() - start
                    attempt.outcome, attempt.error = _outcome_of(exc), str(exc)
                    self._count(outcome, attempt)
                    last_exc, reason = exc, attempt.outcome
                    break
                attempt.latency_s = time.monotonic() - start
                attempt.model = self.tiers.model_name(tier, engine)
                answer = Answer.from_body(_to_body(first), endpoint)
                self._charge(outcome, tier, attempt, answer)
                attempt.gates = await run_gates(step_gates, answer, ctx)
                for g in attempt.gates:
                    self.metrics.gate_results.labels(route.name, tier.name, g.gate, g.label).inc()
                failed = [g for g in attempt.gates if not g.passed]
                group = tier.config.model_group
                if group is not None and attempt.gates:  # per engine (= model version), for rollout analysis
                    last_local = (group, engine.name)
                    self.metrics.engine_answers.labels(group, engine.name, "gate_fail" if failed else "gate_pass").inc()
                if not failed:
                    self._count(outcome, attempt)
                    outcome.answer, outcome.tier, outcome.model = answer, tier.name, attempt.model
                    return outcome
                attempt.outcome = "gate_failed"
                self._count(outcome, attempt)
                reason = ",".join(g.gate for g in failed)
                if best is None or len(failed) <= best[0]:
                    best = (len(failed), answer, tier.name, attempt.model)
                if kind == "answer" and self_correct and endpoint == "chat" and time.monotonic() < deadline:
                    req = self._correction(req, answer, failed)
                    continue
                break
            to = steps[i + 1].tier if i + 1 < len(steps) else "none"
            self.metrics.escalations.labels(route.name, tier.name, to, reason or "unknown").inc()
            if last_local is not None:  # this version's answer failed its gates and the request moved on
                self.metrics.engine_answers.labels(*last_local, "escalated").inc()
        return self._exhausted(outcome, cfg, best, last_exc=last_exc)

    @staticmethod
    def _for_tier(tier: Tier, request: Any, cloud_request: Any) -> Any:
        return request if cloud_request is SAME or tier.config.is_local else cloud_request

    def _pii_blocked(self, outcome: Outcome, route: Route, tier: Tier, to: str) -> None:
        attempt = Attempt(tier.name, "answer", "pii_blocked", error="the prompt holds personal data and the "
                          "route's PII policy blocks cloud tiers")
        outcome.attempts.append(attempt)
        self._count(outcome, attempt)
        self.metrics.escalations.labels(route.name, tier.name, to, "pii_blocked").inc()

    def _count(self, outcome: Outcome, attempt: Attempt) -> None:
        self.metrics.tier_attempts.labels(outcome.route, attempt.tier, attempt.outcome).inc()

    @staticmethod
    def _correction(request: Any, answer: Answer, failed: list[GateResult]) -> Any:
        reasons = "\n".join(f"- {r}" for g in failed for r in (g.reasons or [f"the {g.gate} check failed"]))
        messages = [*request.messages, {"role": "assistant", "content": answer.texts[0] if answer.texts else ""},
                    {"role": "user", "content": CORRECTION_PROMPT.format(reasons=reasons)}]
        return request.model_copy(update={"messages": messages})

    def _exhausted(self, outcome: Outcome, cfg: RouteConfig, best: tuple[int, Answer, str, str] | None, *,
                   last_exc: BaseException | None = None, deadline_hit: bool = False) -> Outcome:
        """The best answer flagged (best_effort policy), else raise the `CascadeError` that says why."""
        if best is not None and cfg.on_exhausted == "best_effort":
            _, outcome.answer, outcome.tier, outcome.model = best
            outcome.flagged = True
            return outcome
        raise self._failure(outcome, best, last_exc, deadline_hit)

    @staticmethod
    def _failure(outcome: Outcome, best: tuple[int, Answer, str, str] | None, last_exc: BaseException | None,
                 deadline_hit: bool) -> CascadeError:
        attempts = outcome.attempts
        if best is not None:
            failed = [f"{a.tier}: " + "; ".join(r for g in a.gates if not g.passed for r in g.reasons)
                      for a in attempts if a.outcome == "gate_failed"]
            return CascadeError(422, f"no tier of route {outcome.route} produced an answer that passed its quality "
                                f"gates ({' | '.join(failed)[:600]})", "quality_gate_failed", attempts)
        if deadline_hit:
            return CascadeError(504, f"route {outcome.route} found no answer within its deadline", "timeout", attempts)
        if isinstance(last_exc, EngineRejected):
            return CascadeError(last_exc.status, str(last_exc), last_exc.code or "invalid_request", attempts,
                                detail=getattr(last_exc, "detail", None), param=last_exc.param)
        return CascadeError(503, f"no tier of route {outcome.route} is available now; retry later",
                            "tiers_unavailable", attempts, retry_after_s=2)

    # -------------------------------------------------------------------------------------- ungated stream

    async def open_stream(self, route: Route, cfg: RouteConfig, endpoint: str, request: Any,
                          tenant: str, *, cloud_request: Any = SAME) -> StreamStart:
        """Start an ungated stream on the first tier that answers; fall back only before the first chunk."""
        outcome = Outcome(route.name, tenant, streaming=True)
        deadline = time.monotonic() + cfg.deadline_s
        last_exc: BaseException | None = None
        for i, step in enumerate(cfg.tiers):
            tier = self.tiers.tiers[step.tier]
            to = cfg.tiers[i + 1].tier if i + 1 < len(cfg.tiers) else "none"
            base = self._for_tier(tier, request, cloud_request)
            if base is None:
                self._pii_blocked(outcome, route, tier, to)
                continue
            attempt = Attempt(tier.name, "answer", "accepted")
            outcome.attempts.append(attempt)
            start = time.monotonic()
            try:
                engine, gen, first = await self._call(tier, endpoint, base, deadline, attempt)
            except _Deadline:
                attempt.outcome, attempt.error = "timeout", "request deadline reached"
                self._count(outcome, attempt)
                raise self._failure(outcome, None, None, True) from None
            except Exception as exc:
                attempt.latency_s = time.monotonic() - start
                attempt.outcome, attempt.error = _outcome_of(exc), str(exc)
                self._count(outcome, attempt)
                last_exc = exc
                self.metrics.escalations.labels(route.name, tier.name, to, attempt.outcome).inc()
                continue
            attempt.latency_s = time.monotonic() - start
            attempt.model = self.tiers.model_name(tier, engine)
            self._count(outcome, attempt)
            outcome.tier, outcome.model = tier.name, attempt.model
            return StreamStart(outcome, tier, gen, first, start)
        raise self._failure(outcome, None, last_exc, False)

    def finish_stream(self, start: StreamStart, usage: dict[str, Any] | None) -> None:
        """Charge a finished ungated stream by its usage chunk."""
        if usage:
            answer = Answer({}, "", [], [], None, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            self._charge(start.outcome, start.tier, start.outcome.attempts[-1], answer)

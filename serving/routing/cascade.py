"""The cascade: generate with the cheapest tier, check the answer, escalate only when it fails.

For each tier of a route's chain: skip it at once if its circuit is open or all its engines are down; call it
(`serving.routing.call`: transport faults retried with backoff, within the tier's timeout and the request's
deadline); run the route's gates on the answer; accept it, or ask the same tier once more with the gates' reasons
(self-correction), or move on to the next tier. When every tier failed, the route's policy returns the best
answer flagged, or the error `serving.routing.outcomes.failure` picks.

Ungated streamed requests do not buffer: `open_stream` falls back between tiers only before the first chunk.
A model group is a one-tier route (`RouteTable.group_route`), served by the same code.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any, get_args

from ray.serve.llm.openai_api_models import ChatCompletionRequest

from serving.config import RouteConfig, RouteTier
from serving.engines.base import Completed, EngineItem, EngineRejected
from serving.observability.metrics import GatewayMetrics
from serving.observability.tracing import Tracing
from serving.routing.answers import Answer, Gate, GateContext, GateResult
from serving.routing.call import DeadlineReached, TierCaller, outcome_of
from serving.routing.context_window import does_not_fit
from serving.routing.gates import run_gates
from serving.routing.outcomes import Attempt, CascadeError, Outcome, StreamStart, failure
from serving.routing.progress import DeadlinePassed
from serving.routing.resilience import BREAKER_STATES
from serving.routing.routes import Route
from serving.routing.tiers import Tier, TierSet

logger = logging.getLogger("serving.routing")

CORRECTION_PROMPT = (
    "Your previous answer failed these checks:\n{reasons}\n"
    "Answer the original request again, fixing these problems. Reply with the corrected answer only."
)

SAME = object()
"""`cloud_request` default: cloud tiers get the request as sent."""

Best = tuple[int, Answer, str, str]
"""(failed gates, answer, tier, model) of the best answer that failed its gates."""


STREAM_OPTIONS: Any = next(a for a in get_args(ChatCompletionRequest.model_fields["stream_options"].annotation)
                          if a is not type(None))
"""vLLM's `StreamOptions` model (the type of a request's `stream_options`)."""


def streams_internally(endpoint: str, request: Any) -> bool:
    """Whether a request served to completion is streamed from the engine: all but embeddings, completions with
    `echo` or `best_of` > 1 and requests for prompt logprobs, which vLLM answers only non-streamed."""
    if endpoint == "embeddings" or getattr(request, "prompt_logprobs", None) is not None:
        return False
    non_streaming = bool(getattr(request, "echo", False)) or (getattr(request, "best_of", None) or 1) > 1
    return endpoint != "completions" or not non_streaming


def answer_of(item: EngineItem, endpoint: str) -> Answer:
    """A complete answer as the gates see it."""
    body = item.body if isinstance(item, Completed) else {}
    return Answer.from_body(body, endpoint)


class Cascade:
    """Runs requests through routes' tier chains."""

    def __init__(self, tiers: TierSet, metrics: GatewayMetrics, tracing: Tracing | None = None):
        self.tiers = tiers
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.caller = TierCaller(tiers, metrics)
        metrics.on_render(self.export_breakers)

    def export_breakers(self) -> None:
        for name, tier in self.tiers.tiers.items():
            if tier.breaker is not None:
                self.metrics.breaker_state.labels(name).set(BREAKER_STATES.get(tier.breaker.state, 0))

    def tier(self, route: Route, step: RouteTier) -> Tier:
        """The tier a step of `route` names (a model group's route has the group's own tier)."""
        return self.tiers.group_tier(route.name) if route.kind == "model_group" else self.tiers.tiers[step.tier]

    # -------------------------------------------------------------------------------------------- helpers

    def _prepare(self, tier: Tier, endpoint: str, request: Any, gates: list[Gate]) -> Any:
        """What the tier is sent for a request served to completion: streamed from the engine (so the progress
        timeouts apply) with usage, or, for the few fields that only work non-streamed, as is and not streamed."""
        update: dict[str, Any] = {}
        if streams_internally(endpoint, request):
            update.update(stream=True, stream_options=STREAM_OPTIONS(include_usage=True))
        elif getattr(request, "stream", False):
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
        with self.tracing.attempt(tier_name, "judge", tier.provider, attempt):
            try:
                _, _, first = await self.caller.call(tier, "chat", request, deadline, attempt)
            except BaseException as exc:
                attempt.outcome, attempt.error = outcome_of(exc), str(exc)
                raise
            finally:
                attempt.latency_s = time.monotonic() - start
        answer = answer_of(first, "chat")
        self._charge(outcome, tier, attempt, answer)
        return answer.texts[0] if answer.texts else ""

    def _charge(self, outcome: Outcome, tier: Tier, attempt: Attempt, answer: Answer) -> None:
        attempt.cost_usd = tier.cost(answer.prompt_tokens, answer.completion_tokens)
        self.metrics.tier_tokens.labels(tier.name, "prompt").inc(answer.prompt_tokens)
        self.metrics.tier_tokens.labels(tier.name, "completion").inc(answer.completion_tokens)
        if attempt.cost_usd:
            self.metrics.cost.labels(outcome.route, tier.name, outcome.tenant).inc(attempt.cost_usd)

    def _failed(self, outcome: Outcome, attempt: Attempt, exc: BaseException, start: float) -> None:
        attempt.latency_s = time.monotonic() - start
        attempt.outcome, attempt.error = outcome_of(exc), str(exc)
        outcome.errors.append(exc)
        self._count(outcome, attempt)

    def _deadline(self, outcome: Outcome, attempt: Attempt) -> None:
        attempt.outcome, attempt.error = "timeout", "request deadline reached"
        self._count(outcome, attempt)

    # ---------------------------------------------------------------------------------------- gated path

    async def run(self, route: Route, cfg: RouteConfig, gates: dict[str, Gate], endpoint: str, request: Any,
                  tenant: str, *, cloud_request: Any = SAME, pin: str | None = None) -> Outcome:
        """Serve a request to completion (non-streamed internally): the accepted or best answer.

        `cloud_request`: what cloud tiers get instead of `request` (its PII redacted), or None to skip them;
        `pin`: the engine of a model group's route to use."""
        outcome = Outcome(route.name, tenant, route.kind)
        deadline = time.monotonic() + (cfg.deadline_s or math.inf)
        best: Best | None = None
        steps = cfg.tiers
        for i, step in enumerate(steps):
            tier = self.tier(route, step)
            step_gates = [g for k, g in gates.items() if step.gates is None or k in step.gates]
            self_correct = step.self_correct if step.self_correct is not None else cfg.self_correct
            base = self._for_tier(tier, request, cloud_request)
            to = steps[i + 1].tier if i + 1 < len(steps) else "none"
            if base is None:
                self._pii_blocked(outcome, route, tier, to)
                continue
            if self._too_long(outcome, route, tier, endpoint, base, to):
                continue
            ctx = GateContext(base, endpoint, logprobs_available=tier.logprobs,
                              judge=lambda t, p, m: self._judge(outcome, deadline, t, p, m))
            req = self._prepare(tier, endpoint, base, step_gates)
            reason = ""
            last_local: tuple[str, str] | None = None  # (group, engine) whose answer this tier gated last
            for kind in ("answer", "self_correction"):
                attempt = Attempt(tier.name, kind, "accepted")
                outcome.attempts.append(attempt)
                with self.tracing.attempt(tier.name, kind, tier.provider, attempt):
                    start = time.monotonic()
                    try:
                        engine, gen, first = await self.caller.call(tier, endpoint, req, deadline, attempt, pin,
                                                                    whole=True)
                        first = await self.caller.complete(tier, gen, first, endpoint, deadline)
                    except (DeadlineReached, DeadlinePassed):
                        self._deadline(outcome, attempt)
                        return self._exhausted(outcome, cfg, best, deadline_hit=True)
                    except Exception as exc:
                        self._failed(outcome, attempt, exc, start)
                        reason = attempt.outcome
                        break
                    attempt.latency_s = time.monotonic() - start
                    answer = answer_of(first, endpoint)
                    self._charge(outcome, tier, attempt, answer)
                    if not step_gates:  # nothing to check: accepted as it is
                        self._count(outcome, attempt)
                        outcome.answer, outcome.tier, outcome.model = answer, tier.name, attempt.model
                        return outcome
                    attempt.gates = await run_gates(step_gates, answer, ctx)
                    for g in attempt.gates:
                        self.metrics.gate_results.labels(route.name, tier.name, g.gate, g.label).inc()
                    failed = [g for g in attempt.gates if not g.passed]
                    group = tier.config.model_group
                    if group is not None and attempt.gates:  # per engine (= model version), for rollout analysis
                        last_local = (group, engine.name)
                        verdict = "gate_fail" if failed else "gate_pass"
                        self.metrics.engine_answers.labels(group, engine.name, verdict).inc()
                    if not failed:
                        self._count(outcome, attempt)
                        outcome.answer, outcome.tier, outcome.model = answer, tier.name, attempt.model
                        return outcome
                    attempt.outcome = "gate_failed"
                    self._count(outcome, attempt)
                    reason = ",".join(g.gate for g in failed)
                    if best is None or len(failed) <= best[0]:
                        best = (len(failed), answer, tier.name, attempt.model or "")
                    if kind == "answer" and self_correct and endpoint == "chat" and time.monotonic() < deadline:
                        req = self._correction(req, answer, failed)
                        continue
                    break
            self.metrics.escalations.labels(route.name, tier.name, to, reason or "unknown").inc()
            if last_local is not None:  # this version's answer failed its gates and the request moved on
                self.metrics.engine_answers.labels(*last_local, "escalated").inc()
        return self._exhausted(outcome, cfg, best)

    @staticmethod
    def _for_tier(tier: Tier, request: Any, cloud_request: Any) -> Any:
        return request if cloud_request is SAME or tier.config.is_local else cloud_request

    def _pii_blocked(self, outcome: Outcome, route: Route, tier: Tier, to: str) -> None:
        attempt = Attempt(tier.name, "answer", "pii_blocked", error="the prompt holds personal data and the "
                          "route's PII policy blocks cloud tiers")
        outcome.attempts.append(attempt)
        self._count(outcome, attempt)
        self.metrics.escalations.labels(route.name, tier.name, to, "pii_blocked").inc()

    def _too_long(self, outcome: Outcome, route: Route, tier: Tier, endpoint: str, request: Any, to: str) -> bool:
        """Skip a configured route's tier whose context cannot hold the request (decided before the call)."""
        if route.kind != "route":
            return False  # a model group's engine answers for itself, with its exact count
        window = self.tiers.context_window(tier)
        over = does_not_fit(endpoint, request, window)
        if over is None:
            return False
        prompt, completion = over
        asked = f" plus {completion} completion tokens" if completion else ""
        exc = EngineRejected(f"This request does not fit tier {tier.name}'s context of {window} tokens: its prompt "
                             f"has at least {prompt} tokens{asked}. Shorten the prompt or lower max_tokens.",
                             status=400, code="context_length_exceeded",
                             param="messages" if endpoint == "chat" else "prompt")
        attempt = Attempt(tier.name, "answer", "rejected", error=str(exc))
        outcome.attempts.append(attempt)
        outcome.errors.append(exc)
        self._count(outcome, attempt)
        self.metrics.escalations.labels(route.name, tier.name, to, "context_window").inc()
        return True

    def _count(self, outcome: Outcome, attempt: Attempt) -> None:
        self.metrics.tier_attempts.labels(outcome.route, attempt.tier, attempt.outcome).inc()

    @staticmethod
    def _correction(request: Any, answer: Answer, failed: list[GateResult]) -> Any:
        reasons = "\n".join(f"- {r}" for g in failed for r in (g.reasons or [f"the {g.gate} check failed"]))
        said = answer.texts[0] if answer.texts else ""
        if answer.tool_calls and answer.tool_calls[0]:  # the failed calls as text: no dangling tool_call ids
            calls = [{"name": (c.get("function") or {}).get("name"),
                      "arguments": (c.get("function") or {}).get("arguments")} for c in answer.tool_calls[0]]
            said = (said + "\n" if said else "") + "Tool calls: " + json.dumps(calls)
        messages = [*request.messages, {"role": "assistant", "content": said},
                    {"role": "user", "content": CORRECTION_PROMPT.format(reasons=reasons)}]
        return request.model_copy(update={"messages": messages})

    @staticmethod
    def _exhausted(outcome: Outcome, cfg: RouteConfig, best: Best | None, *, deadline_hit: bool = False) -> Outcome:
        """The best answer flagged (best_effort policy), else raise the `CascadeError` that says why."""
        if best is not None and cfg.on_exhausted == "best_effort":
            _, outcome.answer, outcome.tier, outcome.model = best
            outcome.flagged = True
            return outcome
        raise failure(outcome, gate_failed=best is not None, deadline_hit=deadline_hit)

    # -------------------------------------------------------------------------------------- ungated stream

    async def open_stream(self, route: Route, cfg: RouteConfig, endpoint: str, request: Any,
                          tenant: str, *, cloud_request: Any = SAME, pin: str | None = None) -> StreamStart:
        """Start an ungated stream on the first tier that answers; fall back only before the first chunk."""
        outcome = Outcome(route.name, tenant, route.kind, streaming=True)
        deadline = time.monotonic() + (cfg.deadline_s or math.inf)
        for i, step in enumerate(cfg.tiers):
            tier = self.tier(route, step)
            to = cfg.tiers[i + 1].tier if i + 1 < len(cfg.tiers) else "none"
            base = self._for_tier(tier, request, cloud_request)
            if base is None:
                self._pii_blocked(outcome, route, tier, to)
                continue
            if self._too_long(outcome, route, tier, endpoint, base, to):
                continue
            attempt = Attempt(tier.name, "answer", "accepted")
            outcome.attempts.append(attempt)
            start = time.monotonic()
            with self.tracing.attempt(tier.name, "answer", tier.provider, attempt):
                try:
                    _, gen, first = await self.caller.call(tier, endpoint, base, deadline, attempt, pin,
                                                                    whole=True)
                except DeadlineReached:
                    self._deadline(outcome, attempt)
                    raise failure(outcome, gate_failed=False, deadline_hit=True) from None
                except Exception as exc:
                    self._failed(outcome, attempt, exc, start)
                    self.metrics.escalations.labels(route.name, tier.name, to, attempt.outcome).inc()
                    continue
            attempt.latency_s = time.monotonic() - start
            self._count(outcome, attempt)
            outcome.tier, outcome.model = tier.name, attempt.model
            return StreamStart(outcome, tier, gen, first, start, deadline)
        raise failure(outcome, gate_failed=False, deadline_hit=False)

    def finish_stream(self, start: StreamStart, usage: dict[str, Any] | None) -> None:
        """Charge a finished ungated stream by its usage chunk."""
        if usage:
            answer = Answer({}, "", [], [], None, usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
            self._charge(start.outcome, start.tier, start.outcome.attempts[-1], answer)


__all__ = ["SAME", "Cascade", "CascadeError", "Outcome", "StreamStart"]

"""What serving a request through a tier chain produced: attempts, the outcome, and the failure when nothing answered.

One failure rule for model groups and routes alike (a model group is a one-tier chain), so the same problem gets
the same status and error code whichever name the client used:

1. some tier answered but every answer failed its gates (and the policy is `error`): 422 `quality_gate_failed`;
2. some tier refused the request as invalid (a 4xx such as vLLM's context-length error): that refusal, as the
   engine gave it, even when later tiers were merely unavailable;
3. the request's deadline passed, or every fault of a tier that was reached was a timeout: 504 `timeout`;
4. every fault of a tier that was reached was an engine failure (a 5xx, a crash): 502 `engine_error` (no engine
   internals in the message);
5. otherwise nothing could take the request now: 503 `engine_unavailable` with `retry-after`.

Tiers skipped without a call (open circuit, no live engine, no API key) never decide the error over a tier that
was called: a route whose cloud tier has no key fails like its local model group alone.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from serving.engines.base import EngineFailed, EngineItem, EngineRejected, EngineTimeout, Rejected
from serving.routing.answers import Answer, GateResult
from serving.routing.resilience import BreakerOpen, TierDown

if TYPE_CHECKING:
    from serving.routing.tiers import Tier

TargetKind = Literal["route", "model_group"]


class CascadeError(Exception):
    """No acceptable answer: the API layer turns this into the endpoint's error envelope."""

    def __init__(self, status: int, message: str, code: str | None, attempts: list[Attempt], *,
                 detail: Rejected | None = None, param: str | None = None, retry_after_s: float | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.attempts = attempts
        self.detail = detail  # the engine's own refusal (e.g. vLLM's context-length error)
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

    def audit(self) -> dict[str, Any]:
        """The attempt for the audit line: `to_dict` without error texts and tries, gate verdicts only (no text)."""
        item = {k: v for k, v in self.to_dict().items() if k not in ("error", "tries", "gates")}
        if self.gates:
            item["gates"] = {g.gate: g.label for g in self.gates}
        return item

    @property
    def counted(self) -> bool:
        """Whether it reached a tier (skips of open circuits, down tiers and PII blocks are not attempts)."""
        return self.outcome not in ("circuit_open", "unavailable", "pii_blocked")


def last_tried(attempts: list[Attempt]) -> str:
    """The model of the last answer attempt that reached an engine ('' if none did)."""
    return next((a.model for a in reversed(attempts) if a.model and a.kind != "judge"), "")


@dataclass
class Outcome:
    """The accepted (or best, flagged) answer of a request, and how it was reached."""

    route: str
    tenant: str
    kind: TargetKind = "route"
    answer: Answer | None = None
    tier: str | None = None
    model: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    flagged: bool = False
    streaming: bool = False
    errors: list[BaseException] = field(default_factory=list)  # the faults and refusals met on the way

    @property
    def cost_usd(self) -> float:
        return sum(a.cost_usd for a in self.attempts)

    @property
    def attempt_count(self) -> int:
        return sum(1 for a in self.attempts if a.counted and a.kind != "judge")

    @property
    def last_model(self) -> str:
        """The model that answered, else the last one tried ('' if none was reached)."""
        return self.model or last_tried(self.attempts)

    def headers(self, *, with_cost: bool = True) -> dict[str, str]:
        """`x-serving-*` response headers: the model that answered; for routes also route, tier, attempts, cost."""
        out = {"x-serving-model": self.model or ""}
        if self.kind == "route":
            out.update({"x-serving-route": self.route, "x-serving-tier": self.tier or "",
                        "x-serving-attempts": str(self.attempt_count)})
            if with_cost:
                out["x-serving-cost-usd"] = f"{self.cost_usd:.8f}"
        if self.flagged:
            out["x-serving-flagged"] = "true"
        return out

    def extension(self) -> dict[str, Any]:
        """The `serving` field added to a route's response body (documented in docs/routing.md)."""
        return {"route": self.route, "tier": self.tier, "model": self.model, "flagged": self.flagged,
                "attempts": [a.to_dict() for a in self.attempts], "cost_usd": round(self.cost_usd, 10)}


@dataclass
class StreamStart:
    """An ungated stream that has its first chunk: relay `first` then the rest of `gen`."""

    outcome: Outcome
    tier: Tier
    gen: AsyncGenerator[EngineItem, None]
    first: EngineItem
    started: float
    deadline: float = math.inf
    """The request's deadline (`time.monotonic()`; inf: none): the relay's bound on the rest of the stream."""


def _what(outcome: Outcome) -> str:
    return f"model group {outcome.route}" if outcome.kind == "model_group" else f"route {outcome.route}"


def failure(outcome: Outcome, *, gate_failed: bool, deadline_hit: bool) -> CascadeError:
    """The error for a request no tier answered acceptably (the rule in the module docstring)."""
    attempts = outcome.attempts
    if gate_failed:
        failed = [f"{a.tier}: " + "; ".join(r for g in a.gates if not g.passed for r in g.reasons)
                  for a in attempts if a.outcome == "gate_failed"]
        return CascadeError(422, f"no tier of {_what(outcome)} produced an answer that passed its quality "
                            f"gates ({' | '.join(failed)[:600]})", "quality_gate_failed", attempts)
    rejected = [e for e in outcome.errors if isinstance(e, EngineRejected)]
    if rejected:  # the most specific refusal: one with a code and a parameter over a generic one
        first = min(rejected, key=lambda e: (e.code in (None, "invalid_request", "invalid_request_error"),
                                             e.param is None))
        return CascadeError(first.status, str(first), first.code or "invalid_request", attempts, detail=first.detail,
                            param=first.param)
    faults = [e for e in outcome.errors if not isinstance(e, (TierDown, BreakerOpen))]
    if deadline_hit:
        return CascadeError(504, f"{_what(outcome)} found no answer within its deadline", "timeout", attempts)
    if faults and all(isinstance(e, EngineTimeout) for e in faults):
        return CascadeError(504, f"{faults[-1]!s}", "timeout", attempts)
    if faults and all(isinstance(e, EngineFailed) for e in faults):
        engine = outcome.last_model or "of " + _what(outcome)
        return CascadeError(502, f"engine {engine} failed to serve the request", "engine_error", attempts)
    where = "no engine of" if outcome.kind == "model_group" else "no tier of"
    return CascadeError(503, f"{where} {_what(outcome)} is available now; retry later", "engine_unavailable",
                        attempts, retry_after_s=1)

"""What a gate sees and says: one tier's answer (`Answer`), the gate's verdict (`GateResult`), the request context
(`GateContext`), and the `Gate` protocol every check implements."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

MAX_REASONS = 3
"""Reasons kept per gate verdict."""


@dataclass
class Answer:
    """One tier's answer, as the gates see it (every choice of a response)."""

    body: dict[str, Any]
    endpoint: str
    texts: list[str]
    finish_reasons: list[str | None]
    token_logprobs: list[list[float]] | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    """Per choice, its tool calls (`{"id", "type", "function": {"name", "arguments"}}`); empty lists when none."""

    def is_tool_call(self, i: int) -> bool:
        """Choice `i` is a tool call and nothing else (no text): the text gates leave it to the tools gate."""
        return bool(self.tool_calls and self.tool_calls[i]) and not self.texts[i].strip()

    @classmethod
    def from_body(cls, body: dict[str, Any], endpoint: str) -> Answer:
        """Read texts, finish reasons, token logprobs and usage out of an OpenAI response body."""
        choices = body.get("choices") or []
        texts, finishes, logprobs, calls = [], [], [], []
        have_logprobs = bool(choices)
        for choice in choices:
            if endpoint == "chat":
                message = choice.get("message") or {}
                texts.append(message.get("content") or "")
                calls.append([c for c in message.get("tool_calls") or () if isinstance(c, dict)])
                entries = (choice.get("logprobs") or {}).get("content")
                lps = [e["logprob"] for e in entries] if entries else None
            else:
                texts.append(choice.get("text") or "")
                lps = (choice.get("logprobs") or {}).get("token_logprobs")
                lps = [x for x in lps if x is not None] if lps else None
            finishes.append(choice.get("finish_reason"))
            if lps is None:
                have_logprobs = False
            else:
                logprobs.append([max(x, -1e4) if math.isfinite(x) else -1e4 for x in lps])
        usage = body.get("usage") or {}
        return cls(body, endpoint, texts, finishes, logprobs if have_logprobs else None,
                   usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0,
                   calls if any(calls) else [])


@dataclass
class GateResult:
    """The outcome of one gate on one answer."""

    gate: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    skipped: bool = False
    score: float | None = None

    @property
    def label(self) -> str:
        return "skip" if self.skipped else "pass" if self.passed else "fail"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gate": self.gate, "result": self.label}
        if self.reasons:
            out["reasons"] = self.reasons
        if self.score is not None:
            out["score"] = round(self.score, 4)
        return out


JudgeCall = Callable[[str, str, int], Awaitable[str]]
"""`(tier, prompt, max_tokens) -> answer text`: how the judge gate asks another tier."""


@dataclass
class GateContext:
    """What a gate may look at besides the answer: the request, and a way to call a judge tier."""

    request: Any
    endpoint: str
    judge: JudgeCall | None = None
    logprobs_available: bool = True


class Gate(Protocol):
    """A pluggable check on an answer."""

    name: str

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult: ...


def per_choice(answer: Answer, fn: Callable[[str, str | None], list[str]]) -> list[str]:
    """Run `fn(text, finish_reason)` on every choice that has text to check (a choice that is only a tool call is
    the tools gate's); prefix reasons with the choice index when n > 1."""
    reasons: list[str] = []
    for i, (text, finish) in enumerate(zip(answer.texts, answer.finish_reasons, strict=True)):
        if answer.is_tool_call(i):
            continue
        found = fn(text, finish)
        reasons += [f"choice {i}: {r}" for r in found] if len(answer.texts) > 1 else found
    return reasons[:MAX_REASONS]


def gate_result(name: str, reasons: list[str], **kw: Any) -> GateResult:
    """A verdict: passed when there are no reasons."""
    return GateResult(name, not reasons, reasons, **kw)

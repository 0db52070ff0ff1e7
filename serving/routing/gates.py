"""Quality gates: checks on an answer that decide whether a tier's answer is accepted.

A gate returns a `GateResult` (pass/fail with reasons). Gates are built once per route config from
`serving.config.GatesConfig`; per-request overrides build a fresh set.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import jsonschema

from serving.config import (
    ConfidenceGateConfig,
    EmptyGateConfig,
    GatesConfig,
    JsonGateConfig,
    JudgeGateConfig,
    RefusalGateConfig,
    RulesGateConfig,
)
from serving.routing.answers import (
    MAX_REASONS,
    Answer,
    Gate,
    GateContext,
    GateResult,
    gate_result,
    per_choice,
)
from serving.routing.json_schemas import validator_of
from serving.routing.tool_gate import ToolsGate

logger = logging.getLogger("serving.routing")


def requested_schema(request: Any) -> tuple[bool, dict[str, Any] | None]:
    """(the request asks for JSON, its JSON schema if any) from `response_format`."""
    fmt = getattr(request, "response_format", None)
    if fmt is None:
        return False, None
    kind = getattr(fmt, "type", None) if not isinstance(fmt, dict) else fmt.get("type")
    if kind == "json_object":
        return True, None
    if kind == "json_schema":
        spec = getattr(fmt, "json_schema", None) if not isinstance(fmt, dict) else fmt.get("json_schema")
        if spec is None:
            return True, None
        schema = spec.get("schema") if isinstance(spec, dict) else getattr(spec, "json_schema", None)
        return True, schema
    return False, None


class JsonGate:
    """The answer parses as JSON and, when a schema is known, conforms to it."""

    name = "json"

    def __init__(self, cfg: JsonGateConfig):
        self.cfg = cfg
        self._validator = validator_of(cfg.json_schema) if cfg.json_schema is not None else None

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        asked, schema = requested_schema(ctx.request)
        if not asked and not self.cfg.required:
            return GateResult(self.name, True, ["the request asks for no JSON"], skipped=True)
        validator = self._validator
        if schema is not None:
            try:
                validator = validator_of(schema)
            except (jsonschema.SchemaError, TypeError, ValueError):  # the engine enforced what it could use
                validator = None

        def check_one(text: str, _finish: str | None) -> list[str]:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                return [f"the answer is not valid JSON ({exc.msg} at position {exc.pos})"]
            except (ValueError, RecursionError) as exc:  # e.g. a 5,000-digit number, or 2,000 nested brackets
                return [f"the answer is not usable JSON ({type(exc).__name__})"]
            if validator is None:
                return []
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
            return [
                f"JSON schema: {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in errors[:MAX_REASONS]
            ]

        return gate_result(self.name, per_choice(answer, check_one))


class RulesGate:
    """Regex must / must-not and length rules."""

    name = "rules"

    def __init__(self, cfg: RulesGateConfig):
        flags = re.IGNORECASE if cfg.ignore_case else 0
        self.cfg = cfg
        self.must = [re.compile(p, flags) for p in cfg.must_match]
        self.must_not = [re.compile(p, flags) for p in cfg.must_not_match]

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        cfg = self.cfg

        def check_one(text: str, _finish: str | None) -> list[str]:
            reasons = [f"the answer must match /{p.pattern}/" for p in self.must if not p.search(text)]
            reasons += [f"the answer must not match /{p.pattern}/" for p in self.must_not if p.search(text)]
            if cfg.min_chars is not None and len(text) < cfg.min_chars:
                reasons.append(f"the answer has {len(text)} characters, fewer than {cfg.min_chars}")
            if cfg.max_chars is not None and len(text) > cfg.max_chars:
                reasons.append(f"the answer has {len(text)} characters, more than {cfg.max_chars}")
            return reasons

        return gate_result(self.name, per_choice(answer, check_one))


class RefusalGate:
    """Fails answers that refuse the task."""

    name = "refusal"

    def __init__(self, cfg: RefusalGateConfig):
        self.patterns = [re.compile(p, re.IGNORECASE) for p in [*cfg.patterns, *cfg.extra_patterns]]

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        def check_one(text: str, _finish: str | None) -> list[str]:
            head = text[:400]
            for p in self.patterns:
                if m := p.search(head):
                    return [f"the answer is a refusal ({m.group(0)!r})"]
            return []

        return gate_result(self.name, per_choice(answer, check_one))


class EmptyGate:
    """Fails empty answers (and, optionally, answers cut off by max_tokens)."""

    name = "empty"

    def __init__(self, cfg: EmptyGateConfig):
        self.cfg = cfg

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        def check_one(text: str, finish: str | None) -> list[str]:
            reasons = []
            if len(text.strip()) < self.cfg.min_chars:
                reasons.append("the answer is empty" if not text.strip() else "the answer is too short")
            if finish == "length" and not self.cfg.allow_truncated:
                reasons.append("the answer was cut off by max_tokens")
            return reasons

        return gate_result(self.name, per_choice(answer, check_one))


class ConfidenceGate:
    """Mean and/or minimum token logprob of the answer must reach the thresholds."""

    name = "confidence"

    def __init__(self, cfg: ConfidenceGateConfig):
        self.cfg = cfg

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        if answer.token_logprobs is None:
            why = "this tier returns no logprobs" if not ctx.logprobs_available else "the answer has no logprobs"
            return GateResult(self.name, True, [why], skipped=True)
        reasons, worst_mean = [], 0.0
        for i, lps in enumerate(answer.token_logprobs):
            prefix = f"choice {i}: " if len(answer.token_logprobs) > 1 else ""
            if not lps:
                continue
            mean = sum(lps) / len(lps)
            worst_mean = min(worst_mean, mean)
            if self.cfg.min_mean_logprob is not None and mean < self.cfg.min_mean_logprob:
                reasons.append(f"{prefix}mean token logprob {mean:.3f} is below {self.cfg.min_mean_logprob}")
            if self.cfg.min_token_logprob is not None and min(lps) < self.cfg.min_token_logprob:
                reasons.append(f"{prefix}lowest token logprob {min(lps):.3f} is below {self.cfg.min_token_logprob}")
        return gate_result(self.name, reasons[:MAX_REASONS], score=worst_mean)


_PLACEHOLDER = re.compile(r"\{(question|answer)\}")
_SCORE = re.compile(r"\b(10|[1-9](?:\.\d+)?)\b")


def question_of(request: Any, endpoint: str) -> str:
    """The text a judge sees as the question: the last user message (chat) or the prompt."""
    if endpoint != "chat":
        prompt = request.prompt
        return prompt if isinstance(prompt, str) else str(prompt)
    for msg in reversed(request.messages):
        if msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            return " ".join(p.get("text", "") for p in content or [] if isinstance(p, dict))
    return ""


class JudgeGate:
    """Asks another tier to score the answer from 1 to 10."""

    name = "judge"

    def __init__(self, cfg: JudgeGateConfig):
        self.cfg = cfg

    async def check(self, answer: Answer, ctx: GateContext) -> GateResult:
        if ctx.judge is None:
            return GateResult(self.name, True, ["no judge available"], skipped=True)
        question = question_of(ctx.request, ctx.endpoint)
        scores = []
        for text in answer.texts:
            fields = {"question": question, "answer": text}
            prompt = _PLACEHOLDER.sub(lambda m, f=fields: f[m.group(1)], self.cfg.prompt)  # type: ignore[misc]
            try:
                verdict = await ctx.judge(self.cfg.tier, prompt, self.cfg.max_tokens)
            except Exception as exc:
                return GateResult(self.name, False, [f"the judge tier {self.cfg.tier} failed: {exc}"])
            m = _SCORE.search(verdict)
            if m is None:
                return GateResult(self.name, False, [f"the judge gave no score: {verdict[:80]!r}"])
            scores.append(float(m.group(1)))
        low = min(scores) if scores else 0.0
        reasons = [] if low >= self.cfg.threshold else [f"judge score {low:g} is below {self.cfg.threshold:g}"]
        return gate_result(self.name, reasons, score=low)


_GATES: dict[str, Callable[[Any], Gate]] = {
    "json": JsonGate, "tools": ToolsGate, "rules": RulesGate, "refusal": RefusalGate, "empty": EmptyGate,
    "confidence": ConfidenceGate, "judge": JudgeGate,
}


def build_gates(cfg: GatesConfig) -> dict[str, Gate]:
    """`{kind: gate}` for the gates `cfg` turns on, in a fixed order (cheap checks first, the judge last)."""
    return {kind: _GATES[kind](c) for kind, c in cfg.enabled().items()}


async def run_gates(gates: Sequence[Gate], answer: Answer, ctx: GateContext) -> list[GateResult]:
    """Run gates in order; the judge (costly) runs only when every cheaper gate passed."""
    results: list[GateResult] = []
    for gate in gates:
        if gate.name == "judge" and any(not r.passed for r in results):
            results.append(GateResult("judge", True, ["not asked: another gate failed"], skipped=True))
            continue
        try:
            results.append(await gate.check(answer, ctx))
        except Exception as exc:  # a gate that cannot judge an answer has not passed it
            logger.exception("gate %s failed on an answer", gate.name)
            results.append(GateResult(gate.name, False, [f"the {gate.name} check could not run: {type(exc).__name__}"]))
    return results

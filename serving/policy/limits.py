"""Limits as Redis script specs: token buckets, calendar quotas and budgets, the runaway check; and the verdicts
as OpenAI-style errors and `x-ratelimit-*` headers."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from serving.config import AnomalyConfig, LimitsConfig

HOUR_S, DAY_S = 3600, 86400


@dataclass(frozen=True)
class Scope:
    """Whose counters: a tenant (`t:<name>`) or one key (`k:<id>`), with that scope's limits."""

    kind: str  # "tenant" | "key"
    name: str
    limits: LimitsConfig

    @property
    def tag(self) -> str:
        return ("t:" if self.kind == "tenant" else "k:") + self.name


def _windows(now: float) -> tuple[str, int, str, int]:
    """(hour id, seconds to the hour's end, day id, seconds to the day's end), UTC."""
    t = time.gmtime(now)
    return (time.strftime("%Y%m%d%H", t), HOUR_S - int(now) % HOUR_S,
            time.strftime("%Y%m%d", t), DAY_S - int(now) % DAY_S)


def counter_keys(prefix: str, scope: Scope, now: float) -> dict[str, str]:
    """The calendar counter keys of a scope for `now`: tokens today, USD this hour, USD today."""
    hour, _, day, _ = _windows(now)
    base = f"{prefix}{scope.tag}:"
    return {"tokens_day": base + f"tok:d:{day}", "usd_hour": base + f"usd:h:{hour}", "usd_day": base + f"usd:d:{day}"}


@dataclass
class AdmitPlan:
    """A request's admission spec plus what settling it later needs."""

    spec: dict[str, Any]
    token_buckets: list[str] = field(default_factory=list)
    reserved_tokens: int = 0


def admit_plan(prefix: str, scopes: list[Scope], *, active_key: str | None, kill_fields: list[str],
               est_tokens: int, anomaly: AnomalyConfig | None, tenant: str, now: float) -> AdmitPlan:
    """The spec of the ADMIT script for a request by these scopes (tenant first, then key)."""
    _, to_hour, _, to_day = _windows(now)
    buckets: list[dict[str, Any]] = []
    caps: list[dict[str, Any]] = []
    plan = AdmitPlan({}, reserved_tokens=est_tokens)
    for s in scopes:
        lim, base = s.limits, f"{prefix}{s.tag}:"
        if lim.requests_per_minute:
            buckets.append({"key": base + "rpm", "limit": lim.requests_per_minute, "cost": 1,
                            "name": f"{s.kind}:requests"})
        if lim.tokens_per_minute:
            buckets.append({"key": base + "tpm", "limit": lim.tokens_per_minute, "cost": est_tokens,
                            "name": f"{s.kind}:tokens"})
            plan.token_buckets.append(base + "tpm")
        keys = counter_keys(prefix, s, now)
        if lim.tokens_per_day:
            caps.append({"key": keys["tokens_day"], "limit": lim.tokens_per_day, "code": "quota_exceeded",
                         "name": f"{s.kind}:tokens_per_day", "reset": to_day})
        if lim.usd_per_hour:
            caps.append({"key": keys["usd_hour"], "limit": lim.usd_per_hour, "code": "budget_exceeded",
                         "name": f"{s.kind}:usd_per_hour", "reset": to_hour})
        if lim.usd_per_day:
            caps.append({"key": keys["usd_day"], "limit": lim.usd_per_day, "code": "budget_exceeded",
                         "name": f"{s.kind}:usd_per_day", "reset": to_day})
    spec: dict[str, Any] = {"buckets": buckets, "caps": caps, "kill": kill_fields, "kill_key": prefix + "kill"}
    if active_key:
        spec["active"] = active_key
    if anomaly is not None and anomaly.enabled:
        w = anomaly.window_s
        spec["anomaly"] = {
            "key": f"{prefix}an:{tenant}", "widx": int(now // w), "window_end": (int(now // w) + 1) * w,
            "alpha": 2.0 / (anomaly.baseline_windows + 1), "warmup": anomaly.warmup_windows,
            "factor": anomaly.factor, "min": anomaly.min_requests, "throttle": anomaly.action == "throttle",
            "throttle_s": anomaly.throttle_s, "ttl": max(7 * DAY_S, w * anomaly.baseline_windows * 4),
        }
    plan.spec = spec
    return plan


def counter_increments(prefix: str, scopes: list[Scope], tokens: int, cost_usd: float,
                       now: float) -> list[dict[str, Any]]:
    """SETTLE script counters adding `tokens` and `cost_usd` to every scope's calendar counters. Each names its
    `scope` (index) and `limit` (LimitsConfig field) for the caller's comparison with the new totals."""
    counters: list[dict[str, Any]] = []
    for i, s in enumerate(scopes):
        keys = counter_keys(prefix, s, now)
        if tokens:
            counters.append({"key": keys["tokens_day"], "amount": tokens, "ttl": 2 * DAY_S, "scope": i,
                             "limit": "tokens_per_day"})
        if cost_usd > 0:
            usd = round(cost_usd, 10)
            counters.append({"key": keys["usd_hour"], "amount": usd, "float": True, "ttl": 2 * HOUR_S, "scope": i,
                             "limit": "usd_per_hour"})
            counters.append({"key": keys["usd_day"], "amount": usd, "float": True, "ttl": 2 * DAY_S, "scope": i,
                             "limit": "usd_per_day"})
    return counters


def settle_spec(plan: AdmitPlan, prefix: str, scopes: list[Scope], *, used_tokens: int, counted_tokens: int,
                cost_usd: float, now: float) -> dict[str, Any]:
    """The SETTLE script's spec: correct the token buckets by `used_tokens` against the estimate reserved at
    admission, and add what was not yet counted (a metered stream counted part already) to the counters."""
    delta = used_tokens - plan.reserved_tokens
    return {"buckets": [{"key": k, "delta": delta} for k in plan.token_buckets],
            "counters": counter_increments(prefix, scopes, counted_tokens, cost_usd, now)}


def duration(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `6m0s`, `1h2m3s`, `120ms`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    s = math.ceil(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{sec}s"


def ratelimit_headers(rl: Any) -> dict[str, str]:
    """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from the tightest bucket of each kind."""
    tightest: dict[str, tuple[int, int, float]] = {}
    for name, limit, remaining, reset in rl or ():
        kind = name.rsplit(":", 1)[-1]
        if kind not in tightest or remaining < tightest[kind][1]:
            tightest[kind] = (int(limit), int(remaining), float(reset))
    out: dict[str, str] = {}
    for kind, (limit, remaining, reset) in tightest.items():
        out[f"x-ratelimit-limit-{kind}"] = str(limit)
        out[f"x-ratelimit-remaining-{kind}"] = str(max(0, remaining))
        out[f"x-ratelimit-reset-{kind}"] = duration(reset)
    return out


def prompt_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text in a request body: the messages' string or text-part content, or the prompt."""
    chars = 0
    for m in body.get("messages") or ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text") or "") for p in content if isinstance(p, dict))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) if isinstance(p, str) else 1 for p in prompt)
    return chars


def estimate_tokens(body: dict[str, Any]) -> int:
    """A cheap upper-ish estimate of a request's tokens (prompt chars / 4 + max tokens), from its JSON body, for
    tokens-per-minute admission; corrected with the actual usage when the answer is done."""
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    return prompt_chars(body) // 4 + 1 + int(max_tokens)

"""A route's PII policy on the request path: what cloud tiers may see of a prompt, and PII counted in answers."""

from __future__ import annotations

import asyncio
from typing import Any

from serving.config import PIIPolicy
from serving.observability.metrics import GatewayMetrics
from serving.policy.context import RequestContext
from serving.policy.limits import prompt_chars
from serving.policy.pii import PIIScanner

PII_INLINE_BYTES = 4096
"""Prompts larger than this are scanned in a worker thread (phone-number validation costs ms per KB of numbers)."""


class RoutePII:
    """One scanner per route and PII policy, built once and rebuilt when the policy changes."""

    def __init__(self, metrics: GatewayMetrics):
        self.metrics = metrics
        self._scanners: dict[str, tuple[PIIPolicy, PIIScanner]] = {}

    def _scanner(self, route: str, policy: PIIPolicy) -> PIIScanner:
        held = self._scanners.get(route)
        if held is None or held[0] != policy:
            held = (policy, PIIScanner(policy.kinds, policy.phone_region))
            self._scanners[route] = held
        return held[1]

    async def cloud_request(self, route: str, policy: PIIPolicy, endpoint: str, body: dict[str, Any], request: Any,
                            ctx: RequestContext) -> Any:
        """The request as cloud tiers may see it: as sent, with its PII redacted, or None (blocked) when the
        policy says so. Local tiers always get the request as sent."""
        if policy.action == "allow":
            return request
        scanner = self._scanner(route, policy)
        if prompt_chars(body) > PII_INLINE_BYTES:
            redacted, counts = await asyncio.to_thread(scanner.redact_request, endpoint, body)
        else:
            redacted, counts = scanner.redact_request(endpoint, body)
        if not counts:
            return request
        ctx.pii.update(counts)
        action = "redacted" if policy.action == "redact" else "blocked"
        for kind, n in counts.items():
            self.metrics.pii.labels(route, "prompt", kind, action).inc(n)
        if policy.action == "block":
            return None
        return type(request).model_validate(redacted)

    def scan_answer(self, route: str, policy: PIIPolicy, endpoint: str, body: dict[str, Any],
                    ctx: RequestContext) -> None:
        """Count PII in an answer (metric and audit counts only, never the values)."""
        if policy.action == "allow" or not policy.scan_answers:
            return
        for kind, n in self._scanner(route, policy).count_answer(endpoint, body).items():
            self.metrics.pii.labels(route, "answer", kind, "counted").inc(n)
            ctx.pii["answer_" + kind] += n

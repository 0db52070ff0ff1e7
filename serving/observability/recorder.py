"""The request recorder: one object per request that writes its gateway metrics exactly once.

Labels follow `serving.observability.metrics`: `model_group` is the model group or route the client named
(`unknown` until it resolved), `engine` the engine/model that answered (or was tried last; `cache` for a cache hit).
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import Span

from serving.observability import tracing
from serving.observability.metrics import GatewayMetrics


class RequestRecord:
    """Metrics of one request: `begin()` when it goes to an engine (in flight), `finish()` once at the end, which
    also ends the request's root span (`span`, None when tracing is off)."""

    __slots__ = ("_in_flight", "done", "endpoint", "engine", "metrics", "name", "span", "start")

    def __init__(self, metrics: GatewayMetrics, endpoint: str, start: float, span: Span | None = None):
        self.metrics, self.endpoint, self.start, self.span = metrics, endpoint, start, span
        self.name = "unknown"
        self.engine = ""
        self.done = False
        self._in_flight: Any = None

    def begin(self) -> None:
        """The request is being served by engines now (`serving_requests_in_flight`)."""
        self._in_flight = self.metrics.in_flight.labels(self.name)
        self._in_flight.inc()

    def finish(self, status: int, usage: dict[str, Any] | None = None, t_first: float | None = None) -> None:
        """Count the request, its latency, its time to first token (streams) and its tokens; once."""
        if self.done:
            return
        self.done = True
        tracing.finish(self.span, status, usage)
        if self._in_flight is not None:
            self._in_flight.dec()
        end = time.perf_counter()
        m, name, engine = self.metrics, self.name, self.engine
        m.requests.labels(name, engine, self.endpoint, str(status)).inc()
        m.latency.labels(name, engine, self.endpoint).observe(end - self.start)
        if t_first is not None:
            m.ttft.labels(name, engine).observe(t_first - self.start)
        if not usage:
            return
        prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        m.prompt_tokens.labels(name, engine).inc(prompt)
        m.completion_tokens.labels(name, engine).inc(completion)
        if t_first is not None and completion > 1 and end > t_first:
            m.tps.labels(name, engine).observe((completion - 1) / (end - t_first))

"""The audit log: one JSON line per request, written off the event loop by a writer thread.

Lines carry who sent the request, the route, the tiers tried with their gate results, the model versions that
answered, tokens, cost, latency and the cache outcome; never an API key, and prompt text only for tenants that
opt in (`tenants.<t>.audit_prompts`).

The request path only encodes the line and puts it on a queue. The writer thread writes lines as they come and
flushes at most every `FLUSH_S` (and when idle): a flush per line cost more than the rest of the audit (profiled
with benchmarks/policy.py), so a crash can lose up to the last half second of lines.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
from typing import Any, TextIO

from serving.config import AuditConfig
from serving.policy.context import RequestContext

FLUSH_S = 0.5
_STOP = object()


class AuditLog:
    """Writes audit records as JSON lines to `cfg.path` (appended) or to the process's stderr."""

    def __init__(self, cfg: AuditConfig):
        self.cfg = cfg
        # The process's own stderr: inside a Ray Serve replica `sys.stderr` is replaced by a stream into Serve's
        # logger (each line re-formatted and buffered there); sys.__stderr__ is fd 2, Ray's worker-*.err file.
        stderr = sys.__stderr__ or sys.stderr
        self._stream: TextIO = open(cfg.path, "a", encoding="utf-8", buffering=1 << 16) if cfg.path else stderr  # noqa: SIM115
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="serving-audit", daemon=True)
        self._thread.start()
        self._open = True

    def write(self, record: dict[str, Any]) -> None:
        if self.cfg.enabled and self._open:
            self._queue.put(json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str))

    def _run(self) -> None:
        pending, last = False, time.monotonic()
        while True:
            try:
                line = self._queue.get(timeout=FLUSH_S)
            except queue.Empty:
                line = None
            if line is _STOP:
                self._stream.flush()
                return
            if line is not None:
                self._stream.write(line + "\n")
                pending = True
            if pending and (line is None or time.monotonic() - last >= FLUSH_S):
                self._stream.flush()
                pending, last = False, time.monotonic()

    def close(self) -> None:
        """Write what is queued, flush, and release the file (idempotent)."""
        if not self._open:
            return
        self._open = False
        self._queue.put(_STOP)
        self._thread.join(timeout=5)
        if self.cfg.path:
            self._stream.close()


def audit_record(ctx: RequestContext, status: int, error: str | None) -> dict[str, Any]:
    """The audit line of a finished request: who, what, the outcome, usage, cost and timings (prompt text only
    when the tenant opted in)."""
    u = ctx.usage or {}
    rec: dict[str, Any] = {
        "ts": round(ctx.wall, 3), "request_id": ctx.request_id, "tenant": ctx.tenant,
        "key_id": ctx.principal.key.id if ctx.principal and ctx.principal.key else None,
        "endpoint": ctx.endpoint, "model": ctx.model, "stream": ctx.stream, "status": status, "error": error,
        **ctx.details,
        "prompt_tokens": u.get("prompt_tokens"), "completion_tokens": u.get("completion_tokens"),
        "cost_usd": round(ctx.cost_usd, 10),
        "latency_ms": round((time.perf_counter() - ctx.start) * 1000, 2),
        "ttft_ms": round((ctx.t_first - ctx.start) * 1000, 2) if ctx.t_first else None,
        "cache": ctx.cache,
    }
    if ctx.pii:
        rec["pii"] = dict(ctx.pii)
    if ctx.injection:
        rec["injection"] = ctx.injection
    if ctx.degraded:
        rec["policy"] = "degraded"
    if ctx.prompt is not None:
        rec["prompt"] = ctx.prompt
    return rec

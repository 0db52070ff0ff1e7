"""The audit log: one JSON line per request, written off the event loop (a logging queue and its own thread).

Lines carry who sent the request, the route, the tiers tried with their gate results, the model versions that
answered, tokens, cost, latency and the cache outcome; never an API key, and prompt text only for tenants that
opt in (`tenants.<t>.audit_prompts`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from typing import Any

from serving.policy_config import AuditConfig

AUDIT_LOGGER = "serving.audit"


class AuditLog:
    """Writes audit records as JSON lines to a file or the `serving.audit` logger's stream (stderr)."""

    def __init__(self, cfg: AuditConfig):
        self.cfg = cfg
        self.logger = logging.getLogger(f"{AUDIT_LOGGER}.{id(self):x}")
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        target: logging.Handler = (logging.FileHandler(cfg.path, encoding="utf-8") if cfg.path
                                   else logging.StreamHandler(sys.stderr))
        target.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener = logging.handlers.QueueListener(self._queue, target)
        self._target = target
        self._listener.start()
        self._open = True

    def write(self, record: dict[str, Any]) -> None:
        if self.cfg.enabled:
            self.logger.info(json.dumps(record, separators=(",", ":"), ensure_ascii=False, default=str))

    def close(self) -> None:
        """Flush pending lines and release the file (idempotent)."""
        if not self._open:
            return
        self._open = False
        self._listener.stop()
        self._target.close()
        for h in list(self.logger.handlers):
            self.logger.removeHandler(h)

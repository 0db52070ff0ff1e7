"""Engine health as the gateway sees it: background probes, so a dead engine gets a 503 at once.

Without this, Ray Serve holds requests for a deployment with no live replica until a replacement starts
(tens of seconds for a vLLM engine), and clients would wait up to the request deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from serving.engines.base import Engine
from serving.routing.groups import GroupRouter, ModelGroup

logger = logging.getLogger("serving.health")


class EngineHealth:
    """Probes every engine every `interval_s`; `failures_to_down` failed probes in a row mark it down."""

    def __init__(self, router: GroupRouter, interval_s: float, timeout_s: float, failures_to_down: int = 2):
        self._router = router
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.failures_to_down = failures_to_down
        self.down: set[str] = set()
        self._failures: Counter[str] = Counter()
        self._task: asyncio.Task[None] | None = None

    def choose(self, group: ModelGroup, engine: Engine) -> Engine | None:
        """`engine` if it is not known to be down, else another live engine of the group, else None."""
        if self._task is None and self.interval_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop())
        if engine.name not in self.down:
            return engine
        for other in group.engines:
            if other.name not in self.down:
                return other
        return None

    def mark_failed(self, name: str) -> None:
        """A request just found the engine unavailable: treat it as down until a probe succeeds."""
        self._failures[name] = self.failures_to_down
        if name not in self.down:
            logger.warning("engine %s marked down (unavailable on a request)", name)
        self.down.add(name)

    async def _probe(self, engine: Engine) -> str:
        try:
            await asyncio.wait_for(engine.check_health(), self.timeout_s)
        except Exception as exc:  # any failure counts; the reason is reported by /ready
            self._failures[engine.name] += 1
            if self._failures[engine.name] >= self.failures_to_down and engine.name not in self.down:
                logger.warning("engine %s marked down: %s", engine.name, type(exc).__name__)
                self.down.add(engine.name)
            return f"not ready: {type(exc).__name__ or 'error'}"
        self._failures[engine.name] = 0
        if engine.name in self.down:
            logger.info("engine %s is back", engine.name)
            self.down.discard(engine.name)
        return "ready"

    async def probe_all(self) -> dict[str, str]:
        """Probe every engine now; returns `{engine: "ready" | "not ready: <reason>"}`."""
        engines = list(self._router.engines.values())
        states = await asyncio.gather(*(self._probe(e) for e in engines))
        return {e.name: s for e, s in zip(engines, states, strict=True)}

    async def _loop(self) -> None:
        while True:
            try:
                await self.probe_all()
            except Exception:  # never let the monitor die
                logger.exception("health probe loop failed")
            await asyncio.sleep(self.interval_s)

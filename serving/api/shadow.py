"""Shadow traffic: a mirrored copy of a model group's request to its shadow engine, answered to no one."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from serving.engines.base import Engine, EngineUnavailable, Rejected
from serving.observability.metrics import GatewayMetrics


class Mirror:
    """Sends copies in the background; their status and latency are recorded (`serving_shadow_*`), nothing else."""

    def __init__(self, metrics: GatewayMetrics, timeout_s: float):
        self.metrics = metrics
        self.timeout_s = timeout_s
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, engine: Engine, group: str, endpoint: str, request: Any) -> None:
        """Mirror `request` to `engine` (a copy; the client's request is not touched)."""
        copy = request.model_copy(deep=True)
        copy.model = engine.name
        task = asyncio.get_running_loop().create_task(self._call(engine, group, endpoint, copy))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, engine: Engine, group: str, endpoint: str, request: Any) -> None:
        start = time.perf_counter()

        async def drain() -> str:
            async for item in engine.generate(endpoint, request):  # type: ignore[arg-type]
                if isinstance(item, Rejected):
                    return str(item.status)
            return "200"

        try:
            status = await asyncio.wait_for(drain(), self.timeout_s)
        except asyncio.TimeoutError:
            status = "504"
        except EngineUnavailable:
            status = "503"
        except Exception:  # a failing shadow must never matter to anyone but its metrics
            status = "502"
        self.metrics.shadow_requests.labels(group, engine.name, status).inc()
        self.metrics.shadow_latency.labels(group, engine.name).observe(time.perf_counter() - start)

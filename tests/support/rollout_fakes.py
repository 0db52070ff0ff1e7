"""Test doubles for the rollout controller: an in-memory Serve config (applier) and settable metrics."""

from __future__ import annotations

import copy
from typing import Any

from serving.rollout.analysis import EngineStats, Snapshot
from serving.rollout.appliers import Change


class FakeApplier:
    """Holds a Serve config; every engine app reports `status_for(app)` (RUNNING unless told otherwise)."""

    def __init__(self, config: dict[str, Any]):
        self.config = copy.deepcopy(config)
        self.writes: list[dict[str, Any]] = []
        self.statuses: dict[str, str] = {}
        self.default_status = "RUNNING"

    def read(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def update(self, change: Change) -> dict[str, Any]:
        self.config = change(self.read())
        self.writes.append(copy.deepcopy(self.config))
        return self.config

    def app_statuses(self) -> dict[str, str]:
        return {a["name"]: self.statuses.get(a["name"], self.default_status) for a in self.config["applications"]}


class FakeMetrics:
    """Cumulative per-engine counters a test advances: `serve(engine, n, errors=..., ttft_s=...)`."""

    def __init__(self) -> None:
        self.stats: dict[str, EngineStats] = {}

    def serve(self, engine: str, n: int, *, errors: int = 0, ttft_s: float = 0.05, shadow: bool = False) -> None:
        st = self.stats.setdefault(engine, EngineStats())
        if shadow:
            st.shadow_requests += n
            st.shadow_errors += errors
            return
        st.requests += n
        st.errors += errors
        for le in (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, float("inf")):
            if ttft_s <= le:
                st.ttft_buckets[le] = st.ttft_buckets.get(le, 0.0) + n
            else:
                st.ttft_buckets.setdefault(le, 0.0)

    def snapshot(self, group: str) -> Snapshot:
        return copy.deepcopy(self.stats)

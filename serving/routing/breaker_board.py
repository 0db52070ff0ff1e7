"""Breaker state shared across gateway replicas: a tier one replica found dead is skipped by all.

When a replica's breaker for a tier opens, its next sync (every `interval_s`) writes `<prefix>breaker:<tier>`
(the wall-clock time it opens until, expiring with it) to the shared store; when it closes again the key is
deleted. In the same sync every replica reads the keys of its tiers and opens its own breaker for the time left.
Only openings travel: each replica still probes a half-open tier itself. The store being down costs nothing but
the sharing (each replica's breakers keep working on their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from serving.routing.tiers import Tier

logger = logging.getLogger("serving.routing")


class BreakerStore(Protocol):
    """Where the open breakers are kept (`PolicyStore` on Redis)."""

    async def breakers_open(self, tiers: list[str]) -> dict[str, float]:
        """tier -> wall-clock time its breaker is open until, for the tiers with an open breaker."""
        ...

    async def open_breaker(self, tier: str, until: float) -> None: ...

    async def close_breaker(self, tier: str) -> None: ...


class BreakerBoard:
    """Publishes this replica's breaker openings and applies the other replicas' (one per gateway replica)."""

    def __init__(self, tiers: Callable[[], Mapping[str, Tier]], interval_s: float = 1.0):
        self.tiers = tiers
        self.interval_s = interval_s
        self.store: BreakerStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._changes: dict[str, float] = {}  # tier -> open until (wall clock; 0: closed), not yet published

    def set_store(self, store: BreakerStore | None) -> None:
        self.store = store

    def changed(self, tier: str, remaining_s: float) -> None:
        """A local breaker opened (`remaining_s` > 0) or closed: the next sync tells the other replicas."""
        if self.store is not None:
            self._changes[tier] = time.time() + remaining_s if remaining_s > 0 else 0.0
            self.ensure_running()

    def ensure_running(self) -> None:
        """Start the sync loop on the running event loop (once a store is set)."""
        if self._task is None and self.store is not None:
            with contextlib.suppress(RuntimeError):  # no loop yet: the first change or sync starts it
                self._task = asyncio.get_running_loop().create_task(self._loop())

    async def sync(self) -> None:
        """Publish this replica's changes, then open local breakers that another replica opened (raises if the
        store is down; unpublished changes are kept for the next sync)."""
        store = self.store
        if store is None:
            return
        while self._changes:
            tier, until = next(iter(self._changes.items()))
            if until > time.time():
                await store.open_breaker(tier, until)
            elif until == 0.0:
                await store.close_breaker(tier)
            if self._changes.get(tier) == until:
                del self._changes[tier]
        tiers = {name: t for name, t in self.tiers().items() if t.breaker is not None}
        if not tiers:
            return
        now = time.time()
        for name, until in (await store.breakers_open(list(tiers))).items():
            breaker = tiers[name].breaker
            if breaker is not None and until - now > breaker.open_remaining_s + 0.5:
                logger.info("tier %s: circuit opened by another gateway replica for %.1f s", name, until - now)
                breaker.force_open(until - now)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sync()
            except Exception as exc:  # the store is down: local breakers only, until it is back
                logger.debug("breaker sync failed: %s", exc)

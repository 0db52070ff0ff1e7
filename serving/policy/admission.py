"""Admission control and load shedding: bounded concurrency and a bounded queue per model group and per route.

A request takes a slot (`Limiter.acquire`) before any engine work and gives it back when it is complete (its
stream included). Without a free slot it waits in the queue, ordered by priority class (`interactive` before
`batch`) and, within a class, shared fairly between tenants: the next slot goes to the waiting tenant with the
fewest requests in flight, and while other tenants are active no tenant takes the last `tenant_headroom` slots
per other tenant, so another tenant's next request finds one free instead of waiting behind a burst. It is
refused with a `Shed` (a 429) at once when the queue is full or its expected wait is longer than
`queue_timeout_s`, or after waiting that long. A full queue makes room for a request of a higher class, or of a
tenant with a smaller share (requests in flight + waiting) than the heaviest waiting one, by refusing that
class's or tenant's newest waiter: one tenant's burst cannot fill the queue against the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.config.admission import PRIORITIES, AdmissionConfig, Priority
from serving.observability.metrics import GatewayMetrics

HOLD_EWMA = 0.2
"""Weight of the newest sample in the mean slot hold time (the expected-wait estimate)."""
MIN_RETRY_AFTER_S = 0.1


class Shed(Exception):
    """Refused by admission control (a 429): `reason` is `queue_full` or `queue_timeout`."""

    def __init__(self, message: str, reason: str, retry_after_s: float):
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Waiter:
    tenant: str
    priority: Priority
    since: float
    future: asyncio.Future[None]


@dataclass(eq=False)
class Slot:
    """A held slot: `release()` it exactly once (more calls do nothing)."""

    limiter: Limiter
    tenant: str
    since: float
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.limiter._release(self)


@dataclass
class Bounds:
    max_concurrency: int
    max_queue: int
    queue_timeout_s: float
    tenant_headroom: int = 0
    tenant_window_s: float = 10.0


class Limiter:
    """The slots and queue of one model group or route on one gateway replica."""

    def __init__(self, name: str, bounds: Bounds, metrics: GatewayMetrics | None = None):
        self.name = name
        self.bounds = bounds
        self.metrics = metrics
        self.in_flight = 0
        self.tenant_in_flight: Counter[str] = Counter()
        self.queues: dict[Priority, dict[str, deque[Waiter]]] = {p: {} for p in PRIORITIES}
        self.waiting = 0
        self.hold_s: float | None = None  # mean time a slot is held (EWMA), once one was released
        self.seen: dict[str, float] = {}  # tenant -> when it last asked for a slot

    # ------------------------------------------------------------------------------------------- public

    async def acquire(self, tenant: str, priority: Priority = "interactive") -> Slot:
        """A slot for one request, now or after a bounded wait; raises `Shed` when refused."""
        b = self.bounds
        self._saw(tenant)
        ahead = self._waiting_at_or_above(priority)
        if self.in_flight < b.max_concurrency and not ahead and self._may_take(tenant):
            return self._take(tenant)
        expected = self._expected_wait(ahead + 1)
        if expected > b.queue_timeout_s:
            raise self._shed("queue_full", priority, f"its expected wait ({expected:.1f} s) is longer than "
                             f"{b.queue_timeout_s:g} s", expected)
        if self.waiting >= b.max_queue and not self._make_room(tenant, priority):
            raise self._shed("queue_full", priority, f"{self.in_flight} requests are in flight and {self.waiting} "
                             "waiting", self._expected_wait(self.waiting + 1))
        waiter = Waiter(tenant, priority, time.monotonic(), asyncio.get_running_loop().create_future())
        self.queues[priority].setdefault(tenant, deque()).append(waiter)
        self.waiting += 1
        self._gauges()
        try:
            async with asyncio.timeout(b.queue_timeout_s):
                await waiter.future
        except TimeoutError:
            self._remove(waiter)
            raise self._shed("queue_timeout", priority, f"no slot came free within {b.queue_timeout_s:g} s",
                             self._expected_wait(self.waiting + 1)) from None
        except BaseException:  # refused to make room (Shed), or the client left
            if not self._remove(waiter) and waiter.future.done() and not waiter.future.cancelled() \
                    and waiter.future.exception() is None:
                self._release(Slot(self, tenant, waiter.since))  # it was handed a slot just now: give it back
            raise
        if self.metrics is not None:
            self.metrics.admission_wait.labels(self.name, priority).observe(time.monotonic() - waiter.since)
        return Slot(self, tenant, time.monotonic())

    def resize(self, bounds: Bounds) -> None:
        """New bounds (a config change); requests in flight and waiting keep their places."""
        self.bounds = bounds
        self._hand_out()

    # ----------------------------------------------------------------------------------------- internals

    def _take(self, tenant: str) -> Slot:
        self.in_flight += 1
        self.tenant_in_flight[tenant] += 1
        self._gauges()
        return Slot(self, tenant, time.monotonic())

    def _release(self, slot: Slot) -> None:
        self.in_flight -= 1
        self.tenant_in_flight[slot.tenant] -= 1
        if self.tenant_in_flight[slot.tenant] <= 0:
            del self.tenant_in_flight[slot.tenant]
        held = time.monotonic() - slot.since
        self.hold_s = held if self.hold_s is None else (1 - HOLD_EWMA) * self.hold_s + HOLD_EWMA * held
        self._hand_out()
        self._gauges()

    def _saw(self, tenant: str) -> None:
        now = time.monotonic()
        self.seen[tenant] = now
        if len(self.seen) > 64:  # forget tenants idle for longer than the window
            horizon = now - self.bounds.tenant_window_s
            self.seen = {t: at for t, at in self.seen.items() if at >= horizon}

    def _cap(self, tenant: str) -> int:
        """Slots `tenant` may hold now: all of them, less the headroom kept for the other active tenants."""
        b = self.bounds
        if not b.tenant_headroom:
            return b.max_concurrency
        horizon = time.monotonic() - b.tenant_window_s
        others = sum(1 for t, at in self.seen.items() if t != tenant and (at >= horizon or self.tenant_in_flight[t]))
        return b.max_concurrency - min(others * b.tenant_headroom, b.max_concurrency // 4)

    def _may_take(self, tenant: str) -> bool:
        return self.tenant_in_flight[tenant] < self._cap(tenant)

    def _hand_out(self) -> None:
        """Give free slots to waiters: highest class first, then the tenant with the fewest in flight, skipping
        tenants at their cap (the slot stays free for another tenant's request)."""
        while self.in_flight < self.bounds.max_concurrency and self.waiting:
            tenants: dict[str, deque[Waiter]] = {}
            for priority in PRIORITIES:
                tenants = {t: q for t, q in self.queues[priority].items() if self._may_take(t)}
                if tenants:
                    break
            if not tenants:
                return
            tenant = min(tenants, key=lambda t: (self.tenant_in_flight[t], tenants[t][0].since))
            waiter = self._pop(priority, tenant, newest=False)
            if waiter.future.done():  # cancelled (its client left, or it timed out) but not yet removed
                continue
            self.in_flight += 1
            self.tenant_in_flight[tenant] += 1
            waiter.future.set_result(None)

    def _pop(self, priority: Priority, tenant: str, *, newest: bool) -> Waiter:
        queue = self.queues[priority][tenant]
        waiter = queue.pop() if newest else queue.popleft()
        if not queue:
            del self.queues[priority][tenant]
        self.waiting -= 1
        return waiter

    def _remove(self, waiter: Waiter) -> bool:
        """Take a waiter out of the queue; False if it was no longer there."""
        queue = self.queues[waiter.priority].get(waiter.tenant)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self.queues[waiter.priority][waiter.tenant]
        self.waiting -= 1
        self._gauges()
        return True

    def _make_room(self, tenant: str, priority: Priority) -> bool:
        """Refuse the newest waiter of a lower class, else of the waiting tenant with the largest share in this
        class (requests in flight + waiting) if it is larger than `tenant`'s would be; True if a place was freed."""
        rank = PRIORITIES.index(priority)
        for lower in reversed(PRIORITIES[rank + 1:]):
            tenants = self.queues[lower]
            if tenants:
                heaviest = max(tenants, key=lambda t: len(tenants[t]))
                self._push_out(lower, heaviest)
                return True
        tenants = self.queues[priority]
        if not tenants:
            return False

        def share(t: str) -> int:  # what a tenant holds and waits for: a flood's slots count against its waiters
            return len(tenants.get(t, ())) + self.tenant_in_flight[t]

        heaviest = max(tenants, key=share)
        if heaviest != tenant and share(heaviest) > share(tenant) + 1:
            self._push_out(priority, heaviest)
            return True
        return False

    def _push_out(self, priority: Priority, tenant: str) -> None:
        waiter = self._pop(priority, tenant, newest=True)
        if waiter.future.done():  # already leaving
            return
        waiter.future.set_exception(self._shed("queue_full", priority, "its place in the queue went to a request "
                                               "of a higher class or of a tenant with fewer waiting",
                                               self._expected_wait(self.waiting + 1)))

    def _waiting_at_or_above(self, priority: Priority) -> int:
        """Waiters of this class or higher that a free slot could go to (tenants at their cap wait for their own
        slots to come back)."""
        rank = PRIORITIES.index(priority)
        return sum(len(q) for p in PRIORITIES[:rank + 1] for t, q in self.queues[p].items() if self._may_take(t))

    def _expected_wait(self, position: int) -> float:
        """Expected seconds until the `position`-th waiter gets a slot: slots come free at `max_concurrency` per
        mean hold time (0 until a slot was released once)."""
        if self.hold_s is None:
            return 0.0
        return position * self.hold_s / self.bounds.max_concurrency

    def _shed(self, reason: str, priority: Priority, why: str, retry_after_s: float) -> Shed:
        if self.metrics is not None:
            self.metrics.admission_shed.labels(self.name, reason, priority).inc()
        return Shed(f"{self.name} is at capacity: {why}. Retry later.", reason,
                    max(MIN_RETRY_AFTER_S, min(retry_after_s, self.bounds.queue_timeout_s)))

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.admission_in_flight.labels(self.name).set(self.in_flight)
            self.metrics.admission_queued.labels(self.name).set(self.waiting)


@dataclass
class AdmissionTable:
    """The limiters of one gateway replica, one per model group and route with admission on."""

    metrics: GatewayMetrics | None = None
    limiters: dict[str, Limiter] = field(default_factory=dict)

    def update(self, bounds: Mapping[str, Bounds]) -> None:
        """Set the bounds of each name (groups and routes); limiters in use keep their counts."""
        for name in list(self.limiters):
            if name not in bounds:
                del self.limiters[name]  # its slots in use still release into the old object
        for name, b in bounds.items():
            if name in self.limiters:
                self.limiters[name].resize(b)
            else:
                self.limiters[name] = Limiter(name, b, self.metrics)

    def get(self, name: str) -> Limiter | None:
        return self.limiters.get(name)


def bounds_for(cfg: AdmissionConfig, capacity: int, gateway_replicas: int) -> Bounds | None:
    """The bounds one gateway replica applies (None: admission off). `capacity`: the engines' concurrent
    sequences behind the name (across all their replicas)."""
    if not cfg.enabled:
        return None
    concurrency = cfg.max_concurrency or max(1, math.ceil(capacity / max(1, gateway_replicas)))
    queue = max(1, math.ceil(concurrency / 4)) if cfg.max_queue is None else cfg.max_queue
    return Bounds(concurrency, queue, cfg.queue_timeout_s, cfg.tenant_headroom, cfg.tenant_window_s)

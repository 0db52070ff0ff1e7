"""Tiers at run time: each configured tier with its engine source, price and circuit breaker."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from serving.config import ProviderConfig, RetryConfig, TierConfig
from serving.engines.base import Engine
from serving.routing.groups import GroupRouter
from serving.routing.health import EngineHealth
from serving.routing.resilience import BreakerHook, TierBreaker, TierDown

logger = logging.getLogger("serving.routing")

CloudFactory = Callable[[str, ProviderConfig, TierConfig], Engine]
"""`(tier name, provider, tier) -> Engine` for a cloud tier."""


def default_cloud_factory(name: str, provider: ProviderConfig, tier: TierConfig) -> Engine:
    """A cloud engine from the official SDK adapters; the API key comes from the provider's env variable."""
    key = os.environ.get(provider.key_env)
    if not key:
        raise TierDown(f"tier {name}: the API key variable {provider.key_env} is not set")
    kwargs = {"api_key": key, "base_url": provider.base_url, "timeout_s": tier.ttft_timeout_s,
              "max_connections": provider.max_connections, "default_max_tokens": tier.max_tokens}
    if provider.kind == "anthropic":
        from serving.engines.anthropic_messages import AnthropicEngine

        if tier.max_tokens is None:
            kwargs.pop("default_max_tokens")
        return AnthropicEngine(name, tier.model or "", **kwargs)  # type: ignore[arg-type]
    from serving.engines.openai_compat import OpenAICompatEngine

    return OpenAICompatEngine(name, tier.model or "", **kwargs)  # type: ignore[arg-type]


@dataclass
class Tier:
    """A configured tier: where its engine comes from, what it costs and whether its circuit is open.

    A model group named directly by a client is served as a one-tier chain through its own tier (`group=True`):
    one try per request within the gateway's `ttft_timeout_s` / `stall_timeout_s`, no breaker (the health probes
    take dead engines out of traffic), no price."""

    name: str
    config: TierConfig
    breaker: TierBreaker | None
    kind: str  # "local" | "openai" | "anthropic"
    cloud: Engine | None = None
    cloud_error: str | None = None
    group: bool = False

    @property
    def provider(self) -> str:
        """`gen_ai.provider.name`: openai, anthropic, or vllm for local engines."""
        return "vllm" if self.kind == "local" else self.kind

    @property
    def label(self) -> str:
        """How messages name it: `tier <name>`, or `model group <name>` for a group's own tier."""
        return f"model group {self.name}" if self.group else f"tier {self.name}"

    @property
    def logprobs(self) -> bool:
        """Whether this tier can return token logprobs (the confidence gate needs them)."""
        return self.kind != "anthropic"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        per_in, per_out = self.config.price.per_token()
        return prompt_tokens * per_in + completion_tokens * per_out


class TierSet:
    """All tiers of the platform; local tiers pick an engine of their model group (by weight, skipping
    engines known to be down), cloud tiers use one SDK-backed engine each."""

    def __init__(self, router: GroupRouter, health: EngineHealth, cloud_factory: CloudFactory = default_cloud_factory,
                 group_ttft_s: float = 120.0, group_stall_s: float = 30.0):
        self.router = router
        self.health = health
        self.cloud_factory = cloud_factory
        self.group_ttft_s, self.group_stall_s = group_ttft_s, group_stall_s
        self.tiers: dict[str, Tier] = {}
        self._group_tiers: dict[str, Tier] = {}
        self.breaker_hook: BreakerHook | None = None  # hears of breakers opening and closing (BreakerBoard)
        self.engine_context: dict[str, int] = {}  # engine -> max_model_len, where known

    def group_tier(self, group: str) -> Tier:
        """The tier that serves requests naming the model group `group` directly."""
        tier = self._group_tiers.get(group)
        if tier is None:
            cfg = TierConfig(model_group=group, ttft_timeout_s=self.group_ttft_s, stall_timeout_s=self.group_stall_s,
                             retry=RetryConfig(attempts=1))
            tier = self._group_tiers[group] = Tier(group, cfg, None, "local", group=True)
        return tier

    def update(self, tiers: Mapping[str, TierConfig], providers: Mapping[str, ProviderConfig]) -> None:
        """Apply a new tier table; a tier whose config is unchanged keeps its breaker and client."""
        table: dict[str, Tier] = {}
        for name, cfg in tiers.items():
            old = self.tiers.get(name)
            provider = providers.get(cfg.provider) if cfg.provider else None
            if old is not None and old.config == cfg and (provider is None or old.kind == provider.kind):
                table[name] = old
                continue
            tier = Tier(name, cfg, TierBreaker(name, cfg.breaker, self._breaker_changed),
                        provider.kind if provider else "local")
            if provider is not None:
                try:
                    tier.cloud = self.cloud_factory(name, provider, cfg)
                except Exception as exc:
                    tier.cloud_error = str(exc)
                    logger.warning("tier %s is disabled: %s", name, exc)
            table[name] = tier
        self.tiers = table

    def context_window(self, tier: Tier) -> int | None:
        """Tokens a call of `tier` may take: its `context_window`, else (local) the smallest max_model_len of its
        group's engines, if every one is known; None: unknown."""
        if tier.config.context_window is not None:
            return tier.config.context_window
        group = self.router.groups.get(tier.config.model_group or "")
        if group is None:
            return None
        sizes = [self.engine_context.get(e.name) for e in (*group.engines, *group.standby)]
        return min(sizes) if sizes and all(s is not None for s in sizes) else None  # type: ignore[type-var]

    def _breaker_changed(self, tier: str, remaining_s: float) -> None:
        if self.breaker_hook is not None:
            self.breaker_hook(tier, remaining_s)

    def engine_for(self, tier: Tier, pin: str | None = None) -> Engine:
        """The engine that serves this call of `tier` (`pin`: that engine of a group); raises `TierDown` if none
        can."""
        if tier.config.model_group is None:
            if tier.cloud is None:
                raise TierDown(tier.cloud_error or f"tier {tier.name} has no client")
            return tier.cloud
        group, engine = self.router.route(tier.config.model_group, pin=pin)
        if pin:
            if engine.name in self.health.down:
                raise TierDown(f"{tier.label}: engine {engine.name} is not available")
            return engine
        chosen = self.health.choose(group, engine)
        if chosen is None:
            raise TierDown(f"{tier.label}: no engine of model group {group.name} is available")
        return chosen

    def model_name(self, tier: Tier, engine: Engine) -> str:
        """The model a client is told answered: the engine (local) or the provider's model name (cloud)."""
        return engine.name if tier.config.model_group is not None else (tier.config.model or engine.name)

"""One validated model of the whole platform, loaded from YAML (see `serving.config.loader`).

The same `PlatformConfig` feeds the Ray Serve application (`serving.app`), the CLI and the Helm values. Its parts
live in their own modules: engines and model groups, routing, tenants, policies, rollout.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from serving.config.base import NAME_RE, StrictModel
from serving.config.engines import EngineConfig, ModelGroupConfig
from serving.config.policies import PoliciesConfig
from serving.config.rollout import RolloutConfig
from serving.config.routing import ProviderConfig, RouteConfig, TierConfig
from serving.config.tenants import TenantConfig


class TracingConfig(StrictModel):
    """OpenTelemetry traces of the request path (one trace per request: a span per stage and per tier attempt)."""

    enabled: bool = Field(False, description="Export traces (off: no spans are made at all).")
    endpoint: str | None = Field(
        None, description="OTLP endpoint, e.g. http://otel-collector:4318/v1/traces (http/protobuf) or "
        "http://otel-collector:4317 (grpc); default: the exporter's, from OTEL_EXPORTER_OTLP_* variables.",
    )
    protocol: Literal["http/protobuf", "grpc"] = "http/protobuf"
    service_name: str = Field("serving-gateway", min_length=1, description="The `service.name` resource attribute.")
    sample_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of new traces recorded; a client's sampled traceparent is followed."
    )


class GatewayAutoscaling(StrictModel):
    """Gateway replicas scaled by Ray Serve on ongoing requests per replica."""

    min_replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    target_ongoing_requests: int = Field(
        64, ge=1, description="Ongoing requests per gateway replica Serve scales to (streams included).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> GatewayAutoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self


class GatewayConfig(StrictModel):
    """The OpenAI-compatible ingress deployment."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    replicas: int = Field(1, ge=1, description="Gateway replicas (with `autoscaling`: the replicas it starts with).")
    autoscaling: GatewayAutoscaling | None = Field(
        None, description="Scale the gateway replicas on their ongoing requests (Ray Serve autoscaling).",
    )
    drain_timeout_s: float = Field(
        30.0, gt=0,
        description=(
            "A replica being stopped (rolling update, scale-down) gets no new requests and finishes the ones in "
            "flight, streams included, for up to this long (Serve's graceful_shutdown_timeout_s)."
        ),
    )
    num_cpus: float = Field(0.0, ge=0.0, description="Ray CPUs reserved per gateway replica (0 on small boxes).")
    max_ongoing_requests: int = Field(1024, ge=1)
    request_timeout_s: float = Field(
        600.0, gt=0, description="Deadline of a model-group request (its one engine call), 504 past it.",
    )
    ttft_timeout_s: float = Field(
        120.0, gt=0, description="Model groups: time to the first token, the engine's queue included (504 past it).",
    )
    stall_timeout_s: float = Field(
        30.0, gt=0, description="Model groups: longest gap between two tokens before the call is given up (504).",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Requests larger than this get a 413.")
    health_interval_s: float = Field(
        2.0, ge=0, description="Engine health probe period; 2 failed probes in a row -> 503 at once (0: off)."
    )
    health_timeout_s: float = Field(5.0, gt=0, description="A health probe slower than this has failed.")
    tenant_header: str = Field(
        "x-serving-tenant", description="Request header naming the tenant (selects the tenant's routes)."
    )
    priority_header: str = Field(
        "x-serving-priority",
        description="Request header with the admission class (interactive, batch); it can only lower the tenant's.",
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description=(
            "Each replica also serves its own /metrics on this port (one scrape target per replica: /metrics on "
            "the Serve port reaches a random replica). The Helm chart sets it; at most one replica per node."
        ),
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @property
    def admission_replicas(self) -> int:
        """Replicas the derived admission bounds are divided by: the fixed count, or the autoscaler's minimum."""
        return self.autoscaling.min_replicas if self.autoscaling is not None else self.replicas

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class RayConfig(StrictModel):
    """Where the Serve application runs."""

    address: str | None = Field(None, description="Existing Ray cluster address; None starts a local one.")
    num_cpus: int | None = Field(None, ge=1, description="Logical CPUs for a local Ray (default: the machine's).")
    metrics_export_port: int = Field(8080, ge=1, le=65535, description="Ray's Prometheus port (vLLM metrics).")
    app_name: str = "serving"
    serve_ingress: Literal["haproxy", "proxy"] = Field(
        "haproxy",
        description=(
            "haproxy: Ray Serve's HAProxy mode: HAProxy forwards HTTP straight to each gateway replica's own "
            "HTTP server (direct ingress). proxy: Ray Serve's Python HTTP proxy actor relays every request "
            "and every streamed chunk (one more process hop; see docs/benchmarks.md)."
        ),
    )
    throughput_optimized: bool = Field(
        True, description="RAY_SERVE_THROUGHPUT_OPTIMIZED: gRPC between deployments, user code on the replica loop."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the Ray cluster processes.")

    def cluster_env(self) -> dict[str, str]:
        """Environment the Ray cluster processes need for these settings (set before `ray start`)."""
        env = {"RAY_USAGE_STATS_ENABLED": "0"}
        if self.serve_ingress == "haproxy":
            env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        if self.throughput_optimized:
            env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] = "1"
        env.update(self.env)
        return env


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
HAPROXY_HARD_STOP_AFTER_S = 120
"""Ray Serve's default for RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S."""


class PlatformConfig(StrictModel):
    """The whole platform: Ray, the gateway, engines, the model groups and the routes clients address."""

    version: Literal[1] = 1
    ray: RayConfig = Field(default_factory=RayConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    engines: dict[str, EngineConfig] = Field(min_length=1)
    model_groups: dict[str, ModelGroupConfig] = Field(min_length=1)
    providers: dict[str, ProviderConfig] = Field(default_factory=dict, description="Cloud API accounts.")
    tiers: dict[str, TierConfig] = Field(default_factory=dict, description="Local or cloud steps of routes.")
    routes: dict[str, RouteConfig] = Field(
        default_factory=dict, description="Model names with a quality-gated tier chain (see docs/routing.md)."
    )
    tenants: dict[str, TenantConfig] = Field(default_factory=dict, description="Per-tenant route choices.")
    rollout: RolloutConfig = Field(
        default_factory=RolloutConfig, description="Model groups whose versions come from the MLflow registry."
    )
    policies: PoliciesConfig = Field(
        default_factory=PoliciesConfig, description="API keys, limits, budgets, cache, PII, audit (docs/policies.md)."
    )

    def cluster_env(self) -> dict[str, str]:
        """Environment the Ray cluster processes need (set before `ray start`): the Ray settings', and with the
        HAProxy ingress a hard-stop-after long enough that a reloaded HAProxy does not cut the connections of
        streams a stopping gateway replica is still draining (the gateway's `drain_timeout_s` plus 30 s, at least
        Ray's default of 120 s); `ray.env` overrides both."""
        env = self.ray.cluster_env()
        if self.ray.serve_ingress == "haproxy":
            hard_stop = max(HAPROXY_HARD_STOP_AFTER_S, math.ceil(self.gateway.drain_timeout_s) + 30)
            env = {**env, "RAY_SERVE_HAPROXY_HARD_STOP_AFTER_S": str(hard_stop), **self.ray.env}
        return env

    @field_validator("engines", "model_groups", "providers", "tiers", "routes", "tenants")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not NAME_RE.match(name):
                raise ValueError(f"invalid name {name!r}: use lower-case letters, digits, '.', '-' or '_'")
        return value

    @model_validator(mode="after")
    def _references(self) -> PlatformConfig:
        for group_name, group in self.model_groups.items():
            for i, member in enumerate(group.engines):
                if member.engine not in self.engines:
                    raise ValueError(
                        f"model_groups.{group_name}.engines.{i}.engine: unknown engine {member.engine!r} "
                        f"(defined: {', '.join(sorted(self.engines))})"
                    )
            if group.shadow is not None and group.shadow.engine not in self.engines:
                raise ValueError(
                    f"model_groups.{group_name}.shadow.engine: unknown engine {group.shadow.engine!r} "
                    f"(defined: {', '.join(sorted(self.engines))})"
                )
        self._check_tasks()
        self._check_routing()
        self._check_policies()
        for rollout_group in self.rollout.models:
            if rollout_group not in self.model_groups:
                raise ValueError(
                    f"rollout.models.{rollout_group}: unknown model group {rollout_group!r} "
                    f"(defined: {', '.join(sorted(self.model_groups))})"
                )
        return self

    def group_task(self, group: str) -> str:
        """`generate` or `embed`: what the engines of a model group do (all the same, checked at load)."""
        return self.engines[self.model_groups[group].engines[0].engine].task

    def embedding_groups(self) -> list[str]:
        """The model groups of embedding engines (they answer /v1/embeddings only)."""
        return [name for name in self.model_groups if self.group_task(name) == "embed"]

    def _check_tasks(self) -> None:
        for name, group in self.model_groups.items():
            members = [m.engine for m in group.engines] + ([group.shadow.engine] if group.shadow else [])
            tasks = {self.engines[e].task for e in members}
            if len(tasks) > 1:
                raise ValueError(f"model_groups.{name}.engines: mixes embedding and generating engines "
                                 f"({', '.join(f'{e}: {self.engines[e].task}' for e in members)})")
        for name, tier in self.tiers.items():
            if tier.model_group in self.model_groups and self.group_task(tier.model_group) == "embed":
                raise ValueError(f"tiers.{name}.model_group: {tier.model_group!r} is an embedding model group; "
                                 "tiers answer chat and completions (clients call embedding groups by name)")

    def _check_policies(self) -> None:
        if not self.policies.auth.enabled and self.gateway.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"policies.auth.enabled: API keys can be off only for a gateway on a loopback address "
                f"({', '.join(LOOPBACK_HOSTS)}); gateway.host is {self.gateway.host!r}"
            )
        for name, tenant in self.tenants.items():
            for model in tenant.models or ():
                if model not in self.model_groups and model not in self.routes:
                    raise ValueError(f"tenants.{name}.models: unknown model group or route {model!r}")

    def _check_routing(self) -> None:
        def unknown(path: str, kind: str, name: str, defined: dict[str, Any]) -> ValueError:
            return ValueError(f"{path}: unknown {kind} {name!r} (defined: {', '.join(sorted(defined)) or 'none'})")

        for name, tier in self.tiers.items():
            if tier.model_group is not None and tier.model_group not in self.model_groups:
                raise unknown(f"tiers.{name}.model_group", "model group", tier.model_group, self.model_groups)
            if tier.provider is not None and tier.provider not in self.providers:
                raise unknown(f"tiers.{name}.provider", "provider", tier.provider, self.providers)
        for name, route in self.routes.items():
            if name in self.model_groups:
                raise ValueError(f"routes.{name}: a model group has the same name; clients could not tell them apart")
            for i, step in enumerate(route.tiers):
                if step.tier not in self.tiers:
                    raise unknown(f"routes.{name}.tiers.{i}.tier", "tier", step.tier, self.tiers)
            judge = route.gates.judge
            if judge is not None and judge.tier not in self.tiers:
                raise unknown(f"routes.{name}.gates.judge.tier", "tier", judge.tier, self.tiers)
        for name, tenant in self.tenants.items():
            for model, route_name in tenant.routes.items():
                if route_name not in self.routes:
                    raise unknown(f"tenants.{name}.routes.{model}", "route", route_name, self.routes)
            if tenant.default_route is not None and tenant.default_route not in self.routes:
                raise unknown(f"tenants.{name}.default_route", "route", tenant.default_route, self.routes)

"""One validated model of the whole platform, loaded from YAML.

The same `PlatformConfig` feeds the Ray Serve application (`serving.app`), the CLI and, later, the Helm values.
A bad file fails at load with the field's path (`engines.smollm2.gpu.count: Input should be greater than 0`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from serving.policy_config import PoliciesConfig
from serving.rollout_config import RolloutConfig
from serving.routing_config import ProviderConfig, RouteConfig, TenantConfig, TierConfig

_PATH_PREFIX = re.compile(r"^[a-z_]+(\.\S+)+: ")
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
"""Engine and model-group names: lower-case DNS-like labels (they become Ray Serve and Kubernetes names)."""

Quantization = Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "fp8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GPUSpec(_Strict):
    """GPU placement of one engine replica (CUDA vLLM)."""

    count: int = Field(1, ge=1, le=64, description="GPUs per replica; becomes vLLM tensor_parallel_size.")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type, e.g. H100, A100-80G, L4, A10G (schedules on matching nodes)."
    )
    memory_utilization: float = Field(0.90, gt=0.0, le=1.0, description="vLLM gpu_memory_utilization.")


class ReplicaSpec(_Strict):
    """Replica count of an engine deployment; min == max means a fixed count."""

    min: int = Field(1, ge=0)
    max: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(16, ge=1, description="Autoscaling target per replica.")

    @model_validator(mode="after")
    def _min_le_max(self) -> ReplicaSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


class EngineConfig(_Strict):
    """One vLLM engine deployment (a Ray Serve LLM `LLMServer`) serving one model version."""

    model: str = Field(
        description=(
            "Model source: builtin:smollm2-135m-instruct, builtin:tiny-llama[?seed=N], catalog:<name>, "
            "hf:<org/repo>, or a local directory."
        )
    )
    revision: str | None = Field(None, description="Pinned Hugging Face revision (commit sha) for hf: sources.")
    device: Literal["cpu", "gpu"] = "gpu"
    quantization: Quantization | None = None
    dtype: str = Field("auto", description="vLLM dtype (auto, float16, bfloat16, float32).")
    max_model_len: int | None = Field(None, ge=16, description="Context length; default: the model's.")
    max_num_seqs: int | None = Field(None, ge=1, description="Max concurrent sequences per replica.")
    enable_prefix_caching: bool | None = Field(None, description="Default: on for GPU, off for CPU.")
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    replicas: ReplicaSpec = Field(default_factory=ReplicaSpec)
    kv_cache_gib: int = Field(1, ge=1, description="CPU only: VLLM_CPU_KVCACHE_SPACE in whole GiB (vLLM reads an int).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra vLLM engine arguments; they override the generated ones."
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment for the engine replicas.")

    @field_validator("model")
    @classmethod
    def _valid_source(cls, value: str) -> str:
        from models.loader import parse_model_source

        parse_model_source(value)  # raises ValueError with the reason
        return value

    @model_validator(mode="after")
    def _source_with_revision(self) -> EngineConfig:
        from models.loader import parse_model_source

        if self.revision is not None:
            parse_model_source(self.model, revision=self.revision)  # builtin/path take none; inline must agree
        return self

    @model_validator(mode="after")
    def _device_consistency(self) -> EngineConfig:
        if self.device == "cpu" and self.quantization in ("awq", "awq_marlin", "gptq_marlin", "fp8"):
            raise ValueError(f"quantization {self.quantization!r} needs a GPU engine (device: gpu)")
        return self


class GroupMember(_Strict):
    """An engine inside a model group, with its traffic weight."""

    engine: str
    weight: float = Field(1.0, ge=0.0)


class ShadowConfig(_Strict):
    """Mirror a share of a group's requests to an engine that is not in traffic; its answers are discarded."""

    engine: str
    percent: float = Field(100.0, gt=0, le=100, description="Share of the group's requests mirrored.")


class ModelGroupConfig(_Strict):
    """The model name clients send, mapped to one or more engine deployments (versions)."""

    engines: list[GroupMember] = Field(min_length=1)
    description: str = ""
    sticky: bool = Field(
        False,
        description=(
            "Pick the engine from a hash of the caller (the request's `user`, x-serving-user, or the API key), so "
            "a caller stays on one version while the weights move one way (the first engine's share grows)."
        ),
    )
    shadow: ShadowConfig | None = Field(None, description="Mirror traffic to an engine (blue-green warm-up).")

    @field_validator("engines", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"engine": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _some_weight(self) -> ModelGroupConfig:
        if sum(m.weight for m in self.engines) <= 0:
            raise ValueError("at least one engine must have a weight > 0")
        names = [m.engine for m in self.engines]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate engines in group: {names}")
        return self


class TracingConfig(_Strict):
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


class GatewayConfig(_Strict):
    """The OpenAI-compatible ingress deployment."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = "/"
    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(0.0, ge=0.0, description="Ray CPUs reserved per gateway replica (0 on small boxes).")
    max_ongoing_requests: int = Field(1024, ge=1)
    request_timeout_s: float = Field(600.0, gt=0, description="Deadline for one engine call.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Requests larger than this get a 413.")
    health_interval_s: float = Field(
        2.0, ge=0, description="Engine health probe period; 2 failed probes in a row -> 503 at once (0: off)."
    )
    health_timeout_s: float = Field(5.0, gt=0, description="A health probe slower than this has failed.")
    tenant_header: str = Field(
        "x-serving-tenant", description="Request header naming the tenant (selects the tenant's routes)."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535,
        description=(
            "Each replica also serves its own /metrics on this port (one scrape target per replica: /metrics on "
            "the Serve port reaches a random replica). The Helm chart sets it; at most one replica per node."
        ),
    )
    tracing: TracingConfig = Field(default_factory=TracingConfig)

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class RayConfig(_Strict):
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


class PlatformConfig(_Strict):
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
        self._check_routing()
        self._check_policies()
        for rollout_group in self.rollout.models:
            if rollout_group not in self.model_groups:
                raise ValueError(
                    f"rollout.models.{rollout_group}: unknown model group {rollout_group!r} "
                    f"(defined: {', '.join(sorted(self.model_groups))})"
                )
        return self

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


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds `path: message` lines."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid config\n" + "\n".join(f"  {e}" for e in errors))


def format_validation_error(exc: ValidationError) -> list[str]:
    """Render pydantic errors as `dotted.path: message` lines."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field checks on the root name their own path (`model_groups.g: unknown engine ...`).
        lines.append(f"{path}: {msg}" if path else msg if _PATH_PREFIX.match(msg) else f"(root): {msg}")
    return lines


def parse_config(data: Any, source: str = "<config>") -> PlatformConfig:
    """Validate a mapping into a `PlatformConfig`, raising `ConfigError` with field paths."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(root): expected a mapping, got {type(data).__name__}"])
    try:
        return PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config(path: str | Path) -> PlatformConfig:
    """Load and validate a YAML platform config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(data, str(path))


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"

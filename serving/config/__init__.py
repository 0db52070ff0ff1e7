"""The platform config: one validated `PlatformConfig` loaded from YAML, in modules by section.

`base` (the strict base model and names), `engines` (engines, model groups), `routing` (providers, tiers,
gates, routes), `tenants`, `policies`, `rollout`, `platform` (the whole, with cross-section checks) and
`loader` (files, field-path errors). Everything public is importable from `serving.config`.
"""

from __future__ import annotations

from serving.config.admission import (
    PRIORITIES,
    VLLM_DEFAULT_MAX_NUM_SEQS,
    AdmissionConfig,
    Priority,
)
from serving.config.base import (
    NAME_RE,
    StrictModel,
)
from serving.config.engines import (
    EngineConfig,
    GPUSpec,
    GroupMember,
    ModelGroupConfig,
    Quantization,
    ReplicaSpec,
    ShadowConfig,
)
from serving.config.loader import (
    DEFAULT_CONFIG,
    ConfigError,
    format_validation_error,
    load_config,
    parse_config,
)
from serving.config.platform import (
    LOOPBACK_HOSTS,
    GatewayConfig,
    PlatformConfig,
    RayConfig,
    TracingConfig,
)
from serving.config.policies import (
    PII_KINDS,
    AnomalyConfig,
    AuditConfig,
    AuthConfig,
    CacheConfig,
    LimitsConfig,
    PIIKind,
    PIIPolicy,
    PoliciesConfig,
    RedisConfig,
    SemanticCacheConfig,
)
from serving.config.rollout import (
    AnalysisConfig,
    EvalConfig,
    ManagedModelConfig,
    RolloutConfig,
    StrategyConfig,
)
from serving.config.routing import (
    DEFAULT_JUDGE_PROMPT,
    DEFAULT_REFUSAL_PATTERNS,
    GATE_KINDS,
    BreakerConfig,
    ConfidenceGateConfig,
    EmptyGateConfig,
    GateKind,
    GatesConfig,
    GPUHourPrice,
    JsonGateConfig,
    JudgeGateConfig,
    PriceConfig,
    ProviderConfig,
    RefusalGateConfig,
    RetryConfig,
    RouteConfig,
    RouteTier,
    RulesGateConfig,
    TierConfig,
)
from serving.config.tenants import (
    TenantConfig,
)

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_JUDGE_PROMPT",
    "DEFAULT_REFUSAL_PATTERNS",
    "GATE_KINDS",
    "LOOPBACK_HOSTS",
    "NAME_RE",
    "PII_KINDS",
    "PRIORITIES",
    "VLLM_DEFAULT_MAX_NUM_SEQS",
    "AdmissionConfig",
    "AnalysisConfig",
    "AnomalyConfig",
    "AuditConfig",
    "AuthConfig",
    "BreakerConfig",
    "CacheConfig",
    "ConfidenceGateConfig",
    "ConfigError",
    "EmptyGateConfig",
    "EngineConfig",
    "EvalConfig",
    "GPUHourPrice",
    "GPUSpec",
    "GateKind",
    "GatesConfig",
    "GatewayConfig",
    "GroupMember",
    "JsonGateConfig",
    "JudgeGateConfig",
    "LimitsConfig",
    "ManagedModelConfig",
    "ModelGroupConfig",
    "PIIKind",
    "PIIPolicy",
    "PlatformConfig",
    "PoliciesConfig",
    "PriceConfig",
    "Priority",
    "ProviderConfig",
    "Quantization",
    "RayConfig",
    "RedisConfig",
    "RefusalGateConfig",
    "ReplicaSpec",
    "RetryConfig",
    "RolloutConfig",
    "RouteConfig",
    "RouteTier",
    "RulesGateConfig",
    "SemanticCacheConfig",
    "ShadowConfig",
    "StrategyConfig",
    "StrictModel",
    "TenantConfig",
    "TierConfig",
    "TracingConfig",
    "format_validation_error",
    "load_config",
    "parse_config",
]

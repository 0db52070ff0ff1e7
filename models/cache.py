"""Where the serving platform keeps the model directories it builds."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SERVING_CACHE_DIR"
BAKED_ENV_VAR = "SERVING_BAKED_CACHE_DIR"


def cache_dir() -> Path:
    """The serving cache root: ``$SERVING_CACHE_DIR`` if set, else ``~/.cache/serving``."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value:
        return Path(value).expanduser()
    return Path.home() / ".cache" / "serving"


def models_dir(cache: Path | None = None) -> Path:
    """The directory that holds built model directories: ``<cache>/models``."""
    return (Path(cache) if cache is not None else cache_dir()) / "models"


def baked_models_dir() -> Path | None:
    """Read-only built models shipped in an image: ``$SERVING_BAKED_CACHE_DIR/models`` (None when unset)."""
    value = os.environ.get(BAKED_ENV_VAR, "").strip()
    return Path(value).expanduser() / "models" if value else None

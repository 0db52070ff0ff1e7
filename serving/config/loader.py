"""Load and validate a platform config: a bad file fails with each field's path
(`engines.smollm2.gpu.count: Input should be greater than 0`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from serving.config.platform import PlatformConfig

_PATH_PREFIX = re.compile(r"^[a-z_]+(\.\S+)+: ")


class ConfigError(Exception):
    """A config file that cannot be used; `errors` holds `path: message` lines."""

    def __init__(self, source: str, errors: list[str]):
        self.source = source
        self.errors = errors
        super().__init__(f"{source}: invalid config\n" + "\n".join(f"  {e}" for e in errors))


def format_validation_error(exc: ValidationError) -> list[str]:
    """Render pydantic errors as `dotted.path: message` lines."""
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        # Cross-field checks on the root name their own path (`model_groups.g: unknown engine ...`).
        lines.append(f"{path}: {msg}" if path else msg if _PATH_PREFIX.match(msg) else f"(root): {msg}")
    return lines


def parse_config(data: Any, source: str = "<config>") -> PlatformConfig:
    """Validate a mapping into a `PlatformConfig`, raising `ConfigError` with field paths."""
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(root): expected a mapping, got {type(data).__name__}"])
    try:
        return PlatformConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, format_validation_error(exc)) from None


def load_config(path: str | Path) -> PlatformConfig:
    """Load and validate a YAML platform config file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    return parse_config(data, str(path))


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "local.yaml"

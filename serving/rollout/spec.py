"""The serving spec a registered model version carries, and the registry conventions around it.

Conventions (docs/rollouts.md):
- one MLflow registered model per model family, followed by one model group (`rollout.models`);
- a model version's tag `serving.spec` holds its `VersionSpec` as JSON: the engine to run it (model source =
  Hugging Face repo id + pinned revision, a catalog entry, a builtin model or a path/URI; quantization; vLLM
  kwargs; GPUs) and optionally its own eval set; a few plain tags (`serving.model`, `serving.quantization`,
  `serving.gpus`) make it readable in the MLflow UI;
- aliases: `champion` = the version that serves; `challenger` = the version to roll out;
- rollout state lives in `serving.rollout.*` tags on the challenger version (and a run per rollout).
The weights are referenced, never copied, unless a caller uploads them as artifacts itself.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.config import NAME_RE, EngineConfig, format_validation_error

SPEC_TAG = "serving.spec"
CHAMPION = "champion"
CHALLENGER = "challenger"
MAX_TAG_CHARS = 5000  # MLflow's limit on a model version tag value


class SpecError(ValueError):
    """A version's serving spec is missing or invalid; `errors` holds `path: message` lines."""

    def __init__(self, where: str, errors: list[str]):
        super().__init__(f"{where}: invalid serving spec\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


class VersionSpec(BaseModel):
    """What the platform needs to serve one model version."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineConfig = Field(description="The vLLM engine for this version (model source, device, GPUs, ...).")
    eval_tasks: str | None = Field(None, description="Eval set for this version (overrides the group's).")

    def to_tag(self) -> str:
        text = json.dumps(self.model_dump(mode="json", exclude_none=True, exclude_defaults=True), sort_keys=True)
        if len(text) > MAX_TAG_CHARS:
            raise SpecError(SPEC_TAG, [f"spec is {len(text)} characters; MLflow tags hold {MAX_TAG_CHARS}"])
        return text

    def display_tags(self) -> dict[str, str]:
        """Plain tags for people reading the MLflow UI (the spec tag is the source of truth)."""
        e = self.engine
        tags = {"serving.model": e.model, "serving.device": e.device}
        if e.revision:
            tags["serving.revision"] = e.revision
        if e.quantization:
            tags["serving.quantization"] = e.quantization
        if e.device == "gpu":
            tags["serving.gpus"] = str(e.gpu.count)
        return tags


def parse_spec(data: Any, where: str = SPEC_TAG) -> VersionSpec:
    """A `VersionSpec` from the tag's JSON text or a dict; SpecError with field paths otherwise."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise SpecError(where, [f"not JSON: {exc}"]) from None
    try:
        return VersionSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(where, format_validation_error(exc)) from None


def engine_name(group: str, version: int | str) -> str:
    """The engine (and Serve app suffix) serving version N of a group: `<group>-v<N>`."""
    name = f"{group}-v{version}"
    if not NAME_RE.match(name):
        raise ValueError(f"engine name {name!r} for {group} version {version} is not a valid name")
    return name


_VERSION_RE = re.compile(r"^(?P<group>.+)-v(?P<version>\d+)$")


def parse_engine_name(name: str) -> tuple[str, int] | None:
    """(group, version) of a registry engine name, None for an engine of the base config."""
    m = _VERSION_RE.match(name)
    return (m["group"], int(m["version"])) if m else None

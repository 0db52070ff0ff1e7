"""The MLflow model registry as the rollout controller and the CLI see it (over `mlflow.MlflowClient`).

A sqlite registry (`sqlite:///path/mlflow.db`) needs the full `mlflow` package; a remote `mlflow server`
(http://...) works with `mlflow-skinny`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from serving.rollout.spec import SPEC_TAG, SpecError, VersionSpec, parse_spec

ROLLOUT_TAG_PREFIX = "serving.rollout."


class RegistryError(RuntimeError):
    """The registry cannot be reached or refused an operation; the message says which and why."""


@dataclass(frozen=True)
class VersionInfo:
    """One model version: its number, serving spec (or why it has none), aliases and tags."""

    model: str
    version: int
    source: str
    spec: VersionSpec | None
    spec_error: str | None
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    created_ms: int = 0

    @property
    def rollout_tags(self) -> dict[str, str]:
        return {k[len(ROLLOUT_TAG_PREFIX):]: v for k, v in self.tags.items() if k.startswith(ROLLOUT_TAG_PREFIX)}


def model_source_uri(spec: VersionSpec) -> str:
    """The version's `source` in MLflow: where the weights are (referenced, not copied). Always `scheme:///path`
    or a remote URI: an MLflow server refuses relative paths, and local `file://` sources without a run."""
    engine = spec.engine
    model = engine.model
    if model.startswith("hf:"):
        return f"hf://{model[3:]}" + (f"@{engine.revision}" if engine.revision else "")
    if "://" in model:
        return model
    for scheme in ("builtin", "catalog"):
        if model.startswith(f"{scheme}:"):
            return f"{scheme}:///{model[len(scheme) + 1:]}"
    return f"modeldir://{os.path.abspath(model)}"


class Registry:
    """Registered models, versions with serving specs, aliases and rollout tags."""

    def __init__(self, uri: str | None = None):
        from mlflow import MlflowClient

        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not self.uri:
            raise RegistryError("no MLflow registry: set rollout.registry_uri, --registry or MLFLOW_TRACKING_URI")
        try:
            self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        except Exception as exc:  # mlflow raises many kinds here (missing sqlalchemy, bad URI, ...)
            raise RegistryError(f"cannot open the MLflow registry {self.uri}: {exc}") from exc

    # ---- models and versions ---------------------------------------------------------------------------------
    def ensure_model(self, name: str, description: str = "") -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name, description=description or None)

    def register(self, name: str, spec: VersionSpec, *, description: str = "", source: str | None = None,
                 tags: dict[str, str] | None = None) -> VersionInfo:
        """A new version of `name` (created if needed) carrying `spec`; the weights are referenced by `source`."""
        self.ensure_model(name)
        all_tags = {SPEC_TAG: spec.to_tag(), **spec.display_tags(), **(tags or {})}
        mv = self.client.create_model_version(
            name, source or model_source_uri(spec), tags=all_tags, description=description or None
        )
        return self.version(name, int(mv.version))

    def version(self, name: str, version: int) -> VersionInfo:
        mv = self.client.get_model_version(name, str(version))
        return self._info(mv, self._aliases_by_version(name))

    def versions(self, name: str) -> list[VersionInfo]:
        """All versions of `name`, oldest first (empty if the model is not registered)."""
        from mlflow.exceptions import MlflowException

        try:
            by_version = self._aliases_by_version(name)
        except MlflowException:
            return []
        found = self.client.search_model_versions(f"name = '{name}'")
        return sorted((self._info(mv, by_version) for mv in found), key=lambda v: v.version)

    def models(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models())

    # ---- aliases ---------------------------------------------------------------------------------------------
    def aliases(self, name: str) -> dict[str, int]:
        """alias -> version number (`search_model_versions` does not fill aliases; the registered model does)."""
        return {a: int(v) for a, v in (self.client.get_registered_model(name).aliases or {}).items()}

    def by_alias(self, name: str, alias: str) -> VersionInfo | None:
        version = self.aliases(name).get(alias) if self._exists(name) else None
        return None if version is None else self.version(name, version)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def delete_alias(self, name: str, alias: str) -> None:
        from mlflow.exceptions import MlflowException

        with contextlib.suppress(MlflowException):  # already gone
            self.client.delete_registered_model_alias(name, alias)

    # ---- tags ------------------------------------------------------------------------------------------------
    def set_tags(self, name: str, version: int, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def set_rollout_tags(self, name: str, version: int, tags: dict[str, Any]) -> None:
        self.set_tags(name, version, {ROLLOUT_TAG_PREFIX + k: v for k, v in tags.items()})

    # ---- helpers ---------------------------------------------------------------------------------------------
    def _exists(self, name: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
            return True
        except MlflowException:
            return False

    def _aliases_by_version(self, name: str) -> dict[int, tuple[str, ...]]:
        out: dict[int, list[str]] = {}
        for alias, version in self.aliases(name).items():
            out.setdefault(version, []).append(alias)
        return {v: tuple(sorted(a)) for v, a in out.items()}

    @staticmethod
    def _info(mv: Any, aliases: dict[int, tuple[str, ...]]) -> VersionInfo:
        tags = dict(mv.tags or {})
        spec, error = None, None
        if SPEC_TAG not in tags:
            error = f"no {SPEC_TAG} tag (register versions with `serving models register`)"
        else:
            try:
                spec = parse_spec(tags[SPEC_TAG], f"{mv.name} version {mv.version}")
            except SpecError as exc:
                error = str(exc)
        return VersionInfo(
            model=mv.name, version=int(mv.version), source=mv.source or "", spec=spec, spec_error=error,
            aliases=aliases.get(int(mv.version), ()), tags=tags, description=mv.description or "",
            created_ms=int(mv.creation_timestamp or 0),
        )

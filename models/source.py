"""Model source strings, parsed (no I/O): ``builtin:``, ``hf:`` / ``<org>/<name>``, local directories.

The forms are listed in :mod:`models.loader`, which also resolves ``catalog:<name>`` (through
:mod:`models.catalog`, which validates its entries' sources with this module) and turns a source into a directory.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict

BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-llama", "all-minilm-l6-v2")
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_FORMS = (
    "builtin:smollm2-135m-instruct, builtin:tiny-llama[?seed=N], builtin:all-minilm-l6-v2, catalog:<name>, "
    "hf:<org>/<name>[@<revision>], <org>/<name>[@<revision>], /abs/model/dir or file:///abs/model/dir"
)


class ModelSourceError(ValueError):
    """A model source that cannot be parsed or resolved; the message says what to do about it."""


class ModelSource(BaseModel):
    """A parsed model source (no I/O done)."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["builtin", "path", "hf"]
    name: str | None = None  # builtin model name
    repo_id: str | None = None  # hf
    revision: str | None = None  # hf: branch, tag or commit; None means the default branch
    path: str | None = None  # path: absolute directory
    seed: int | None = None  # builtin tiny-llama
    catalog_name: str | None = None  # set when it came from catalog:<name>

    @property
    def is_pinned(self) -> bool:
        """True for a builtin or local directory, or an hf source pinned to a full commit sha."""
        return self.kind != "hf" or bool(self.revision and re.fullmatch(r"[0-9a-f]{40}", self.revision))

    def __str__(self) -> str:
        if self.kind == "builtin":
            return f"builtin:{self.name}" + (f"?seed={self.seed}" if self.seed else "")
        if self.kind == "path":
            return str(self.path)
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


# (catalog name, revision override) -> the entry's parsed source
CatalogResolver = Callable[[str, str | None], ModelSource]


def _check_revision(revision: str, source: str) -> str:
    if not _REVISION_RE.match(revision) or ".." in revision:
        raise ModelSourceError(f"invalid revision {revision!r} in model source {source!r}")
    return revision


def _parse_builtin(spec: str, source: str, revision: str | None) -> ModelSource:
    name, _, query = spec.partition("?")
    if name not in BUILTIN_MODELS:
        raise ModelSourceError(
            f"unknown builtin model {name!r} in {source!r}; known: {', '.join(BUILTIN_MODELS)}"
        )
    if revision is not None:
        raise ModelSourceError(f"builtin models are built locally and take no revision ({source!r})")
    params = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    if name != "tiny-llama" and params:
        raise ModelSourceError(f"{name} takes no parameters ({source!r})")
    unknown = set(params) - {"seed"}
    if unknown:
        names = ", ".join(sorted(unknown))
        raise ModelSourceError(f"unknown parameter(s) {names} in {source!r}; only seed=N is accepted")
    seed: int | None = None
    if name == "tiny-llama":
        raw = params.get("seed", "0")
        if not raw.isdigit():
            raise ModelSourceError(f"seed must be a non-negative integer in {source!r}, got {raw!r}")
        seed = int(raw)
    return ModelSource(kind="builtin", name=name, seed=seed)


def _parse_hf(spec: str, source: str, revision: str | None) -> ModelSource:
    repo_id, at, inline = spec.partition("@")
    if not _REPO_RE.match(repo_id) or "--" in repo_id or ".." in repo_id or repo_id.endswith((".", "-")):
        raise ModelSourceError(f"invalid Hugging Face repo id {repo_id!r} in model source {source!r}")
    if at:
        _check_revision(inline, source)
        if revision is not None and revision != inline:
            raise ModelSourceError(f"{source!r} pins revision {inline!r} but revision={revision!r} was given")
        revision = inline
    elif revision is not None:
        _check_revision(revision, source)
    return ModelSource(kind="hf", repo_id=repo_id, revision=revision)


def parse_source(
    source: str, *, revision: str | None = None, catalog: CatalogResolver | None = None
) -> ModelSource:
    """Parse ``source`` (see the module docstring) without touching the network or building anything.

    ``revision`` pins an hf source (it must agree with an inline ``@revision``). A ``catalog:<name>`` source is
    handed to ``catalog`` (name, revision); without one it is refused. Raises :class:`ModelSourceError` for
    anything malformed or unknown.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"empty model source; expected one of: {_FORMS}")
    text = source.strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme == "builtin":
        return _parse_builtin(rest, text, revision)
    if colon and scheme == "catalog":
        if catalog is None:
            raise ModelSourceError(f"a catalog: source is not accepted here ({text!r})")
        return catalog(rest, revision)
    if colon and scheme == "hf":
        return _parse_hf(rest, text, revision)
    if colon and scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ModelSourceError(f"a file:// source must be an absolute path (file:///dir), got {text!r}")
        return _path_source(unquote(parts.path), text, revision)
    if text.startswith(("/", "./", "../", "~")) or text in (".", ".."):
        return _path_source(text, text, revision)
    if _REPO_RE.match(text.partition("@")[0]):
        return _parse_hf(text, text, revision)
    raise ModelSourceError(f"unrecognised model source {text!r}; expected one of: {_FORMS}")


def _path_source(path: str, source: str, revision: str | None) -> ModelSource:
    if revision is not None:
        raise ModelSourceError(f"a local directory takes no revision ({source!r})")
    return ModelSource(kind="path", path=os.path.abspath(os.path.expanduser(path)))

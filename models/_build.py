"""Idempotent, checksummed, lock-protected builds of model directories (shared by the built-in models).

A built directory holds a ``serving-build.json`` manifest: the build key (builder name, builder version and
whatever identifies the inputs) plus the sha256 of every file written. A build is reused only when the key
matches and every file still hashes to its recorded value; otherwise it is rebuilt into a temporary directory
next to the target and swapped in with renames, under an ``fcntl`` lock so concurrent builders do not collide.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MANIFEST_NAME = "serving-build.json"
Progress = Callable[[str], None]


def sha256_file(path: Path, *, chunk_size: int = 4 << 20) -> str:
    """Hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a built directory, or None when it is missing or unreadable."""
    try:
        data = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def verify(directory: Path, key: Mapping[str, Any]) -> bool:
    """True when ``directory`` was built with ``key`` and every recorded file still matches its checksum."""
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("key") != dict(key):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, expected in files.items():
        path = directory / rel
        if not path.is_file() or sha256_file(path) != expected:
            return False
    return True


@contextlib.contextmanager
def _locked(lock_path: Path, name: str, progress: Progress) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (created if needed), saying so when we have to wait."""
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"[models] waiting for another build of {name} to finish (lock {lock_path}) ...")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _make_readable(directory: Path) -> None:
    """Give the built tree ordinary permissions (mkdtemp makes 0700, safetensors writes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o755 & ~umask)
    for path in directory.rglob("*"):
        path.chmod((0o755 if path.is_dir() else 0o644) & ~umask)


def _swap_in(tmp: Path, target: Path) -> None:
    """Move the finished ``tmp`` directory to ``target``, replacing an old build (same-filesystem renames)."""
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, target)


def ensure_built(
    target: Path,
    *,
    name: str,
    key: Mapping[str, Any],
    build: Callable[[Path], None],
    progress: Progress,
    what: str,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Return ``target``, building it with ``build(tmp_dir)`` unless a verified build with ``key`` is there.

    ``what`` completes the progress line ``[models] building <name> <what> ...``; ``info`` is extra,
    non-key data recorded in the manifest.
    """
    target = Path(target).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock", name, progress):
        if verify(target, key):
            progress(f"[models] {name} is cached at {target} (checksums verified)")
            return target
        for stale in target.parent.glob(f".{target.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a crashed build; we hold the lock
        progress(f"[models] building {name} {what} ...")
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            build(tmp)
            files = {
                path.relative_to(tmp).as_posix(): sha256_file(path)
                for path in sorted(tmp.rglob("*"))
                if path.is_file() and path.name != MANIFEST_NAME
            }
            manifest = {
                "key": dict(key),
                **({"info": dict(info)} if info else {}),
                "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "build_seconds": round(time.monotonic() - started, 1),
                "files": files,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
            _make_readable(tmp)
            _swap_in(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        progress(f"[models] {name} ready at {target} ({time.monotonic() - started:.0f} s)")
        return target


def patch_tokenizer_config(directory: Path, *, chat_template: str, model_max_length: int) -> None:
    """Make ``tokenizer_config.json`` self-contained and portable across transformers versions.

    The chat template goes into the config itself (a separate ``chat_template.jinja`` is removed), the class
    is the long-standing ``PreTrainedTokenizerFast`` and load-time-only keys are dropped.
    """
    path = directory / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for transient in ("is_local", "local_files_only"):
        config.pop(transient, None)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["model_max_length"] = model_max_length
    config["chat_template"] = chat_template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (directory / "chat_template.jinja").unlink(missing_ok=True)

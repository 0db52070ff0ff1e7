"""Helpers the `serving` subcommands share: output, the platform config, the Ray connection, the registry."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from serving.config import DEFAULT_CONFIG, ConfigError, PlatformConfig, load_config

if TYPE_CHECKING:
    from serving.rollout.registry import Registry


def say(msg: str) -> None:
    """A progress line of the CLI (`[serving] ...`)."""
    print(f"[serving] {msg}", flush=True)


def load(path: str | None) -> PlatformConfig:
    """The platform config at `path` (default: DEFAULT_CONFIG); exit 2 with the errors if it is invalid."""
    try:
        return load_config(path or DEFAULT_CONFIG)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(2) from None


def ray_bin() -> str:
    """The `ray` executable next to this Python, else the one on PATH."""
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def ray_env(cfg: PlatformConfig | None = None) -> dict[str, str]:
    """The environment for `ray` commands: this one, usage stats off, plus the config's cluster variables."""
    env = dict(os.environ)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if cfg is not None:
        env.update(cfg.cluster_env())
    return env


def connect(cfg: PlatformConfig | None = None) -> bool:
    """Connect this process to the config's Ray cluster (default: the local one); False if none answers."""
    import ray

    if ray.is_initialized():
        return True
    address = (cfg.ray.address if cfg else None) or "auto"
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        return True
    except ConnectionError:
        return False


def base_url(cfg: PlatformConfig) -> str:
    """The gateway's base URL as reached from this machine."""
    host = "127.0.0.1" if cfg.gateway.host in ("0.0.0.0", "::") else cfg.gateway.host
    return f"http://{host}:{cfg.gateway.port}{cfg.gateway.route_prefix.rstrip('/')}"


def registry(args: argparse.Namespace) -> Registry:
    """The MLflow registry of `--registry`, else of `--config`'s rollout.registry_uri, else $MLFLOW_TRACKING_URI."""
    from serving.rollout.registry import Registry, RegistryError

    uri = args.registry
    if uri is None and getattr(args, "config", None):
        uri = load(args.config).rollout.registry_uri
    try:
        return Registry(uri)
    except RegistryError as exc:
        raise SystemExit(f"error: {exc}") from None

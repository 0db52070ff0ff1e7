"""The gateway app standalone (no Ray), for uvicorn's ``--factory``: what ``benchmarks/policy.py`` measures.

The config is a `serving.config.PlatformConfig` mapping in a JSON or YAML file named by ``$BENCH_GATEWAY_CONFIG``.
``$BENCH_GATEWAY_BUILDER`` (``module:function``, default `build_gateway` here) names the function that turns it
into the ASGI app, so a benchmark variant can bring its own builder (e.g. with the policy layer on):

    BENCH_GATEWAY_CONFIG=/tmp/gw.json uvicorn --factory benchmarks.gateway_standalone:create_app --port 8300

The model groups of the config are not deployed (there is no Ray here): only routes to cloud tiers work.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

CONFIG_ENV = "BENCH_GATEWAY_CONFIG"
BUILDER_ENV = "BENCH_GATEWAY_BUILDER"
DEFAULT_BUILDER = "benchmarks.gateway_standalone:build_gateway"


def build_gateway(config: dict[str, Any]) -> Any:
    """The gateway as a replica builds it (serving.api.ingress): `build_api` with an empty group router, the
    config's providers, tiers, routes, tenants and policies applied, the start-up heap frozen."""
    from serving.api.server import build_api, freeze_heap
    from serving.config import parse_config
    from serving.routing.groups import GroupRouter

    cfg = parse_config(config)
    app = build_api(GroupRouter({}, {}), cfg.gateway)
    app.state.gateway.update_routing(cfg.providers, cfg.tiers, cfg.routes, cfg.tenants)
    app.state.gateway.update_policies(cfg.policies)
    freeze_heap()
    return app


BENCH_CLIENT_KEY = "sk-bench-client"
"""The API key the benchmark's clients send to gateway targets."""


def build_gateway_with_key(config: dict[str, Any]) -> Any:
    """`build_gateway`, plus the benchmark client's API key registered in the policy store (what
    `serving keys create` does through the admin API), for the tenant `bench`."""
    import time

    import redis

    from serving.policy.keys import KeyRecord, key_digest

    app = build_gateway(config)
    store = app.state.gateway.policy.store
    record = KeyRecord(id="key_bench", tenant="bench", name="benchmark client", created=time.time(),
                       hint=BENCH_CLIENT_KEY[:15])
    client = redis.Redis.from_url(config["policies"]["redis"]["url"], decode_responses=True)
    client.hset(store.key("key", key_digest(BENCH_CLIENT_KEY)), mapping=record.to_redis())
    client.hset(store.key("keyids"), record.id, key_digest(BENCH_CLIENT_KEY))
    client.close()
    return app


def load_builder(spec: str) -> Callable[[dict[str, Any]], Any]:
    """``module:function`` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"builder {spec!r}: expected module:function")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj  # type: ignore[no-any-return]


def read_config(path: str | Path) -> dict[str, Any]:
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping")
    return data


def create_app() -> Any:
    """uvicorn ``--factory`` entry point: the app from ``$BENCH_GATEWAY_CONFIG`` and ``$BENCH_GATEWAY_BUILDER``."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to a JSON or YAML PlatformConfig file")
    return load_builder(os.environ.get(BUILDER_ENV) or DEFAULT_BUILDER)(read_config(path))

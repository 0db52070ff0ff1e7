"""The platform in Serve's declarative config format: one gateway app + one app per engine.

Every engine is its own Serve application (`<app>-engine-<name>`, no HTTP route) and the gateway app reaches it
by name through a DeploymentHandle. Serve derives an application's code version from its import path and args,
so adding, removing or re-weighting one engine (a rollout step) never restarts another engine or the gateway:
the engine set and the traffic weights reach the gateway as its `user_config` (`reconfigure`, no restart).

`serve_config()` renders the whole thing (what `serve deploy`, the Serve REST API and KubeRay's `serveConfigV2`
take); `serving up` deploys exactly that. Pure functions of a `PlatformConfig`: no Ray, no gateway imports. The
builders named by the import paths are in `serving.app`.
"""

from __future__ import annotations

from typing import Any

from serving.config import VLLM_DEFAULT_MAX_NUM_SEQS, EngineConfig, GatewayConfig, PlatformConfig

GATEWAY_DEPLOYMENT = "gateway"
GATEWAY_IMPORT_PATH = "serving.app:gateway_builder"
ENGINE_IMPORT_PATH = "serving.app:engine_builder"


def engine_app_name(app_name: str, engine: str) -> str:
    """The Serve application that holds one engine: `<app>-engine-<engine>`."""
    return f"{app_name}-engine-{engine}"


def engine_capacity(engine: EngineConfig) -> int:
    """Sequences an engine serves at once across its replicas: `max_num_seqs` (vLLM's default when unset) times
    the most replicas it may have (admission bounds are sized for it, so an autoscaled engine sees the queue it
    scales on)."""
    seqs = engine.engine_kwargs.get("max_num_seqs") or engine.max_num_seqs or VLLM_DEFAULT_MAX_NUM_SEQS[engine.device]
    return int(seqs) * engine.replicas.max


def engine_context(engine: EngineConfig) -> int | None:
    """The engine's context length in tokens when the config says it (`max_model_len`, or the catalog's)."""
    explicit = engine.engine_kwargs.get("max_model_len") or engine.max_model_len
    if explicit:
        return int(explicit)
    if engine.model.startswith("catalog:"):
        from models.catalog import get_model

        try:
            return get_model(engine.model.removeprefix("catalog:")).max_context
        except (KeyError, ValueError):
            return None
    return None


def gateway_user_config(config: PlatformConfig) -> dict[str, Any]:
    """The gateway's reconfigurable state: the engines it may call (engine -> Serve app) and their capacity,
    model groups (traffic weights), providers, tiers, routes, tenants and policies."""

    def dump(table: dict[str, Any]) -> dict[str, Any]:
        return {name: item.model_dump(mode="json", by_alias=True, exclude_none=True) for name, item in table.items()}

    return {
        "engines": {name: engine_app_name(config.ray.app_name, name) for name in config.engines},
        "capacity": {name: engine_capacity(engine) for name, engine in config.engines.items()},
        "context": {name: n for name, engine in config.engines.items() if (n := engine_context(engine))},
        "model_groups": dump(config.model_groups),
        "embedding_groups": config.embedding_groups(),
        "providers": dump(config.providers),
        "tiers": dump(config.tiers),
        "routes": dump(config.routes),
        "tenants": dump(config.tenants),
        "policies": config.policies.model_dump(mode="json", exclude_none=True),
    }


def engine_deployment_options(engine: EngineConfig) -> dict[str, Any]:
    """Serve options of an engine's deployment: a fixed `num_replicas`, or `autoscaling_config` (min != max)."""
    return engine.replicas.serve_options()


def gateway_deployment_options(gw: GatewayConfig) -> dict[str, Any]:
    """Serve options of the gateway deployment: replicas (fixed or autoscaled), the concurrency bound, and the
    drain on stop (no new requests, those in flight finish for up to `drain_timeout_s`)."""
    scaling: dict[str, Any] = {"num_replicas": gw.replicas}
    if gw.autoscaling is not None:
        a = gw.autoscaling
        scaling = {"autoscaling_config": {
            "min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
            "initial_replicas": min(max(gw.replicas, a.min_replicas), a.max_replicas),
            "target_ongoing_requests": a.target_ongoing_requests}}
    return {**scaling, "max_ongoing_requests": gw.max_ongoing_requests,
            "graceful_shutdown_timeout_s": gw.drain_timeout_s, "graceful_shutdown_wait_loop_s": 1.0}


def serve_config(
    config: PlatformConfig,
    *,
    base: dict[str, Any] | None = None,
    http_host: str | None = None,
    proxy_location: str = "EveryNode",
) -> dict[str, Any]:
    """The platform in Serve's declarative multi-application format (ServeDeploySchema as a dict).

    `base`: the platform config to keep in the gateway app's `args.config` (default: `config` itself). A rollout
    passes the config as first deployed, so the gateway app's code version stays put, and carries the engines and
    weights it changes in the gateway's `user_config` override (a lightweight update).
    """
    from serving.engines.ray_llm import deployment_name

    gw = config.gateway
    app = config.ray.app_name
    gateway_app: dict[str, Any] = {
        "name": app,
        "route_prefix": gw.route_prefix,
        "import_path": GATEWAY_IMPORT_PATH,
        "args": {"config": base if base is not None else config.model_dump(mode="json", by_alias=True,
                                                                             exclude_none=True)},
        "deployments": [{
            "name": GATEWAY_DEPLOYMENT,
            **gateway_deployment_options(gw),
            "user_config": gateway_user_config(config),
        }],
    }
    engine_apps = [
        {
            "name": engine_app_name(app, name),
            "route_prefix": None,
            "import_path": ENGINE_IMPORT_PATH,
            "args": {"name": name, "engine": engine.model_dump(mode="json", exclude_none=True)},
            "deployments": [{"name": deployment_name(name), **engine_deployment_options(engine)}],
        }
        for name, engine in config.engines.items()
    ]
    return {
        "proxy_location": proxy_location,
        "http_options": {"host": http_host or gw.host, "port": gw.port},
        "applications": [gateway_app, *engine_apps],
    }

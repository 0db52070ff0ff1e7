"""Builds the Ray Serve application (gateway + engine deployments) from a `PlatformConfig`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.config import PlatformConfig, load_config, parse_config

if TYPE_CHECKING:
    from ray.serve.deployment import Application

GATEWAY_DEPLOYMENT = "gateway"


def gateway_user_config(config: PlatformConfig) -> dict[str, Any]:
    """The gateway's reconfigurable state: model groups (traffic weights), providers, tiers, routes, tenants."""

    def dump(table: dict[str, Any]) -> dict[str, Any]:
        return {name: item.model_dump(mode="json", by_alias=True, exclude_none=True) for name, item in table.items()}

    return {
        "model_groups": dump(config.model_groups),
        "providers": dump(config.providers),
        "tiers": dump(config.tiers),
        "routes": dump(config.routes),
        "tenants": dump(config.tenants),
    }


def build_app(config: PlatformConfig) -> Application:
    """The Serve application: one `LLMServer` deployment per engine behind the gateway ingress."""
    from ray import serve

    from serving.api.ingress import GatewayDeployment
    from serving.engines.ray_llm import build_engine_deployment

    engines = {name: build_engine_deployment(name, engine) for name, engine in config.engines.items()}
    gw = config.gateway
    gateway = serve.deployment(
        GatewayDeployment,
        name=GATEWAY_DEPLOYMENT,
        num_replicas=gw.replicas,
        max_ongoing_requests=gw.max_ongoing_requests,
        ray_actor_options={"num_cpus": gw.num_cpus},
        user_config=gateway_user_config(config),
    )
    return gateway.bind(gw.model_dump(mode="json"), engines)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for Serve config files / KubeRay serveConfigV2 (`import_path: serving.app:app_builder`).

    `args` holds either `config_path` (a YAML file on the nodes) or `config` (the platform config inline).
    """
    if "config" in args:
        return build_app(parse_config(args["config"], "args.config"))
    if "config_path" in args:
        return build_app(load_config(args["config_path"]))
    raise ValueError("serving.app:app_builder needs args.config_path or args.config")

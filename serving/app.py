"""The gateway's composition root: builds the Ray Serve applications (one gateway app + one app per engine).

`gateway_builder` and `engine_builder` are the Serve entry points the Serve config names
(`serving.app:gateway_builder`, `serving.app:engine_builder`); the config itself, with the app names and the
gateway's `user_config`, is rendered by `serving.deploy.serve_config`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from serving.config import EngineConfig, PlatformConfig, load_config, parse_config
from serving.deploy.serve_config import GATEWAY_DEPLOYMENT, gateway_deployment_options, gateway_user_config

if TYPE_CHECKING:
    from ray.serve.deployment import Application


def build_gateway_app(config: PlatformConfig) -> Application:
    """The gateway ingress deployment alone; engines are other applications, named in its user_config."""
    from ray import serve

    from serving.api.ingress import GatewayDeployment

    gw = config.gateway
    gateway = serve.deployment(
        GatewayDeployment,
        name=GATEWAY_DEPLOYMENT,
        **gateway_deployment_options(gw),
        ray_actor_options={"num_cpus": gw.num_cpus},
        user_config=gateway_user_config(config),
    )
    return gateway.bind(gw.model_dump(mode="json"))  # type: ignore[attr-defined]


def build_engine_app(name: str, engine: EngineConfig) -> Application:
    """One engine: a Ray Serve LLM `LLMServer` deployment named `engine-<name>`."""
    from serving.engines.ray_llm import build_engine_deployment

    return build_engine_deployment(name, engine)


def _platform(args: dict[str, Any]) -> PlatformConfig:
    if "config" in args:
        return parse_config(args["config"], "args.config")
    if "config_path" in args:
        return load_config(args["config_path"])
    raise ValueError("serving.app:gateway_builder needs args.config_path or args.config")


def gateway_builder(args: dict[str, Any]) -> Application:
    """Serve entry point of the gateway app (`import_path: serving.app:gateway_builder`).

    `args` holds the platform config inline (`config`) or a YAML file on the nodes (`config_path`).
    """
    return build_gateway_app(_platform(args))


def engine_builder(args: dict[str, Any]) -> Application:
    """Serve entry point of one engine app (`import_path: serving.app:engine_builder`, args `name` + `engine`)."""
    try:
        name, engine = args["name"], args["engine"]
    except KeyError as exc:
        raise ValueError(f"serving.app:engine_builder needs args.name and args.engine (missing {exc})") from None
    from pydantic import ValidationError

    from serving.config import ConfigError, format_validation_error

    try:
        spec = EngineConfig.model_validate(engine)
    except ValidationError as exc:
        raise ConfigError(f"args.engine of engine {name!r}", format_validation_error(exc)) from None
    return build_engine_app(name, spec)

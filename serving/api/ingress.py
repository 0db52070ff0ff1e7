"""The gateway as a Ray Serve ingress deployment in front of the engine deployments."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.api.server import build_api, freeze_heap
from serving.config import (
    GatewayConfig,
    ModelGroupConfig,
    PoliciesConfig,
    ProviderConfig,
    RouteConfig,
    TenantConfig,
    TierConfig,
)
from serving.engines.base import Engine
from serving.engines.ray_handle import RayLLMEngine
from serving.engines.ray_llm import deployment_name
from serving.observability.metrics import start_metrics_server
from serving.routing.groups import GroupRouter

logger = logging.getLogger("serving.gateway")


def groups_from_user_config(user_config: dict[str, Any]) -> dict[str, ModelGroupConfig]:
    """The `model_groups` table carried in the deployment's user_config."""
    return {name: ModelGroupConfig.model_validate(g) for name, g in user_config["model_groups"].items()}


def routing_from_user_config(user_config: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """(providers, tiers, routes, tenants) carried in the deployment's user_config."""
    tables = (("providers", ProviderConfig), ("tiers", TierConfig), ("routes", RouteConfig), ("tenants", TenantConfig))
    return tuple({n: cls.model_validate(v) for n, v in (user_config.get(key) or {}).items()} for key, cls in tables)


def engine_handle(engine: str, app_name: str) -> DeploymentHandle:
    """A handle to the `LLMServer` deployment of `engine` in its own Serve application. Not checked for
    existence: at first deploy the engine apps are built alongside the gateway; until an engine answers, the
    health probes keep it out of traffic."""
    return serve.get_deployment_handle(deployment_name(engine), app_name, _check_exists=False)


@serve.ingress()
class GatewayDeployment:
    """OpenAI-compatible ingress; the engines (each its own Serve app) and the model groups' traffic weights
    arrive through `reconfigure(user_config)`, so a rollout step never restarts the gateway."""

    def __init__(self, settings: dict[str, Any]):
        self._settings = GatewayConfig.model_validate(settings)
        self._router = GroupRouter({}, {})
        self._engine_apps: dict[str, str] = {}
        # Ray Serve's HTTP proxy (or its direct-ingress server) already returns x-request-id.
        self._app = build_api(self._router, self._settings, add_request_id=False)
        self._metrics_server = start_metrics_server(self._app.state.gateway.metrics, self._settings.metrics_port)
        freeze_heap()

    def _engines(self, apps: dict[str, str]) -> dict[str, Engine]:
        """Engine objects for `engine -> Serve app`, keeping the ones already held (and their handles)."""
        current = self._router.engines
        return {
            name: current[name] if self._engine_apps.get(name) == app and name in current
            else RayLLMEngine(name, engine_handle(name, app))
            for name, app in apps.items()
        }

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new engine set and group table (traffic weights) without restarting the replica. Async: handles
        are made on the replica's event loop (Serve's throughput-optimized mode routes on the caller's loop)."""
        apps = dict(user_config.get("engines") or {})
        self._router.update(groups_from_user_config(user_config), self._engines(apps))
        self._engine_apps = apps
        providers, tiers, routes, tenants = routing_from_user_config(user_config)
        self._app.state.gateway.update_routing(providers, tiers, routes, tenants,
                                               capacity=user_config.get("capacity") or {},
                                               context=user_config.get("context") or {},
                                               embedding_groups=user_config.get("embedding_groups") or [])
        policies = PoliciesConfig.model_validate(user_config.get("policies") or {})
        self._app.state.gateway.update_policies(policies)
        if routes:
            logger.info("gateway routes: %s", {n: [t.tier for t in r.tiers] for n, r in routes.items()})
        logger.info("gateway model groups: %s", {
            name: [(e.name, w) for e, w in zip(g.engines, g.weights, strict=True)]
            for name, g in self._router.groups.items()
        })

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return self._app

"""Route resolution: which route (tier chain + gates) serves a request, by model name, tenant and override."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.routing.gates import Gate, build_gates
from serving.routing_config import RouteConfig, TenantConfig


class UnknownRoute(LookupError):
    """The request's `serving.route` names no configured route."""


@dataclass(frozen=True)
class Route:
    """A configured route with its gates built once."""

    name: str
    config: RouteConfig
    gates: Mapping[str, Gate]


class RouteTable:
    """Routes and tenants; swapped atomically on reconfigure."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.tenants: dict[str, TenantConfig] = {}

    def update(self, routes: Mapping[str, RouteConfig], tenants: Mapping[str, TenantConfig]) -> None:
        table = {}
        for name, cfg in routes.items():
            old = self.routes.get(name)
            table[name] = old if old is not None and old.config == cfg else Route(name, cfg, build_gates(cfg.gates))
        self.routes, self.tenants = table, dict(tenants)

    def resolve(self, model: str, tenant: str | None, requested: str | None) -> Route | None:
        """The route for this request, or None when `model` is a plain model group.

        Precedence: the request's `serving.route`, then the tenant's mapping for `model`, then the tenant's
        default route, then the route named `model`.
        """
        if requested is not None:
            route = self.routes.get(requested)
            if route is None:
                raise UnknownRoute(requested)
            return route
        spec = self.tenants.get(tenant) if tenant else None
        if spec is not None:
            name = spec.routes.get(model) or spec.default_route
            if name is not None:
                return self.routes[name]
        return self.routes.get(model)

"""Resolution: which route (tier chain + gates) serves a request, by model name, tenant and override.

A model group named directly is served as a route too: a one-tier chain through the group's own tier, without
gates (per-request `serving.gates` may add some), so model groups and routes share one request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.config import RouteConfig, RouteTier, TenantConfig
from serving.routing.answers import Gate
from serving.routing.gates import build_gates
from serving.routing.groups import GroupRouter, UnknownModel
from serving.routing.outcomes import TargetKind


class UnknownRoute(LookupError):
    """The request's `serving.route` names no configured route."""


@dataclass(frozen=True)
class Route:
    """A route with its gates built once; `kind` says whether it is configured or a model group's own."""

    name: str
    config: RouteConfig
    gates: Mapping[str, Gate]
    kind: TargetKind = "route"


class RouteTable:
    """Routes and tenants (swapped atomically on reconfigure), and the one-tier routes of the model groups."""

    def __init__(self, router: GroupRouter | None = None, group_deadline_s: float = 600.0) -> None:
        self.routes: dict[str, Route] = {}
        self.tenants: dict[str, TenantConfig] = {}
        self.router = router
        self.group_deadline_s = group_deadline_s
        self._group_routes: dict[str, Route] = {}

    def update(self, routes: Mapping[str, RouteConfig], tenants: Mapping[str, TenantConfig]) -> None:
        table = {}
        for name, cfg in routes.items():
            old = self.routes.get(name)
            table[name] = old if old is not None and old.config == cfg else Route(name, cfg, build_gates(cfg.gates))
        self.routes, self.tenants = table, dict(tenants)

    def group_route(self, group: str) -> Route:
        """The one-tier route of the model group `group` (its tier is `TierSet.group_tier(group)`)."""
        route = self._group_routes.get(group)
        if route is None:
            cfg = RouteConfig(tiers=[RouteTier(tier=group)], deadline_s=self.group_deadline_s)
            route = self._group_routes[group] = Route(group, cfg, {}, kind="model_group")
        return route

    def resolve(self, model: str, tenant: str | None, requested: str | None, *, by_name: bool = False) -> Route:
        """The route for this request. Precedence: the request's `serving.route`, then the tenant's mapping for
        `model`, then the tenant's default route, then the route named `model`, then the model group `model`.
        `by_name`: the name only, no tenant mapping (embeddings: tenants' routes are chat routes).
        Raises `UnknownRoute` / `UnknownModel`."""
        if requested is not None:
            route = self.routes.get(requested)
            if route is None:
                raise UnknownRoute(requested)
            return route
        spec = self.tenants.get(tenant) if tenant and not by_name else None
        if spec is not None:
            name = spec.routes.get(model) or spec.default_route
            if name is not None:
                return self.routes[name]
        route = self.routes.get(model)
        if route is not None:
            return route
        if self.router is None or model not in self.router.groups:
            raise UnknownModel(model)
        return self.group_route(model)

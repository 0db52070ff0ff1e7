"""The gateway's FastAPI app: thin OpenAI endpoint adapters over the one request pipeline, plus models, health,
readiness, metrics and the OpenAPI document (serving.api.openapi).

The app is built around a `GroupRouter` (model group -> engines), so the same code runs inside the Ray Serve
ingress deployment (engines are DeploymentHandles) and in unit tests (engines are test doubles).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from serving.api.admin import admin_router
from serving.api.dispatch import Dispatcher
from serving.api.embeddings import parse_embeddings
from serving.api.errors import APIError, install_error_handlers
from serving.api.messages import error_envelope
from serving.api.messages_request import parse_messages
from serving.api.middleware import RequestIdMiddleware
from serving.api.openapi import Served, document, engines_of
from serving.api.pipeline import Parser, Pipeline, policy_error, request_id
from serving.api.protocol import parse_chat, parse_completion
from serving.api.responses import delete as delete_stored_response
from serving.api.responses import retrieve as retrieve_response
from serving.api.responses_request import parse_responses
from serving.api.shadow import Mirror
from serving.config import (
    VLLM_DEFAULT_MAX_NUM_SEQS,
    GatewayConfig,
    PoliciesConfig,
    ProviderConfig,
    RouteConfig,
    TenantConfig,
    TierConfig,
)
from serving.observability.metrics import GatewayMetrics
from serving.observability.tracing import Tracing, provider_from_config
from serving.policy.admission import AdmissionTable, Bounds, bounds_for
from serving.policy.context import PolicyError, RequestContext
from serving.policy.layer import PolicyLayer
from serving.policy.response_store import ResponseStore
from serving.policy.route_pii import RoutePII
from serving.routing.breaker_board import BreakerBoard
from serving.routing.cascade import Cascade
from serving.routing.groups import GroupRouter
from serving.routing.health import EngineHealth
from serving.routing.routes import RouteTable
from serving.routing.tiers import CloudFactory, TierSet, default_cloud_factory


class Gateway:
    """One gateway replica: its router, tiers, routes and policies, and the pipeline that serves requests."""

    def __init__(self, router: GroupRouter, settings: GatewayConfig, metrics: GatewayMetrics,
                 cloud_factory: CloudFactory | None = None, tracer_provider: Any = None):
        self.router = router
        self.settings = settings
        self.metrics = metrics
        self.created = int(time.time())
        self.health = EngineHealth(router, settings.health_interval_s, settings.health_timeout_s)
        self.tiers = TierSet(router, self.health, cloud_factory or default_cloud_factory,
                             group_ttft_s=settings.ttft_timeout_s,
                             group_stall_s=settings.stall_timeout_s)
        self.routes = RouteTable(router, group_deadline_s=settings.request_timeout_s)
        self.policy = PolicyLayer(metrics, settings.tenant_header)
        self.tracer_provider = tracer_provider or provider_from_config(settings.tracing)
        self.tracing = Tracing(self.tracer_provider)
        self.cascade = Cascade(self.tiers, metrics, self.tracing)
        self.breakers = BreakerBoard(lambda: self.tiers.tiers)
        self.tiers.breaker_hook = self.breakers.changed
        self.admission = AdmissionTable(metrics)
        self.capacity: dict[str, int] = {}
        self._responses: ResponseStore | None = None
        self.pipeline = Pipeline(
            router, self.routes, self.health, self.policy, Dispatcher(self.cascade, self.policy, RoutePII(metrics)),
            Mirror(metrics, settings.request_timeout_s), metrics, settings.max_body_bytes, self.tracing,
            self.admission, settings.priority_header,
        )

    def update_routing(self, providers: Mapping[str, ProviderConfig], tiers: Mapping[str, TierConfig],
                       routes: Mapping[str, RouteConfig], tenants: Mapping[str, TenantConfig],
                       capacity: Mapping[str, int] | None = None, context: Mapping[str, int] | None = None,
                       embedding_groups: Sequence[str] | None = None) -> None:
        """Apply new tiers, routes and tenants (from the deployment's user_config) without a restart, and the
        admission bounds that follow from them and the engines' `capacity` (engine -> concurrent sequences);
        `context`: engine -> max_model_len, for the context-window fallback; `embedding_groups`: the model groups
        that answer /v1/embeddings (and nothing else)."""
        self.tiers.update(tiers, providers)
        self.routes.update(routes, tenants)
        self.policy.set_tenants(tenants)
        if capacity is not None:
            self.capacity = dict(capacity)
        if context is not None:
            self.tiers.engine_context = dict(context)
        if embedding_groups is not None:
            self.pipeline.embedding_groups = set(embedding_groups)
        self.admission.update(self.admission_bounds(providers))

    def admission_bounds(self, providers: Mapping[str, ProviderConfig]) -> dict[str, Bounds]:
        """Per-replica admission bounds of every model group and route with admission on. Derived capacities: a
        group's from its engines at their traffic weights; a route's from its first tier (a group, or the cloud
        provider's connection pool)."""
        replicas = self.settings.admission_replicas
        default = VLLM_DEFAULT_MAX_NUM_SEQS["gpu"]
        group_capacity = {name: g.capacity(self.capacity, default) for name, g in self.router.groups.items()}
        out: dict[str, Bounds] = {}
        for name, g in self.router.groups.items():
            if (b := bounds_for(g.admission, group_capacity[name], replicas)) is not None:
                out[name] = b
        for name, route in self.routes.routes.items():
            first = self.tiers.tiers.get(route.config.tiers[0].tier)
            if first is None:
                continue
            if first.config.model_group is not None:
                cap = group_capacity.get(first.config.model_group, default)
            else:
                provider = providers.get(first.config.provider or "")
                cap = (provider.max_connections if provider else default) * replicas
            if (b := bounds_for(route.config.admission, cap, replicas)) is not None:
                out[name] = b
        return out

    def update_policies(self, policies: PoliciesConfig) -> None:
        """Apply new policies (API keys, limits, cache, audit); raises `PolicySetupError` if they cannot run. With
        Redis configured, tier breakers are shared with the other gateway replicas through it."""
        self.policy.update(policies)
        self.breakers.set_store(self.policy.store)
        self.breakers.ensure_running()

    async def handle(self, request: Request, endpoint: str, parse: Parser) -> Response:
        """Serve one inference request through the pipeline."""
        return await self.pipeline.handle(request, endpoint, parse)

    def responses_store(self) -> ResponseStore | None:
        """Where Responses API answers are kept: the policy store's Redis (None without one, or when off)."""
        store, cfg = self.policy.store, self.policy.cfg.responses
        if store is None or not cfg.enabled:
            return None
        if self._responses is None or self._responses.store is not store or self._responses.ttl_s != cfg.ttl_s:
            self._responses = ResponseStore(store, cfg.ttl_s)
        return self._responses

    async def caller(self, request: Request, endpoint: str) -> RequestContext:
        """Authenticate a call outside the pipeline (401 in the envelope); its context (tenant)."""
        ctx = self.policy.begin(endpoint, request_id(request))
        try:
            await self.policy.authenticate(ctx, request.headers)
        except PolicyError as exc:
            raise policy_error(exc) from None
        return ctx

    async def caller_models(self, request: Request) -> set[str] | None:
        """Authenticate a /v1/models call like any other (401 in the error envelope); the names its tenant may use
        (None: all)."""
        ctx = await self.caller(request, "models")
        return self.policy.allowed_models(ctx.tenant)

    async def served(self, request: Request) -> Served:
        """What this caller's OpenAPI document names: the model groups and routes it may use and their engines (none
        for a caller without a valid key when API keys are on), and which of the groups are embedding groups."""
        settings = self.settings
        common: dict[str, Any] = dict(
            auth=self.policy.cfg.auth.enabled, tenant_header=settings.tenant_header,
            priority_header=settings.priority_header, max_body_bytes=settings.max_body_bytes,
            root_path=(request.scope.get("root_path") or "").rstrip("/"))
        try:
            allowed = await self.caller_models(request)
        except APIError:
            return Served(**common)
        groups = [n for n in self.router.groups if allowed is None or n in allowed]
        routes = [n for n in self.routes.routes if allowed is None or n in allowed]
        embedding = [n for n in groups if n in self.pipeline.embedding_groups]
        return Served(tuple(groups), tuple(routes), engines_of(self.router.groups[n] for n in groups), **common,
                      embedding_groups=tuple(embedding),
                      embedding_engines=engines_of(self.router.groups[n] for n in embedding))

    def models(self, allowed: set[str] | None = None) -> dict[str, Any]:
        names = [n for n in [*self.router.groups, *self.routes.routes] if allowed is None or n in allowed]
        return {"object": "list", "data": [self.card(name) for name in names]}

    def card(self, name: str) -> dict[str, Any] | None:
        """The /v1/models entry of a model group or route (None if neither)."""
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "serving"}
        if name in self.router.groups:
            task = "embeddings" if name in self.pipeline.embedding_groups else "chat"
            return {**card, "engines": [e.name for e in self.router.groups[name].engines], "task": task}
        if name in self.routes.routes:
            return {**card, "tiers": [t.tier for t in self.routes.routes[name].config.tiers], "task": "chat"}
        return None

    async def ready(self) -> tuple[bool, dict[str, str]]:
        """Ready when every model group can answer: each has a ready engine in traffic. Engines out of traffic (a
        challenger still loading, a shadow) are listed but do not make the gateway unready."""
        states = await self.health.probe_all()
        groups = self.router.groups.values()
        ok = all(any(states.get(e.name) == "ready" for e in g.engines) for g in groups) if groups else False
        return ok, states


def freeze_heap() -> None:
    """Move everything alive after start-up (Ray, vLLM's protocol models, torch: ~750k objects) out of the garbage
    collector's reach, so a full collection no longer stalls requests for ~0.4 s (measured in benchmarks/policy.py:
    p99 at c=32 from ~560 to ~76 ms)."""
    gc.collect()
    gc.freeze()


def build_api(
    router: GroupRouter,
    settings: GatewayConfig,
    metrics: GatewayMetrics | None = None,
    *,
    add_request_id: bool = True,
    cloud_factory: CloudFactory | None = None,
    tracer_provider: Any = None,
) -> FastAPI:
    """The gateway's ASGI app; `add_request_id=False` when a front proxy (Ray Serve's) sets x-request-id;
    `tracer_provider`: an OpenTelemetry `TracerProvider` (default: from `settings.tracing`, None when off).

    Routes start empty: `app.state.gateway.update_routing(...)` sets them (the ingress does on reconfigure).
    """
    gw = Gateway(router, settings, metrics or GatewayMetrics(), cloud_factory, tracer_provider)
    # FastAPI's own document is off: /openapi.json serves serving.api.openapi's (the endpoints take raw bodies).
    app = FastAPI(title="serving gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    install_error_handlers(app, {"/v1/messages": error_envelope, "/v1/messages/count_tokens": error_envelope})
    app.add_middleware(RequestIdMiddleware, add_header=add_request_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gw.handle(request, "chat", parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.handle(request, "completions", parse_completion)

    @app.post("/v1/messages")
    async def messages(request: Request) -> Response:
        return await gw.handle(request, "messages", parse_messages)

    @app.post("/v1/responses")
    async def create_response(request: Request) -> Response:
        return await gw.handle(request, "responses", lambda raw: parse_responses(raw, gw.responses_store()))

    @app.get("/v1/responses/{response_id}")
    async def get_response(request: Request, response_id: str) -> Response:
        ctx = await gw.caller(request, "responses")
        return JSONResponse(await retrieve_response(gw.responses_store(), ctx.tenant, response_id))

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(request: Request, response_id: str) -> Response:
        ctx = await gw.caller(request, "responses")
        return JSONResponse(await delete_stored_response(gw.responses_store(), ctx.tenant, response_id))

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        return await gw.handle(request, "embeddings", parse_embeddings)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        return JSONResponse(gw.models(await gw.caller_models(request)))

    @app.get("/v1/models/{model:path}")
    async def get_model(request: Request, model: str) -> Response:
        allowed = await gw.caller_models(request)
        card = gw.card(model) if allowed is None or model in allowed else None
        if card is None:
            raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return JSONResponse(card)

    @app.get("/openapi.json")
    async def openapi_json(request: Request) -> Response:
        return JSONResponse(document(await gw.served(request)))

    @app.get("/health")
    async def health() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/ready")
    async def ready() -> Response:
        ok, engines = await gw.ready()
        return JSONResponse({"status": "ready" if ok else "not ready", "engines": engines},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(gw.metrics.render(), media_type=gw.metrics.content_type)

    app.include_router(admin_router(gw.policy))
    return app

"""The request pipeline: every inference endpoint goes through the same stages.

    parse -> authenticate -> resolve -> admit -> cache -> queue -> dispatch -> complete

`parse` is the endpoint's own (its wire protocol -> one `ParsedRequest`); everything after it is shared, so a
model group and a route, or two endpoints, never answer the same problem differently. Each request is completed
exactly once: metrics (`RequestRecord`), settle and audit (`PolicyLayer.complete`, which also gives back its
admission slot), also when it is refused or the client leaves. `queue` comes after the cache, so cache hits need
no slot: it takes one of the model group's or route's admission slots, waiting a bounded time (a fast 429 past
the bounds).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from typing import Any, cast

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from serving.api.cancel import ClientGone, until_disconnect
from serving.api.dispatch import Dispatcher, edge_json, edge_stream
from serving.api.errors import APIError
from serving.api.protocol import ParsedRequest
from serving.api.shadow import Mirror
from serving.api.streaming import SSE_HEADERS, replay
from serving.config import PRIORITIES, Priority
from serving.observability.metrics import GatewayMetrics
from serving.observability.recorder import RequestRecord
from serving.observability.tracing import Tracing, annotate
from serving.policy.admission import AdmissionTable, Shed
from serving.policy.context import PolicyError, Principal, RequestContext
from serving.policy.layer import PolicyLayer
from serving.routing.groups import CALLER_KEY, GroupRouter, UnknownEngine, UnknownModel
from serving.routing.health import EngineHealth
from serving.routing.routes import Route, RouteTable, UnknownRoute

Parser = Callable[[bytes], ParsedRequest]


def policy_error(exc: PolicyError) -> APIError:
    """A policy refusal in the endpoint's error envelope."""
    return APIError(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)


def request_id(request: Request) -> str | None:
    state = request.scope.get("state") or {}
    return state.get("request_id") or request.headers.get("x-request-id")


def caller_key(request: Request | None, engine_request: Any, key_id: str | None = None) -> str | None:
    """Who is calling, for sticky version picks: the request's OpenAI `user` field, else the x-serving-user header,
    else the API key (its id, or a hash of the Authorization header); None for anonymous callers (they get a
    weighted random pick)."""
    user = getattr(engine_request, "user", None)
    if user:
        return f"user:{user}"
    if request is None:
        return None
    if header := request.headers.get("x-serving-user"):
        return f"user:{header}"
    if key_id:
        return f"key:{key_id}"
    if auth := request.headers.get("authorization"):
        return "key:" + hashlib.sha256(auth.encode()).hexdigest()[:24]
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, or a 413 as soon as it is larger than `limit` bytes."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise APIError(413, f"The request body is larger than {limit} bytes.")
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise APIError(413, f"The request body is larger than {limit} bytes.")
        parts.append(part)
    return b"".join(parts)


class Pipeline:
    """The stages of one gateway replica, wired to its router, routes, policies and cascade."""

    def __init__(self, router: GroupRouter, routes: RouteTable, health: EngineHealth, policy: PolicyLayer,
                 dispatcher: Dispatcher, mirror: Mirror, metrics: GatewayMetrics, max_body_bytes: int,
                 tracing: Tracing | None = None, admission: AdmissionTable | None = None,
                 priority_header: str = "x-serving-priority"):
        self.router, self.routes, self.health = router, routes, health
        self.admission = admission or AdmissionTable(metrics)
        self.priority_header = priority_header
        self.policy, self.dispatcher, self.mirror = policy, dispatcher, mirror
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.max_body_bytes = max_body_bytes
        self.embedding_groups: set[str] = set()  # model groups of embedding engines (set by the gateway)

    async def handle(self, request: Request, endpoint: str, parse: Parser) -> Response:
        """Serve one request; every request, refused or answered, is recorded, settled and audited once."""
        ctx = self.policy.begin(endpoint, request_id(request))
        rec = RequestRecord(self.metrics, endpoint, ctx.start, self.tracing.request(endpoint, request.headers))
        try:
            with self.tracing.current(rec.span):
                response = await self._stages(request, endpoint, parse, ctx, rec)
        except APIError as exc:
            rec.finish(exc.status)
            self.policy.complete(ctx, exc.status, error=exc.code or exc.type)
            raise
        except BaseException:
            rec.finish(499)
            self.policy.complete(ctx, 499, error="client_gone")
            raise
        if not ctx.deferred:
            rec.finish(response.status_code)
            self.policy.complete(ctx, response.status_code)
        return response

    async def _stages(self, request: Request, endpoint: str, parse: Parser, ctx: RequestContext,
                      rec: RequestRecord) -> Response:
        tracing, span = self.tracing, rec.span
        with tracing.stage("authenticate"):
            principal = await self.authenticate(ctx, request)
        with tracing.stage("parse"):
            parsed = parse(await read_body(request, self.max_body_bytes))
            if parsed.edge is not None:
                await parsed.edge.prepare(parsed, ctx.tenant)  # e.g. the tenant's previous_response_id
        ctx.stream = parsed.stream
        if span is not None:
            span.update_name(f"{span.name} {parsed.model}")  # type: ignore[attr-defined]
            r = parsed.request
            max_tokens = getattr(r, "max_completion_tokens", None) or getattr(r, "max_tokens", None)
            annotate(span, **{"gen_ai.request.model": parsed.model, "serving.stream": parsed.stream,
                              "gen_ai.request.max_tokens": max_tokens,
                              "gen_ai.request.temperature": getattr(r, "temperature", None),
                              "gen_ai.request.top_p": getattr(r, "top_p", None)})
        CALLER_KEY.set(caller_key(request, parsed.request, principal.key.id if principal.key else None))
        with tracing.stage("resolve"):
            route, pin = self.resolve(parsed, principal)
        rec.name = route.name
        annotate(span, **{f"serving.{route.kind}": route.name, "serving.tenant": ctx.label, "serving.pin": pin})
        with tracing.stage("admit"):
            await self.admit(ctx, parsed.endpoint, route, parsed)
            priority = self.priority(ctx, request)  # a bad header is a 400 whatever the cache or the bounds
        with tracing.stage("cache"):
            cached = await self.policy.cache_lookup(ctx, parsed.body, parsed.overrides,
                                                    request.headers.get("cache-control"))
        annotate(span, **{"serving.cache": ctx.cache})
        if cached is not None:
            rec.engine = "cache"
            return await self.cached(ctx, cached, route, parsed)
        ctx.details = {route.kind: route.name}
        with tracing.stage("queue"):
            if not await self.enqueue(request, ctx, route, priority):
                return Response(status_code=499)
        if route.kind == "model_group" and pin is None:
            self.shadow(route.name, parsed.endpoint, parsed.request)
        with tracing.stage("dispatch"):
            return await self.dispatcher.dispatch(request, parsed.endpoint, parsed, route, pin, ctx, rec)

    async def authenticate(self, ctx: RequestContext, request: Request) -> Principal:
        """The caller (API key -> tenant); 401/503 in the envelope."""
        try:
            return await self.policy.authenticate(ctx, request.headers)
        except PolicyError as exc:
            raise policy_error(exc) from None

    def resolve(self, parsed: ParsedRequest, principal: Principal) -> tuple[Route, str | None]:
        """The route (configured, or a model group's one-tier route) and the pinned engine, if any."""
        overrides = parsed.overrides
        pin = overrides.engine if overrides else None
        try:
            route = self.routes.resolve(parsed.model, principal.tenant, overrides.route if overrides else None,
                                        by_name=parsed.endpoint == "embeddings")
            if pin:
                if route.kind != "model_group":
                    raise APIError(400, "serving.engine applies to model groups, not to routes.",
                                   param="serving.engine")
                self.router.group(route.name).pinned(pin)
        except UnknownEngine as exc:
            raise APIError(400, f"The model group `{parsed.model}` has no engine `{exc.args[0]}`.",
                           param="serving.engine", code="engine_not_found") from None
        except UnknownRoute as exc:
            raise APIError(404, f"The route `{exc.args[0]}` does not exist.", param="serving.route",
                           code="route_not_found") from None
        except UnknownModel as exc:
            raise APIError(404, f"The model `{exc.args[0]}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found") from None
        self.check_task(parsed, route)
        return route, pin

    def check_task(self, parsed: ParsedRequest, route: Route) -> None:
        """An embedding model answers only /v1/embeddings, a chat model or route only the other endpoints."""
        embedding = route.kind == "model_group" and route.name in self.embedding_groups
        if parsed.endpoint == "embeddings" and not embedding:
            names = ", ".join(sorted(self.embedding_groups)) or "none is configured"
            raise APIError(400, f"The model `{parsed.model}` is not an embedding model; /v1/embeddings takes an "
                           f"embedding model group ({names}).", param="model", code="model_not_embedding")
        if parsed.endpoint != "embeddings" and embedding:
            raise APIError(400, f"The model `{parsed.model}` is an embedding model: use POST /v1/embeddings.",
                           param="model", code="model_not_chat")

    async def admit(self, ctx: RequestContext, endpoint: str, route: Route, parsed: ParsedRequest) -> None:
        """The tenant's allow list, then limits, quotas, budgets and kill switches (403/429/503 in the envelope)."""
        try:
            self.policy.check_model(ctx, route.name)
            await self.policy.admit(ctx, endpoint, parsed.body)
        except PolicyError as exc:
            raise policy_error(exc) from None

    async def enqueue(self, request: Request, ctx: RequestContext, route: Route, priority: Priority) -> bool:
        """Take an admission slot for the request (`ctx.slot`), waiting a bounded time; a 429 in the envelope when
        refused, False if the client left while waiting."""
        limiter = self.admission.get(route.name)
        if limiter is None:
            return True
        try:
            ctx.slot = await until_disconnect(request, limiter.acquire(ctx.tenant, priority))
        except Shed as exc:
            ms = max(1, round(exc.retry_after_s * 1000))
            raise APIError(429, str(exc), code=exc.reason, headers={
                "retry-after": str(math.ceil(exc.retry_after_s)), "retry-after-ms": str(ms)}) from None
        except ClientGone:
            return False
        return True

    def priority(self, ctx: RequestContext, request: Request) -> Priority:
        """The request's admission class: the tenant's, or lower if the priority header asks for it."""
        tenant = self.policy.tenants.get(ctx.tenant)
        own: Priority = tenant.priority if tenant is not None else "interactive"
        asked = request.headers.get(self.priority_header)
        if asked and asked.strip().lower() in PRIORITIES:
            wanted = cast(Priority, asked.strip().lower())
            return max(own, wanted, key=PRIORITIES.index)
        if asked:
            raise APIError(400, f"Invalid {self.priority_header} header {asked!r}: use one of {', '.join(PRIORITIES)}.",
                           param=self.priority_header)
        return own

    async def cached(self, ctx: RequestContext, cached: str, route: Route, parsed: ParsedRequest) -> Response:
        """A cache hit, as JSON or replayed as SSE (in the endpoint's own format)."""
        ctx.details = {route.kind: route.name, **ctx.details}
        body = json.loads(cached)
        headers = {**ctx.headers, "x-serving-cache": ctx.cache, "x-serving-model": str(body.get("model") or "")}
        if not parsed.stream:
            if parsed.edge is None:
                return Response(cached, media_type="application/json", headers=headers)
            return await edge_json(parsed.edge, body, headers)
        return StreamingResponse(edge_stream(parsed, replay(body, parsed.endpoint, parsed.client_usage)),
                                 media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    def shadow(self, group_name: str, endpoint: str, engine_request: Any) -> None:
        """Mirror a share of a model group's requests to its shadow engine (blue-green warm-up)."""
        group = self.router.groups.get(group_name)
        mirror = group.mirror() if group is not None else None
        if mirror is not None and group is not None and mirror not in group.engines \
                and mirror.name not in self.health.down:
            self.mirror.send(mirror, group_name, endpoint, engine_request)

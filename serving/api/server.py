"""The gateway's FastAPI app: OpenAI endpoints, health, readiness and metrics.

The app is built around a `GroupRouter` (model group -> engines), so the same code runs inside the Ray
Serve ingress deployment (engines are DeploymentHandles) and in unit tests (engines are test doubles).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.admin import admin_router
from serving.api.errors import APIError, from_engine_error, install_error_handlers
from serving.api.protocol import ParsedRequest, parse_chat, parse_completion
from serving.api.routed import RoutedHandler, replay
from serving.api.streaming import SSE_HEADERS, RelayResponse, StreamRelay, disconnected
from serving.config import GatewayConfig
from serving.engines.base import Engine, EngineFailed, EngineTimeout, EngineUnavailable
from serving.observability.metrics import GatewayMetrics
from serving.policy.layer import PolicyError, PolicyLayer, RequestContext
from serving.policy_config import PoliciesConfig
from serving.routing.cascade import Cascade
from serving.routing.groups import CALLER_KEY, GroupRouter, UnknownEngine, UnknownModel
from serving.routing.health import EngineHealth
from serving.routing.routes import RouteTable, UnknownRoute
from serving.routing.tiers import CloudFactory, TierSet, default_cloud_factory
from serving.routing_config import ProviderConfig, RouteConfig, TenantConfig, TierConfig

logger = logging.getLogger("serving.gateway")


class RequestIdMiddleware:
    """Gives every response an `x-request-id` (the client's, if it sent one).

    Behind Ray Serve's HTTP proxy, the proxy already sets the header (from the client's or a new id) and
    `add_header=False` avoids a duplicate; the id is still put in `scope["state"]` for logs.
    """

    def __init__(self, app: ASGIApp, add_header: bool = True):
        self.app = app
        self.add_header = add_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not self.add_header:
            if rid:
                scope.setdefault("state", {})["request_id"] = rid
            await self.app(scope, receive, send)
            return
        if not rid:
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        raw_rid = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", raw_rid))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)


_CLIENT_GONE = object()


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


def _request_id(request: Request) -> str | None:
    state = request.scope.get("state") or {}
    return state.get("request_id") or request.headers.get("x-request-id")


def _api_error(exc: PolicyError) -> APIError:
    return APIError(exc.status, exc.message, code=exc.code, param=exc.param, headers=exc.headers)


def _with_headers(response: Response, headers: Mapping[str, str]) -> Response:
    for k, v in headers.items():
        response.headers[k] = v
    return response


def _cache_header(ctx: RequestContext) -> dict[str, str]:
    return {"x-serving-cache": ctx.cache} if ctx.cache != "off" else {}


def _is_error(item: Any) -> bool:
    return not isinstance(item, str) and hasattr(item, "error") and not hasattr(item, "choices")


class Gateway:
    """Serves OpenAI requests by routing them to engines and relaying the answer."""

    def __init__(self, router: GroupRouter, settings: GatewayConfig, metrics: GatewayMetrics,
                 cloud_factory: CloudFactory | None = None):
        self.router = router
        self.settings = settings
        self.metrics = metrics
        self.created = int(time.time())
        self.health = EngineHealth(router, settings.health_interval_s, settings.health_timeout_s)
        self.tiers = TierSet(router, self.health, cloud_factory or default_cloud_factory)
        self.routes = RouteTable()
        self.policy = PolicyLayer(metrics, settings.tenant_header)
        self.routed = RoutedHandler(Cascade(self.tiers, metrics), metrics, self.policy)
        self._shadow_tasks: set[asyncio.Task[None]] = set()

    def update_routing(self, providers: Mapping[str, ProviderConfig], tiers: Mapping[str, TierConfig],
                       routes: Mapping[str, RouteConfig], tenants: Mapping[str, TenantConfig]) -> None:
        """Apply new tiers, routes and tenants (from the deployment's user_config) without a restart."""
        self.tiers.update(tiers, providers)
        self.routes.update(routes, tenants)
        self.policy.set_tenants(tenants)

    def update_policies(self, policies: PoliciesConfig) -> None:
        """Apply new policies (API keys, limits, cache, audit); raises `PolicySetupError` if they cannot run."""
        self.policy.update(policies)

    async def handle(self, request: Request, endpoint: str, parse: Callable[[bytes], ParsedRequest]) -> Response:
        """Serve one OpenAI request; every request, refused or answered, is settled and audited once."""
        ctx = self.policy.begin(endpoint, _request_id(request))
        try:
            response = await self._handle(ctx, request, endpoint, parse)
        except APIError as exc:
            self.policy.complete(ctx, exc.status, error=exc.code or exc.type)
            raise
        except BaseException:
            self.policy.complete(ctx, 499, error="client_gone")
            raise
        if not ctx.deferred:
            self.policy.complete(ctx, response.status_code)
        return response

    async def _handle(self, ctx: RequestContext, request: Request, endpoint: str,
                      parse: Callable[[bytes], ParsedRequest]) -> Response:
        start = ctx.start
        try:
            principal = await self.policy.authenticate(ctx, request.headers)
        except PolicyError as exc:
            self._record("unknown", "", endpoint, exc.status, start)
            raise _api_error(exc) from None
        try:
            parsed = parse(await self._read_body(request))
            ctx.stream = parsed.stream
            CALLER_KEY.set(caller_key(request, parsed.request, principal.key.id if principal.key else None))
            tenant = principal.tenant
            route = self.routes.resolve(parsed.model, tenant, parsed.overrides.route if parsed.overrides else None)
            pin = parsed.overrides.engine if parsed.overrides else None
            if route is not None:
                if pin:
                    raise APIError(400, "serving.engine applies to model groups, not to routes.",
                                   param="serving.engine")
                name = route.name
            else:
                group, engine = self.router.route(parsed.model, pin=pin)
                name = group.name
        except UnknownEngine as exc:
            self._record(parsed.model, "", endpoint, 400, start)
            raise APIError(400, f"The model group `{parsed.model}` has no engine `{exc.args[0]}`.",
                           param="serving.engine", code="engine_not_found") from None
        except UnknownRoute as exc:
            self._record("unknown", "", endpoint, 404, start)
            raise APIError(404, f"The route `{exc.args[0]}` does not exist.", param="serving.route",
                           code="route_not_found") from None
        except UnknownModel as exc:
            self._record("unknown", "", endpoint, 404, start)
            raise APIError(
                404, f"The model `{exc.args[0]}` does not exist or you do not have access to it.",
                param="model", code="model_not_found",
            ) from None
        except APIError as exc:
            self._record("unknown", "", endpoint, exc.status, start)
            raise
        try:
            self.policy.check_model(ctx, name)
            await self.policy.admit(ctx, endpoint, parsed.body)
        except PolicyError as exc:
            self._record(name, "", endpoint, exc.status, start)
            raise _api_error(exc) from None
        cached = await self.policy.cache_lookup(ctx, parsed.body, parsed.overrides,
                                                request.headers.get("cache-control"))
        if cached is not None:
            return self._cached(ctx, cached, name, endpoint, parsed)
        if route is not None:
            response = await self.routed.handle(request, endpoint, parsed, route, ctx.label, start, ctx)
            return _with_headers(response, ctx.headers)
        ctx.details = {"model_group": group.name}
        engine = self.health.choose(group, engine) if not pin else (None if engine.name in self.health.down else engine)
        if engine is None:
            self._record(group.name, "", endpoint, 503, start)
            raise APIError(503, f"no engine of model group {group.name} is available now; retry later",
                           code="engine_unavailable", headers={"retry-after": "2"})
        mirror = group.mirror() if not pin else None
        if mirror is not None and mirror is not engine and mirror.name not in self.health.down:
            self._mirror(mirror, group.name, endpoint, parsed.request)
        parsed.request.model = engine.name
        ctx.details["versions"] = [engine.name]
        in_flight = self.metrics.in_flight.labels(group.name)
        in_flight.inc()
        try:
            gen, first = await self._start(engine, endpoint, parsed, request)
        except APIError as exc:
            in_flight.dec()
            self._record(group.name, engine.name, endpoint, exc.status, start)
            raise
        except BaseException:  # cancelled: the client went away and the server dropped the handler
            in_flight.dec()
            self._record(group.name, engine.name, endpoint, 499, start)
            raise
        if first is _CLIENT_GONE:
            in_flight.dec()
            self._record(group.name, engine.name, endpoint, 499, start)
            return Response(status_code=499)
        headers = {"x-serving-model": engine.name, **ctx.headers}
        if not parsed.stream:
            in_flight.dec()
            usage = getattr(first, "usage", None)
            ctx.usage = usage.model_dump() if usage is not None and not isinstance(usage, dict) else usage
            self._record(group.name, engine.name, endpoint, 200, start, usage=usage)
            body = first.model_dump_json(exclude_unset=True)
            self.policy.cache_put(ctx, body)
            return Response(body, media_type="application/json", headers={**headers, **_cache_header(ctx)})

        def on_finish(status: int, usage: dict[str, Any] | None, t_first: float | None) -> None:
            in_flight.dec()
            if t_first is not None:
                self.metrics.ttft.labels(group.name, engine.name).observe(t_first - start)
            self._record(group.name, engine.name, endpoint, status, start, usage=usage, t_first=t_first)
            ctx.usage, ctx.t_first = usage, t_first
            self.policy.complete(ctx, status, error=None if status == 200 else "stream_ended")

        ctx.deferred = True
        stream = StreamRelay(gen, engine.name, on_finish, meter=self.policy.meter(ctx, 0.0))
        return RelayResponse(stream, stream.relay(first, parsed.client_usage), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **headers})

    def _cached(self, ctx: RequestContext, cached: str, name: str, endpoint: str, parsed: ParsedRequest) -> Response:
        """A cache hit, as JSON or replayed as SSE."""
        ctx.details = {"model_group" if name in self.router.groups else "route": name, **ctx.details}
        body = json.loads(cached)
        headers = {**ctx.headers, "x-serving-cache": ctx.cache, "x-serving-model": str(body.get("model") or "")}
        self._record(name, "cache", endpoint, 200, ctx.start)
        if not parsed.stream:
            return Response(cached, media_type="application/json", headers=headers)
        return StreamingResponse(replay(body, endpoint, parsed.client_usage),
                                 media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    def _mirror(self, engine: Engine, group: str, endpoint: str, request: Any) -> None:
        """Send a copy of the request to a shadow engine in the background; its answer is discarded, its status
        and latency are recorded (serving_shadow_*), and nothing it does reaches the client."""
        copy = request.model_copy(deep=True)
        copy.model = engine.name
        task = asyncio.get_running_loop().create_task(self._shadow_call(engine, group, endpoint, copy))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow_call(self, engine: Engine, group: str, endpoint: str, request: Any) -> None:
        start = time.perf_counter()

        async def drain() -> str:
            async for item in engine.generate(endpoint, request):  # type: ignore[arg-type]
                if _is_error(item):
                    return str(getattr(item, "code", None) or getattr(item, "status_code", None) or 500)
            return "200"

        try:
            status = await asyncio.wait_for(drain(), self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            status = "504"
        except EngineUnavailable:
            status = "503"
        except Exception:  # a failing shadow must never matter to anyone but its metrics
            status = "502"
        self.metrics.shadow_requests.labels(group, engine.name, status).inc()
        self.metrics.shadow_latency.labels(group, engine.name).observe(time.perf_counter() - start)

    async def _read_body(self, request: Request) -> bytes:
        limit = self.settings.max_body_bytes
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

    async def _start(self, engine: Engine, endpoint: str, parsed: ParsedRequest,
                     request: Request | None = None) -> tuple[AsyncIterator[Any], Any]:
        """Send the request and wait for the engine's first item (answer, first chunk or error).

        The wait races the client: if it disconnects first, the engine call is cancelled (vLLM aborts the
        request) and `_CLIENT_GONE` is returned.
        """
        gen = engine.generate(endpoint, parsed.request)  # type: ignore[arg-type]
        first_item = asyncio.ensure_future(gen.__anext__())
        waiters = {first_item}
        gone = asyncio.ensure_future(disconnected(request)) if request is not None else None
        if gone is not None:
            waiters.add(gone)
        try:
            done, _ = await asyncio.wait(waiters, timeout=self.settings.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            first_item.cancel()
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if first_item not in done:
            first_item.cancel()
            await asyncio.gather(first_item, return_exceptions=True)
            await gen.aclose()
            if gone is not None and gone in done:
                return gen, _CLIENT_GONE
            raise self._timeout(engine)
        try:
            first = first_item.result()
        except StopAsyncIteration:
            raise APIError(502, f"engine {engine.name} returned no answer", code="engine_error") from None
        except EngineTimeout:
            await gen.aclose()
            raise self._timeout(engine) from None
        except EngineUnavailable as exc:
            self.health.mark_failed(engine.name)
            raise APIError(503, f"{exc}; retry later", code="engine_unavailable",
                           headers={"retry-after": "1"}) from None
        except EngineFailed as exc:
            raise APIError(502, str(exc), code="engine_error") from None
        except Exception:
            logger.exception("engine %s failed before answering", engine.name)
            raise APIError(502, f"engine {engine.name} failed to serve the request", code="engine_error") from None
        if _is_error(first):
            await gen.aclose()
            raise from_engine_error(first)
        return gen, first

    def _timeout(self, engine: Engine) -> APIError:
        return APIError(504, f"engine {engine.name} did not answer within {self.settings.request_timeout_s:g} s",
                        code="timeout")

    def _record(self, group: str, engine: str, endpoint: str, status: int, start: float, *,
                usage: Any = None, t_first: float | None = None) -> None:
        end = time.perf_counter()
        m = self.metrics
        m.requests.labels(group, engine, endpoint, str(status)).inc()
        m.latency.labels(group, engine, endpoint).observe(end - start)
        if usage is None:
            return
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
        else:
            prompt, completion = usage.prompt_tokens or 0, usage.completion_tokens or 0
        m.prompt_tokens.labels(group, engine).inc(prompt)
        m.completion_tokens.labels(group, engine).inc(completion)
        if t_first is not None and completion > 1 and end > t_first:
            m.tps.labels(group, engine).observe((completion - 1) / (end - t_first))

    async def caller_models(self, request: Request) -> set[str] | None:
        """Authenticate a /v1/models call like any other (401 in the error envelope); the names its tenant may use
        (None: all)."""
        ctx = self.policy.begin("models", _request_id(request))
        try:
            await self.policy.authenticate(ctx, request.headers)
        except PolicyError as exc:
            raise _api_error(exc) from None
        return self.policy.allowed_models(ctx.tenant)

    def models(self, allowed: set[str] | None = None) -> dict[str, Any]:
        names = [n for n in [*self.router.groups, *self.routes.routes] if allowed is None or n in allowed]
        return {"object": "list", "data": [self.card(name) for name in names]}

    def card(self, name: str) -> dict[str, Any] | None:
        """The /v1/models entry of a model group or route (None if neither)."""
        card = {"id": name, "object": "model", "created": self.created, "owned_by": "serving"}
        if name in self.router.groups:
            return {**card, "engines": [e.name for e in self.router.groups[name].engines]}
        if name in self.routes.routes:
            return {**card, "tiers": [t.tier for t in self.routes.routes[name].config.tiers]}
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
) -> FastAPI:
    """The gateway's ASGI app; `add_request_id=False` when a front proxy (Ray Serve's) sets x-request-id.

    Routes start empty: `app.state.gateway.update_routing(...)` sets them (the ingress does on reconfigure).
    """
    gw = Gateway(router, settings, metrics or GatewayMetrics(), cloud_factory)
    app = FastAPI(title="serving gateway", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gw
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware, add_header=add_request_id)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await gw.handle(request, "chat", parse_chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await gw.handle(request, "completions", parse_completion)

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

"""The gateway's FastAPI app: OpenAI endpoints, health, readiness and metrics.

The app is built around a `GroupRouter` (model group -> engines), so the same code runs inside the Ray
Serve ingress deployment (engines are DeploymentHandles) and in unit tests (engines are test doubles).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.api.errors import APIError, from_engine_error, install_error_handlers
from serving.api.protocol import ParsedRequest, parse_chat, parse_completion
from serving.config import GatewayConfig
from serving.engines.base import Engine, EngineFailed, EngineTimeout, EngineUnavailable
from serving.observability.metrics import GatewayMetrics
from serving.routing.groups import GroupRouter, UnknownModel
from serving.routing.health import EngineHealth

logger = logging.getLogger("serving.gateway")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_DONE = "data: [DONE]\n\n"


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


async def _disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only `http.disconnect` can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _is_error(item: Any) -> bool:
    return not isinstance(item, str) and hasattr(item, "error") and not hasattr(item, "choices")


def _error_event(exc: APIError) -> str:
    return f"data: {json.dumps(exc.envelope())}\n\n"


class Gateway:
    """Serves OpenAI requests by routing them to engines and relaying the answer."""

    def __init__(self, router: GroupRouter, settings: GatewayConfig, metrics: GatewayMetrics):
        self.router = router
        self.settings = settings
        self.metrics = metrics
        self.created = int(time.time())
        self.health = EngineHealth(router, settings.health_interval_s, settings.health_timeout_s)

    async def handle(self, request: Request, endpoint: str, parse: Callable[[bytes], ParsedRequest]) -> Response:
        start = time.perf_counter()
        try:
            parsed = parse(await self._read_body(request))
            group, engine = self.router.route(parsed.model)
        except UnknownModel as exc:
            self._record("unknown", "", endpoint, 404, start)
            raise APIError(
                404, f"The model `{exc.args[0]}` does not exist or you do not have access to it.",
                param="model", code="model_not_found",
            ) from None
        except APIError as exc:
            self._record("unknown", "", endpoint, exc.status, start)
            raise
        engine = self.health.choose(group, engine)
        if engine is None:
            self._record(group.name, "", endpoint, 503, start)
            raise APIError(503, f"no engine of model group {group.name} is available now; retry later",
                           code="engine_unavailable", headers={"retry-after": "2"})
        parsed.request.model = engine.name
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
        headers = {"x-serving-model": engine.name}
        if not parsed.stream:
            in_flight.dec()
            usage = getattr(first, "usage", None)
            self._record(group.name, engine.name, endpoint, 200, start, usage=usage)
            return Response(first.model_dump_json(exclude_unset=True), media_type="application/json",
                            headers=headers)
        stream = _Stream(self, gen, group.name, engine.name, endpoint, start, in_flight)
        return _RelayResponse(stream, stream.relay(first, parsed.client_usage), media_type="text/event-stream",
                              headers={**SSE_HEADERS, **headers})

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
        gone = asyncio.ensure_future(_disconnected(request)) if request is not None else None
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

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [self._card(name) for name in self.router.groups]}

    def _card(self, name: str) -> dict[str, Any]:
        group = self.router.groups[name]
        return {"id": name, "object": "model", "created": self.created, "owned_by": "serving",
                "engines": [e.name for e in group.engines]}

    async def ready(self) -> tuple[bool, dict[str, str]]:
        states = await self.health.probe_all()
        return all(s == "ready" for s in states.values()), states


class _Stream:
    """One streamed answer: relays the engine's chunks and does the bookkeeping exactly once."""

    def __init__(self, gw: Gateway, gen: AsyncIterator[Any], group: str, engine: str, endpoint: str, start: float,
                 in_flight: Any):
        self.gw, self.gen, self.group, self.engine, self.endpoint = gw, gen, group, engine, endpoint
        self.start, self.in_flight = start, in_flight
        self.t_first: float | None = None
        self.usage: dict[str, Any] | None = None
        self.done = False

    async def relay(self, first: str, client_usage: bool) -> AsyncIterator[str]:
        """Pass the engine's SSE chunks through untouched; take usage from the final usage chunk."""
        self.t_first = time.perf_counter()
        self.gw.metrics.ttft.labels(self.group, self.engine).observe(self.t_first - self.start)
        status = 200
        gen = self.gen
        try:
            chunk = first
            while True:
                if chunk.startswith('data: {"id"') and '"choices":[]' in chunk and '"usage":{' in chunk:
                    self.usage = json.loads(chunk[6:]).get("usage")
                    if client_usage:
                        yield chunk
                else:
                    yield chunk
                try:
                    chunk = await gen.__anext__()
                except StopAsyncIteration:
                    break
        except Exception as exc:
            # Bytes already went out: end the stream with an error event in the OpenAI shape.
            if isinstance(exc, EngineUnavailable):
                status, message = 503, str(exc)
            elif isinstance(exc, (EngineFailed, EngineTimeout)):
                status, message = 502, str(exc)
            else:
                logger.exception("engine %s failed while streaming", self.engine)
                status, message = 502, f"engine {self.engine} failed while streaming"
            code = "engine_unavailable" if status == 503 else "engine_error"
            yield _error_event(APIError(status, message, code=code))
            yield _DONE
        finally:
            await self.finish(status)

    async def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        self.in_flight.dec()
        await self.gen.aclose()
        self.gw._record(self.group, self.engine, self.endpoint, status, self.start, usage=self.usage,
                        t_first=self.t_first)


class _RelayResponse(StreamingResponse):
    """Makes sure the stream's bookkeeping runs even if the client left before the body started (499)."""

    def __init__(self, stream: _Stream, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stream.finish(499)


def build_api(
    router: GroupRouter,
    settings: GatewayConfig,
    metrics: GatewayMetrics | None = None,
    *,
    add_request_id: bool = True,
) -> FastAPI:
    """The gateway's ASGI app; `add_request_id=False` when a front proxy (Ray Serve's) sets x-request-id."""
    gw = Gateway(router, settings, metrics or GatewayMetrics())
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
    async def list_models() -> Response:
        return JSONResponse(gw.models())

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> Response:
        if model not in router.groups:
            raise APIError(404, f"The model `{model}` does not exist or you do not have access to it.",
                           param="model", code="model_not_found")
        return JSONResponse(gw._card(model))

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

    return app

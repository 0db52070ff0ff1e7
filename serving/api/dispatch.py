"""The dispatch and complete stages: a resolved request through its tier chain, answered as JSON or SSE.

A model group and a route take this same path (a model group is a one-tier route without gates): non-streamed and
gated streamed requests are served to completion by the cascade (a gated stream is buffered, checked, then replayed
as SSE); ungated streams are relayed from the first tier that answers. The client leaving cancels the engine call.
Every failure becomes one `APIError`, whichever name the client used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Container
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from serving.api.cancel import ClientGone, until_disconnect
from serving.api.edge import Edge, aiter_of
from serving.api.errors import APIError, from_engine_error
from serving.api.protocol import ParsedRequest, RequestOverrides
from serving.api.streaming import SSE_HEADERS, RelayResponse, StreamRelay, replay
from serving.config import RouteConfig
from serving.observability.recorder import RequestRecord
from serving.observability.tracing import annotate
from serving.policy.context import RequestContext
from serving.policy.layer import PolicyLayer
from serving.policy.route_pii import RoutePII
from serving.routing.answers import Gate
from serving.routing.cascade import SAME, Cascade
from serving.routing.gates import build_gates
from serving.routing.outcomes import CascadeError, Outcome, StreamStart, last_tried
from serving.routing.routes import Route


def to_api_error(exc: CascadeError, route: Route) -> APIError:
    """A cascade failure as the endpoint's error; a configured route's carries its attempts (`serving` field)."""
    if exc.detail is not None:
        err = from_engine_error(exc.detail)
    else:
        headers = {"retry-after": f"{exc.retry_after_s:g}"} if exc.retry_after_s else None
        err = APIError(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)
    if route.kind == "route":
        err.extra = {"serving": {"attempts": [a.to_dict() for a in exc.attempts]}}
    return err


def dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def edge_stream(parsed: ParsedRequest, events: Any) -> Any:
    """The pipeline's OpenAI SSE events in the endpoint's own format (as they are for OpenAI's endpoints)."""
    return events if parsed.edge is None else parsed.edge.stream(aiter_of(events))


async def edge_json(edge: Edge, body: dict[str, Any], headers: dict[str, str]) -> Response:
    """An edge endpoint's JSON answer for the pipeline's OpenAI answer `body`."""
    rendered = edge.render(body)
    await edge.finish(rendered)
    return Response(dumps(rendered), media_type="application/json", headers=headers)


def client_body(outcome: Outcome, parsed: ParsedRequest) -> dict[str, Any]:
    """The accepted answer as the client gets it: logprobs only if asked for; a route's adds the `serving` field."""
    assert outcome.answer is not None
    body = dict(outcome.answer.body)
    asked = getattr(parsed.request, "logprobs", None)  # embeddings have none (and no choices)
    if parsed.endpoint != "embeddings" and (asked is None or asked is False):
        body["choices"] = [c if c.get("logprobs") is None else {**c, "logprobs": None}
                           for c in body.get("choices", [])]
    if outcome.kind == "route":
        body["serving"] = outcome.extension()
    return body


def account(ctx: RequestContext, outcome: Outcome, usage: dict[str, Any] | None) -> None:
    """What the policy layer settles and audits: usage, cost, the tiers tried, the version that answered."""
    ctx.usage, ctx.cost_usd = usage, outcome.cost_usd
    ctx.details.update(tier=outcome.tier, flagged=outcome.flagged, attempts=[a.audit() for a in outcome.attempts],
                       versions=[outcome.model] if outcome.model else [])


def plan(route: Route, overrides: RequestOverrides | None,
         tiers: Container[str]) -> tuple[RouteConfig, dict[str, Gate]]:
    """The route's config and gates with the request's `serving` overrides applied (a ValueError names the field;
    `tiers`: the configured tier names a judge override may use)."""
    if overrides is None or (overrides.gates is None and overrides.self_correct is None
                             and overrides.on_exhausted is None and overrides.deadline_s is None):
        return route.config, dict(route.gates)
    if not route.config.allow_overrides:
        raise ValueError(f"route {route.name} does not accept per-request overrides")
    cfg = overrides.apply(route.config)
    judge = cfg.gates.judge
    if judge is not None and judge.tier not in tiers:
        raise ValueError(f"serving.gates.judge.tier: unknown tier {judge.tier!r}")
    return cfg, dict(build_gates(cfg.gates)) if overrides.gates is not None else dict(route.gates)


class Dispatcher:
    """Serves resolved, admitted requests through the cascade and completes them (metrics, settle, audit)."""

    def __init__(self, cascade: Cascade, policy: PolicyLayer, pii: RoutePII):
        self.cascade = cascade
        self.policy = policy
        self.pii = pii

    async def _cloud_request(self, route: Route, endpoint: str, parsed: ParsedRequest, ctx: RequestContext) -> Any:
        policy = route.config.pii
        if policy.action == "allow" or all(self.cascade.tier(route, t).config.is_local for t in route.config.tiers):
            return SAME
        return await self.pii.cloud_request(route.name, policy, endpoint, parsed.body, parsed.request, ctx)

    async def dispatch(self, request: Request | None, endpoint: str, parsed: ParsedRequest, route: Route,
                       pin: str | None, ctx: RequestContext, rec: RequestRecord) -> Response:
        """Serve the request; raises `APIError` (recorded by the caller) when no tier answered acceptably."""
        try:
            cfg, gates = plan(route, parsed.overrides, self.cascade.tiers.tiers)
        except ValueError as exc:
            raise APIError(400, f"Invalid 'serving' overrides: {exc}", param="serving") from None
        cloud = await self._cloud_request(route, endpoint, parsed, ctx)
        rec.begin()
        try:
            if gates or not parsed.stream:
                work: Awaitable[Outcome | StreamStart] = self.cascade.run(
                    route, cfg, gates, endpoint, parsed.request, ctx.label, cloud_request=cloud, pin=pin)
            else:
                work = self.cascade.open_stream(route, cfg, endpoint, parsed.request, ctx.label,
                                                cloud_request=cloud, pin=pin)
            result = await until_disconnect(request, work)
        except CascadeError as exc:
            annotate(rec.span, **{"serving.attempts": len(exc.attempts)})
            ctx.details["attempts"] = [a.audit() for a in exc.attempts]
            rec.engine = last_tried(exc.attempts)
            raise to_api_error(exc, route) from None
        except ClientGone:
            return Response(status_code=499)
        outcome = result.outcome if isinstance(result, StreamStart) else result
        annotate(rec.span, **{"gen_ai.response.model": outcome.model, "serving.tier": outcome.tier,
                              "serving.flagged": outcome.flagged, "serving.attempts": outcome.attempt_count})
        if isinstance(result, StreamStart):
            return self._relay(result, parsed, ctx, rec)
        return await self._complete(route, endpoint, result, parsed, ctx, rec)

    async def _complete(self, route: Route, endpoint: str, outcome: Outcome, parsed: ParsedRequest, ctx: RequestContext,
                  rec: RequestRecord) -> Response:
        body = client_body(outcome, parsed)
        usage = body.get("usage")
        headers = {**outcome.headers(), **ctx.headers}
        account(ctx, outcome, usage)
        self.pii.scan_answer(route.name, route.config.pii, endpoint, body, ctx)
        text = dumps(body)
        if not outcome.flagged:
            self.policy.cache_put(ctx, text)
        if ctx.cache != "off":
            headers["x-serving-cache"] = ctx.cache
        rec.engine = outcome.model or ""
        if not parsed.stream:
            rec.finish(200, usage)
            if parsed.edge is not None:
                return await edge_json(parsed.edge, body, headers)
            return Response(text, media_type="application/json", headers=headers)
        ctx.t_first = time.perf_counter()
        rec.finish(200, usage, t_first=ctx.t_first)
        return StreamingResponse(edge_stream(parsed, replay(body, endpoint, parsed.client_usage)),
                                 media_type="text/event-stream", headers={**SSE_HEADERS, **headers})

    def _relay(self, st: StreamStart, parsed: ParsedRequest, ctx: RequestContext, rec: RequestRecord) -> Response:
        outcome = st.outcome
        rec.engine = outcome.model or ""
        charged = False

        def add_extension(chunk: dict[str, Any]) -> dict[str, Any]:
            nonlocal charged
            self.cascade.finish_stream(st, chunk.get("usage"))
            charged = True
            return {**chunk, "serving": outcome.extension()}

        def on_finish(status: int, usage: dict[str, Any] | None, t_first: float | None) -> None:
            if not charged:
                self.cascade.finish_stream(st, usage)
            rec.finish(status, usage, t_first)
            account(ctx, outcome, usage)
            ctx.t_first = t_first
            self.policy.complete(ctx, status, error=None if status == 200 else "stream_ended")

        ctx.deferred = True
        meter = self.policy.meter(ctx, st.tier.cost(0, 1))
        relay = StreamRelay(st.gen, outcome.model or "", on_finish, meter=meter,
                            usage_chunk=add_extension if outcome.kind == "route" else None,
                            stall_s=st.tier.config.stall_timeout_s, deadline=st.deadline,
                            breaker=st.tier.breaker)
        assert isinstance(st.first, str)  # a stream's first item is a chunk (refusals were raised by the call)
        return RelayResponse(relay, edge_stream(parsed, relay.relay(st.first, parsed.client_usage)),
                             media_type="text/event-stream",
                             headers={**SSE_HEADERS, **outcome.headers(with_cost=False), **ctx.headers})

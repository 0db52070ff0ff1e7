"""Routed requests: a route's quality-gated tier chain behind the OpenAI endpoints.

Non-streamed and gated streamed requests are served to completion by the cascade first (a gated stream
is buffered, checked, then sent as SSE: its first byte waits for the accepted answer). Ungated streams are
relayed from the first tier that answers; a tier fault before the first chunk falls back to the next tier,
after it the stream ends with an OpenAI error event.

Every answer carries `x-serving-route/tier/model/attempts/cost-usd` headers and a `serving` field in the
body (in streams: on the usage chunk, when the client asks for usage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from serving.api.errors import APIError, from_engine_error
from serving.api.protocol import ParsedRequest
from serving.api.streaming import DONE, SSE_HEADERS, RelayResponse, StreamRelay, disconnected, sse
from serving.observability.metrics import GatewayMetrics
from serving.policy.layer import PolicyLayer, RequestContext
from serving.policy.limits import prompt_chars
from serving.policy.pii import PIIScanner
from serving.policy_config import PIIPolicy
from serving.routing.cascade import Cascade, CascadeError, Outcome, StreamStart
from serving.routing.routes import Route

T = TypeVar("T")
_GONE = object()


def to_api_error(exc: CascadeError) -> APIError:
    """A cascade failure as an OpenAI error, with the attempts in the `serving` extension field."""
    if exc.detail is not None:
        err = from_engine_error(exc.detail)
    else:
        headers = {"retry-after": f"{exc.retry_after_s:g}"} if exc.retry_after_s else None
        err = APIError(exc.status, exc.message, code=exc.code, param=exc.param, headers=headers)
    err.extra = {"serving": {"attempts": [a.to_dict() for a in exc.attempts]}}
    return err


def _client_body(outcome: Outcome, parsed: ParsedRequest) -> dict[str, Any]:
    """The accepted answer as the client gets it: logprobs only if asked for, plus the `serving` field."""
    assert outcome.answer is not None
    body = dict(outcome.answer.body)
    asked = parsed.request.logprobs
    if asked is None or asked is False:
        body["choices"] = [{**c, "logprobs": None} for c in body.get("choices", [])]
    body["serving"] = outcome.extension()
    return body


def replay(body: dict[str, Any], endpoint: str, client_usage: bool) -> Iterator[str]:
    """An accepted (buffered) answer as OpenAI stream chunks: role, content, finish, usage, [DONE]."""
    base = {"id": body.get("id"), "created": body.get("created", int(time.time())), "model": body.get("model")}
    serving = body.get("serving")
    if endpoint == "chat":
        base["object"] = "chat.completion.chunk"
        for c in body.get("choices", []):
            i, msg = c.get("index", 0), c.get("message") or {}
            yield sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]})
            delta = {k: msg[k] for k in ("content", "tool_calls", "refusal") if msg.get(k) is not None}
            if delta:
                yield sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": c.get("logprobs"),
                                                "finish_reason": None}]})
            yield sse({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": c.get("finish_reason")}]})
    else:
        base["object"] = "text_completion"
        for c in body.get("choices", []):
            yield sse({**base, "choices": [{"index": c.get("index", 0), "text": c.get("text") or "",
                                            "logprobs": c.get("logprobs"), "finish_reason": c.get("finish_reason")}]})
    if client_usage:
        yield sse({**base, "choices": [], "usage": body.get("usage"), "serving": serving})
    yield DONE


class RoutedHandler:
    """Serves requests whose model name resolves to a route."""

    def __init__(self, cascade: Cascade, metrics: GatewayMetrics, policy: PolicyLayer):
        self.cascade = cascade
        self.metrics = metrics
        self.policy = policy
        self._scanners: dict[str, tuple[PIIPolicy, PIIScanner]] = {}

    def _scanner(self, route: Route) -> PIIScanner:
        policy = route.config.pii
        held = self._scanners.get(route.name)
        if held is None or held[0] != policy:
            held = (policy, PIIScanner(policy.kinds, policy.phone_region))
            self._scanners[route.name] = held
        return held[1]

    async def _cloud_request(self, route: Route, endpoint: str, parsed: ParsedRequest, ctx: RequestContext) -> Any:
        """The request as cloud tiers may see it: as sent, with its PII redacted, or None (blocked) when the
        route's PII policy says so. Local tiers always get the request as sent. Large prompts are scanned in a
        worker thread (phone-number validation costs milliseconds per KB of dense numbers)."""
        policy = route.config.pii
        if policy.action == "allow" or all(self.cascade.tiers.tiers[t.tier].config.is_local
                                           for t in route.config.tiers):
            return parsed.request
        scanner = self._scanner(route)
        if prompt_chars(parsed.body) > PII_INLINE_BYTES:
            redacted, counts = await asyncio.to_thread(scanner.redact_request, endpoint, parsed.body)
        else:
            redacted, counts = scanner.redact_request(endpoint, parsed.body)
        if not counts:
            return parsed.request
        ctx.pii.update(counts)
        action = "redacted" if policy.action == "redact" else "blocked"
        for kind, n in counts.items():
            self.metrics.pii.labels(route.name, "prompt", kind, action).inc(n)
        if policy.action == "block":
            return None
        return type(parsed.request).model_validate(redacted)

    def _scan_answer(self, route: Route, endpoint: str, body: dict[str, Any], ctx: RequestContext) -> None:
        policy = route.config.pii
        if policy.action == "allow" or not policy.scan_answers:
            return
        for kind, n in self._scanner(route).count_answer(endpoint, body).items():
            self.metrics.pii.labels(route.name, "answer", kind, "counted").inc(n)
            ctx.pii["answer_" + kind] += n

    async def _race(self, request: Request | None, work: Awaitable[T]) -> T | object:
        """Await `work`, cancelling it (engine calls abort) if the client disconnects first."""
        task = asyncio.ensure_future(work)
        if request is None:
            return await task
        gone = asyncio.ensure_future(disconnected(request))
        try:
            await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            gone.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return _GONE
        return task.result()

    def _record(self, route: str, model: str, endpoint: str, status: int, start: float,
                usage: dict[str, Any] | None = None, t_first: float | None = None) -> None:
        end = time.perf_counter()
        m = self.metrics
        m.requests.labels(route, model, endpoint, str(status)).inc()
        m.latency.labels(route, model, endpoint).observe(end - start)
        if t_first is not None:
            m.ttft.labels(route, model).observe(t_first - start)
        if usage:
            prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
            m.prompt_tokens.labels(route, model).inc(prompt)
            m.completion_tokens.labels(route, model).inc(completion)
            if t_first is not None and completion > 1 and end > t_first:
                m.tps.labels(route, model).observe((completion - 1) / (end - t_first))

    async def handle(self, request: Request | None, endpoint: str, parsed: ParsedRequest, route: Route,
                     tenant: str, start: float, ctx: RequestContext) -> Response:
        ctx.details = {"route": route.name}
        try:
            cfg, gates = self.cascade.plan(route, parsed.overrides)
        except ValueError as exc:
            self._record(route.name, "", endpoint, 400, start)
            raise APIError(400, f"Invalid 'serving' overrides: {exc}", param="serving") from None
        cloud = await self._cloud_request(route, endpoint, parsed, ctx)
        in_flight = self.metrics.in_flight.labels(route.name)
        in_flight.inc()
        try:
            if gates or not parsed.stream:
                work: Awaitable[Any] = self.cascade.run(route, cfg, gates, endpoint, parsed.request, tenant,
                                                        cloud_request=cloud)
            else:
                work = self.cascade.open_stream(route, cfg, endpoint, parsed.request, tenant, cloud_request=cloud)
            result = await self._race(request, work)
        except CascadeError as exc:
            in_flight.dec()
            err = to_api_error(exc)
            ctx.details["attempts"] = _attempts([a.to_dict() for a in exc.attempts])
            self._record(route.name, "", endpoint, err.status, start)
            raise err from None
        except BaseException:
            in_flight.dec()
            self._record(route.name, "", endpoint, 499, start)
            raise
        if result is _GONE:
            in_flight.dec()
            self._record(route.name, "", endpoint, 499, start)
            return Response(status_code=499)
        if isinstance(result, StreamStart):
            return self._relay(result, endpoint, parsed, start, in_flight, ctx)
        outcome: Outcome = result  # type: ignore[assignment]
        in_flight.dec()
        body = _client_body(outcome, parsed)
        usage = body.get("usage")
        headers = outcome.headers()
        self._account(ctx, outcome, usage)
        self._scan_answer(route, endpoint, body, ctx)
        text = _dumps(body)
        if not outcome.flagged:
            self.policy.cache_put(ctx, text)
        if ctx.cache != "off":
            headers["x-serving-cache"] = ctx.cache
        if not parsed.stream:
            self._record(route.name, outcome.model or "", endpoint, 200, start, usage)
            return Response(text, media_type="application/json", headers=headers)
        ctx.t_first = time.perf_counter()
        self._record(route.name, outcome.model or "", endpoint, 200, start, usage, t_first=ctx.t_first)
        return StreamingResponse(replay(body, endpoint, parsed.client_usage), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})

    @staticmethod
    def _account(ctx: RequestContext, outcome: Outcome, usage: dict[str, Any] | None) -> None:
        """What the policy layer settles and audits: usage, cost, the tiers tried, the version that answered."""
        ctx.usage, ctx.cost_usd = usage, outcome.cost_usd
        ctx.details.update(tier=outcome.tier, flagged=outcome.flagged,
                           attempts=_attempts([a.to_dict() for a in outcome.attempts]),
                           versions=[outcome.model] if outcome.model else [])

    def _relay(self, st: StreamStart, endpoint: str, parsed: ParsedRequest, start: float,
               in_flight: Any, ctx: RequestContext) -> Response:
        outcome = st.outcome
        charged = False

        def add_extension(chunk: dict[str, Any]) -> dict[str, Any]:
            nonlocal charged
            self.cascade.finish_stream(st, chunk.get("usage"))
            charged = True
            return {**chunk, "serving": outcome.extension()}

        def on_finish(status: int, usage: dict[str, Any] | None, t_first: float | None) -> None:
            in_flight.dec()
            if not charged:
                self.cascade.finish_stream(st, usage)
            self._record(outcome.route, outcome.model or "", endpoint, status, start, usage, t_first)
            self._account(ctx, outcome, usage)
            ctx.t_first = t_first
            self.policy.complete(ctx, status, error=None if status == 200 else "stream_ended")

        ctx.deferred = True
        meter = self.policy.meter(ctx, st.tier.cost(0, 1))
        relay = StreamRelay(st.gen, outcome.model or "", on_finish, usage_chunk=add_extension, meter=meter)
        return RelayResponse(relay, relay.relay(st.first, parsed.client_usage), media_type="text/event-stream",
                             headers={**SSE_HEADERS, **outcome.headers(with_cost=False)})


PII_INLINE_BYTES = 4096


def _attempts(attempts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attempts for the audit line: tier, kind, outcome, model, gate verdicts (no reasons, no text)."""
    out = []
    for a in attempts:
        item = {k: a[k] for k in ("tier", "kind", "outcome", "model", "cost_usd", "latency_ms") if k in a}
        if a.get("gates"):
            item["gates"] = {g["gate"]: g["result"] for g in a["gates"]}
        out.append(item)
    return out


def _dumps(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body, separators=(",", ":"))

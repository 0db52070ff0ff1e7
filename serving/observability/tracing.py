"""OpenTelemetry traces of the request path, with the GenAI semantic conventions.

One trace per request: a SERVER span named `{gen_ai.operation.name} {gen_ai.request.model}` (`chat smollm2`),
a child span per pipeline stage (parse, authenticate, resolve, admit, cache, dispatch) and per tier attempt
(`tier <name>`, with the engine version, outcome and gate results). A client's W3C `traceparent` is the parent;
cloud tiers get the attempt's `traceparent`. Off by default: then no span object is made at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

    from serving.config import TracingConfig

OPERATIONS = {"chat": "chat", "completions": "text_completion"}
"""`gen_ai.operation.name` per endpoint."""

_OFF: contextlib.nullcontext[None] = contextlib.nullcontext()


def provider_from_config(cfg: TracingConfig) -> TracerProvider | None:
    """A tracer provider exporting over OTLP in batches, or None when tracing is off."""
    if not cfg.enabled:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        exporter: Any = GrpcExporter(endpoint=cfg.endpoint) if cfg.endpoint else GrpcExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

        exporter = HttpExporter(endpoint=cfg.endpoint) if cfg.endpoint else HttpExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(cfg.sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def inject_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the current span, for a call to a cloud API; empty when not tracing."""
    if not trace.get_current_span().get_span_context().is_valid:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


class Tracing:
    """The spans of one gateway replica (`provider` None: tracing off, every method a cheap no-op)."""

    def __init__(self, provider: Any = None):
        self.tracer = provider.get_tracer("serving.gateway") if provider is not None else None

    @property
    def on(self) -> bool:
        return self.tracer is not None

    def request(self, endpoint: str, headers: Mapping[str, str]) -> Span | None:
        """The root span of a request, child of the client's `traceparent` if it sent one; ended by `finish`."""
        if self.tracer is None:
            return None
        op = OPERATIONS.get(endpoint, endpoint)
        return self.tracer.start_span(op, context=propagate.extract(headers), kind=SpanKind.SERVER,
                                      attributes={"gen_ai.operation.name": op})

    def current(self, span: Span | None) -> contextlib.AbstractContextManager[Any]:
        """Make `span` the current span (stage and attempt spans become its children)."""
        return _OFF if span is None else trace.use_span(span, end_on_exit=False)

    def stage(self, name: str) -> contextlib.AbstractContextManager[Any]:
        """A span for one pipeline stage."""
        return _OFF if self.tracer is None else self.tracer.start_as_current_span(name)

    def attempt(self, tier: str, kind: str, provider: str, attempt: Any) -> contextlib.AbstractContextManager[Any]:
        """A span for one tier attempt; its outcome, engine and gate results are read from `attempt` at the end."""
        return _OFF if self.tracer is None else self._attempt(tier, kind, provider, attempt)

    @contextlib.contextmanager
    def _attempt(self, tier: str, kind: str, provider: str, attempt: Any) -> Iterator[Span]:
        assert self.tracer is not None
        with self.tracer.start_as_current_span(f"tier {tier}", kind=SpanKind.CLIENT, attributes={
                "serving.tier": tier, "serving.attempt.kind": kind, "gen_ai.provider.name": provider}) as span:
            try:
                yield span
            finally:
                span.set_attribute("serving.attempt.outcome", attempt.outcome)
                if attempt.model:
                    span.set_attribute("gen_ai.response.model", attempt.model)
                    span.set_attribute("serving.engine", attempt.model)
                if attempt.tries > 1:
                    span.set_attribute("serving.attempt.tries", attempt.tries)
                for g in attempt.gates:
                    span.set_attribute(f"serving.gate.{g.gate}", g.label)
                if attempt.error:
                    span.set_status(Status(StatusCode.ERROR, attempt.error[:200]))


def annotate(span: Span | None, **attributes: Any) -> None:
    """Set attributes on `span` (None values are left out)."""
    if span is not None:
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})


def finish(span: Span | None, status: int, usage: Mapping[str, Any] | None) -> None:
    """End a request's root span with its HTTP status and token usage."""
    if span is None:
        return
    attrs: dict[str, Any] = {"http.response.status_code": status}
    if usage:
        attrs["gen_ai.usage.input_tokens"] = int(usage.get("prompt_tokens") or 0)
        attrs["gen_ai.usage.output_tokens"] = int(usage.get("completion_tokens") or 0)
    span.set_attributes(attrs)
    if status >= 500 or status == 499:
        span.set_status(Status(StatusCode.ERROR, str(status)))
        span.set_attribute("error.type", str(status))
    elif status >= 400:
        span.set_attribute("error.type", str(status))
    span.end()

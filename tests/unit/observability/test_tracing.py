"""Traces of the request path, read back from the OpenTelemetry SDK's in-memory exporter.

One trace per request: the root SERVER span (`chat <model>`, GenAI semantic conventions), a span per pipeline
stage and per tier attempt; the client's traceparent is followed and a cloud tier receives one.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig, ProviderConfig, RouteConfig, TierConfig, TracingConfig
from serving.observability.tracing import provider_from_config
from serving.routing.groups import GroupRouter
from tests.support.fake_clouds import FakeOpenAI
from tests.support.fakes import FakeEngine

MESSAGES = [{"role": "user", "content": "Reply in JSON."}]
STAGES = {"authenticate", "parse", "resolve", "admit", "cache", "queue", "dispatch"}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


class Traced:
    """A gateway over fake engines (groups `small`, `big`; route `escalate`: small -> big, JSON gate; route `cloud`:
    one OpenAI tier on a fake server), exporting spans in memory."""

    def __init__(self, small_reply: str = "not json", cloud_url: str | None = None):
        self.small, self.big = FakeEngine("small-v1", reply=small_reply), FakeEngine("big-v1", reply='{"ok": 1}')
        groups = {"small": ModelGroupConfig.model_validate({"engines": ["small-v1"]}),
                  "big": ModelGroupConfig.model_validate({"engines": ["big-v1"]})}
        router = GroupRouter({"small-v1": self.small, "big-v1": self.big}, groups)
        self.exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        app = build_api(router, GatewayConfig(health_interval_s=0), tracer_provider=provider)
        tiers = {"t-small": TierConfig(model_group="small"), "t-big": TierConfig(model_group="big")}
        routes = {"escalate": RouteConfig.model_validate({"tiers": ["t-small", "t-big"],
                                                          "gates": {"json": {"required": True}}})}
        providers = {}
        if cloud_url:
            providers["oa"] = ProviderConfig(kind="openai", base_url=cloud_url, api_key_env="TRACE_OPENAI_KEY")
            tiers["t-cloud"] = TierConfig(provider="oa", model="gpt-fake", timeout_s=5)
            routes["cloud"] = RouteConfig.model_validate({"tiers": ["t-cloud"]})
        app.state.gateway.update_routing(providers, tiers, routes, {})
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    async def chat(self, model: str, headers: dict[str, str] | None = None, **body: Any) -> httpx.Response:
        resp = await self.http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, **body},
                                    headers=headers)
        await resp.aread()
        return resp

    def trace(self) -> tuple[ReadableSpan, list[ReadableSpan]]:
        """(root span, all spans) of the one trace recorded; fails if there is not exactly one."""
        spans = list(self.exporter.get_finished_spans())
        assert len({s.context.trace_id for s in spans}) == 1, [s.name for s in spans]
        roots = [s for s in spans if s.kind == SpanKind.SERVER]
        assert len(roots) == 1
        root = roots[0]
        for s in spans:
            if s is not root:
                assert s.parent is not None
        return root, spans


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


async def test_model_group_request_is_one_trace_with_every_stage():
    t = Traced(small_reply="hello")
    resp = await t.chat("small", max_tokens=8)
    assert resp.status_code == 200
    root, spans = t.trace()
    assert root.name == "chat small"
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.request.model"] == "small"
    assert a["gen_ai.request.max_tokens"] == 8
    assert a["gen_ai.response.model"] == "small-v1" and a["serving.model_group"] == "small"
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 1
    assert a["http.response.status_code"] == 200
    assert {s.name for s in children(spans, root)} == STAGES
    dispatch = next(s for s in spans if s.name == "dispatch")
    (attempt,) = children(spans, dispatch)
    assert attempt.name == "tier small" and attempt.kind == SpanKind.CLIENT
    assert attempt.attributes["serving.engine"] == "small-v1"
    assert attempt.attributes["serving.attempt.outcome"] == "accepted"
    assert attempt.attributes["gen_ai.provider.name"] == "vllm"


async def test_escalating_route_has_a_span_per_tier_attempt_with_gate_results():
    t = Traced()
    resp = await t.chat("escalate")
    assert resp.status_code == 200 and resp.headers["x-serving-tier"] == "t-big"
    root, spans = t.trace()
    assert root.name == "chat escalate"
    assert root.attributes["serving.route"] == "escalate" and root.attributes["serving.tier"] == "t-big"
    assert root.attributes["serving.attempts"] == 2
    attempts = [s for s in spans if s.name.startswith("tier ")]
    assert [s.name for s in sorted(attempts, key=lambda s: s.start_time)] == ["tier t-small", "tier t-big"]
    small, big = sorted(attempts, key=lambda s: s.start_time)
    assert small.attributes["serving.attempt.outcome"] == "gate_failed"
    assert small.attributes["serving.gate.json"] == "fail" and small.attributes["serving.engine"] == "small-v1"
    assert big.attributes["serving.attempt.outcome"] == "accepted" and big.attributes["serving.gate.json"] == "pass"


async def test_stream_trace_ends_when_the_stream_does():
    t = Traced(small_reply="one two three")
    resp = await t.chat("small", stream=True, stream_options={"include_usage": True})
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    root, spans = t.trace()
    assert root.attributes["serving.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == 3
    assert root.end_time >= max(s.end_time for s in spans)


async def test_errors_are_traced_with_their_status():
    t = Traced()
    resp = await t.chat("nope")
    assert resp.status_code == 404
    root, spans = t.trace()
    assert root.attributes["http.response.status_code"] == 404 and root.attributes["error.type"] == "404"
    assert "dispatch" not in {s.name for s in spans}


async def test_client_traceparent_is_followed_and_passed_to_cloud_tiers(monkeypatch):
    monkeypatch.setenv("TRACE_OPENAI_KEY", "sk-trace")
    with FakeOpenAI(api_key="sk-trace", reply="Paris.") as srv:
        t = Traced(cloud_url=srv.url)
        parent = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
        resp = await t.chat("cloud", headers={"traceparent": parent})
        assert resp.status_code == 200, resp.text
        root, spans = t.trace()
        assert format(root.context.trace_id, "032x") == TRACE_ID
        assert root.parent is not None and format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
        sent = srv.last.headers["traceparent"]
        attempt = next(s for s in spans if s.name == "tier t-cloud")
        assert sent == f"00-{TRACE_ID}-{format(attempt.context.span_id, '016x')}-01"
        assert attempt.attributes["gen_ai.provider.name"] == "openai"
        assert attempt.attributes["gen_ai.response.model"] == "gpt-fake"


async def test_tracing_off_makes_no_spans_and_sends_no_traceparent(monkeypatch):
    assert provider_from_config(TracingConfig()) is None
    monkeypatch.setenv("TRACE_OPENAI_KEY", "sk-trace")
    with FakeOpenAI(api_key="sk-trace", reply="Paris.") as srv:
        router = GroupRouter({}, {})
        app = build_api(router, GatewayConfig(health_interval_s=0))
        gw = app.state.gateway
        assert not gw.tracing.on
        gw.update_routing({"oa": ProviderConfig(kind="openai", base_url=srv.url, api_key_env="TRACE_OPENAI_KEY")},
                          {"t": TierConfig(provider="oa", model="gpt-fake")},
                          {"cloud": RouteConfig.model_validate({"tiers": ["t"]})}, {})
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            resp = await http.post("/v1/chat/completions", json={"model": "cloud", "messages": MESSAGES},
                                   headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"})
        assert resp.status_code == 200
        assert "traceparent" not in srv.last.headers


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_otlp_exporter_from_config(protocol: str):
    provider = provider_from_config(TracingConfig(enabled=True, endpoint="http://127.0.0.1:9/v1/traces",
                                                  protocol=protocol, service_name="gw-test", sample_ratio=0.5))
    try:
        assert provider is not None
        assert provider.resource.attributes["service.name"] == "gw-test"
        assert "0.5" in provider.sampler.get_description()
        exporter = provider._active_span_processor._span_processors[0].span_exporter  # type: ignore[attr-defined]
        assert type(exporter).__module__.endswith("grpc.trace_exporter" if protocol == "grpc" else
                                                  "http.trace_exporter")
    finally:
        if provider is not None:
            provider.shutdown()


def test_tracing_config_rejects_bad_values():
    with pytest.raises(ValueError, match="sample_ratio"):
        GatewayConfig.model_validate({"tracing": {"enabled": True, "sample_ratio": 2}})
    with pytest.raises(ValueError, match="protocol"):
        GatewayConfig.model_validate({"tracing": {"protocol": "thrift"}})
    assert json.loads(GatewayConfig().model_dump_json())["tracing"]["enabled"] is False

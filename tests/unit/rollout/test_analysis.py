"""Per-engine analysis: the gateway's exposition and the Prometheus API give the same stats; limits judged."""

from __future__ import annotations

import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from serving.config import AnalysisConfig
from serving.observability.metrics import GatewayMetrics
from serving.rollout.analysis import EngineStats, PrometheusAPI, judge, parse_exposition


def gateway_metrics() -> GatewayMetrics:
    m = GatewayMetrics()
    for engine, ok, errors, ttft in (("v1", 40, 0, 0.04), ("v2", 18, 2, 0.2)):
        m.requests.labels("chat", engine, "chat", "200").inc(ok)
        m.requests.labels("chat", engine, "chat", "503").inc(errors)
        m.requests.labels("other", engine, "chat", "200").inc(99)  # another group: ignored
        for _ in range(ok):
            m.ttft.labels("chat", engine).observe(ttft)
    m.engine_answers.labels("chat", "v2", "gate_pass").inc(3)
    m.engine_answers.labels("chat", "v2", "gate_fail").inc(7)
    m.engine_answers.labels("chat", "v2", "escalated").inc(6)
    return m


def test_exposition_to_stats() -> None:
    snap = parse_exposition(gateway_metrics().render().decode(), "chat")
    v2 = snap["v2"]
    assert (v2.requests, v2.errors) == (20, 2) and v2.error_rate == pytest.approx(0.1)
    assert v2.ttft_samples == 18 and 0.1 < v2.ttft_quantile(0.95) <= 0.25
    assert v2.gate_pass_rate == pytest.approx(0.3) and v2.escalation_rate == pytest.approx(0.6)
    assert snap["v1"].requests == 40 and snap["v1"].ttft_quantile(0.95) <= 0.05


def test_window_is_a_difference_and_survives_a_counter_reset() -> None:
    before = EngineStats(requests=100, errors=5, ttft_buckets={0.1: 50, float("inf"): 60})
    now = EngineStats(requests=130, errors=5, ttft_buckets={0.1: 70, float("inf"): 90})
    d = now.minus(before)
    assert (d.requests, d.errors, d.ttft_samples) == (30, 0, 30)
    restarted = EngineStats(requests=7).minus(before)  # a gateway restart resets its counters
    assert restarted.requests == 7


class FakePrometheus(BaseHTTPRequestHandler):
    """Answers /api/v1/query by evaluating `sum by (...) (metric{model_group=...})` over an exposition."""

    exposition = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)["query"][0]
        by = [b.strip() for b in query.split("(", 2)[1].split(")")[0].split(",")]
        metric = query.rsplit("(", 1)[1].split("{")[0]
        group = query.split('model_group="')[1].split('"')[0]
        sums: dict[tuple[str, ...], float] = {}
        for fam in text_string_to_metric_families(self.exposition):
            for s in fam.samples:
                if s.name == metric and s.labels.get("model_group") == group:
                    key = tuple(s.labels.get(b, "") for b in by)
                    sums[key] = sums.get(key, 0.0) + s.value
        result = [{"metric": dict(zip(by, k, strict=True)), "value": [0, str(v)]} for k, v in sums.items()]
        body = json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(body)


def test_prometheus_source_matches_the_scrape() -> None:
    text = gateway_metrics().render().decode()
    FakePrometheus.exposition = text
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakePrometheus)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        via_prom = PrometheusAPI(f"http://127.0.0.1:{srv.server_address[1]}").snapshot("chat")
    finally:
        srv.shutdown()
    assert via_prom == parse_exposition(text, "chat")


def test_judge() -> None:
    cfg = AnalysisConfig(min_requests=10, max_error_rate=0.05, min_ttft_samples=5, min_gate_pass_rate=0.5)
    snap = parse_exposition(gateway_metrics().render().decode(), "chat")
    verdict = judge(snap["v2"], snap["v1"], cfg)
    assert verdict.result == "fail"
    assert any("error rate 10.0%" in r for r in verdict.reasons)
    assert any("TTFT p95" in r and "champion" in r for r in verdict.reasons)
    assert any("quality-gate pass rate 30.0%" in r for r in verdict.reasons)
    assert judge(snap["v1"], None, cfg).result == "pass"
    assert judge(EngineStats(requests=3), None, cfg).result == "wait"

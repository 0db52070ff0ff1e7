"""Per-replica gateway metrics: each replica's own /metrics port, the controller's sum over every replica behind one
DNS name (the chart's headless Service), and the controller's own /metrics."""

from __future__ import annotations

import socket

import httpx
import pytest

from serving.observability.metrics import GatewayMetrics, MetricsServer, start_metrics_server
from serving.rollout.analysis import ReplicaScrape
from serving.rollout.server import ControllerServer


def replica(requests: int, errors: int) -> GatewayMetrics:
    m = GatewayMetrics()
    m.requests.labels("g", "e-v1", "chat", "200").inc(requests - errors)
    m.requests.labels("g", "e-v1", "chat", "503").inc(errors)
    m.ttft.labels("g", "e-v1").observe(0.02)
    return m


def test_each_replica_serves_its_own_registry() -> None:
    m = replica(5, 1)
    srv = MetricsServer(m, 0, host="127.0.0.1")
    try:
        resp = httpx.get(f"http://127.0.0.1:{srv.port}/metrics")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
        assert 'serving_requests_total{endpoint="chat",engine="e-v1",model_group="g",status_code="503"} 1.0' \
            in resp.text
        assert httpx.get(f"http://127.0.0.1:{srv.port}/other").status_code == 404
    finally:
        srv.stop()


def test_a_taken_port_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        assert start_metrics_server(GatewayMetrics(), s.getsockname()[1]) is None
    assert "not available" in caplog.text
    assert start_metrics_server(GatewayMetrics(), None) is None


def test_controller_sums_every_replica_behind_one_name() -> None:
    servers = [MetricsServer(replica(10, 1), 0, host="127.0.0.1"), MetricsServer(replica(30, 0), 0, host="127.0.0.2")]
    port = servers[0].port
    servers[1].stop()
    servers[1] = MetricsServer(replica(30, 0), port, host="127.0.0.2")  # same port, other address: like two pods
    try:
        source = ReplicaScrape(f"http://gateway-metrics.ns.svc:{port}/metrics",
                               resolve=lambda host, p: ["127.0.0.1", "127.0.0.2"])
        assert source.targets() == [f"http://127.0.0.1:{port}/metrics", f"http://127.0.0.2:{port}/metrics"]
        stats = source.snapshot("g")["e-v1"]
        assert (stats.requests, stats.errors, stats.ttft_samples) == (40, 1, 2)
        # a replica that does not answer fails the snapshot (a partial sum would read as a counter reset)
        servers[1].stop()
        with pytest.raises(httpx.HTTPError):
            source.snapshot("g")
    finally:
        servers[0].stop()


def test_replica_scrape_needs_host_and_port() -> None:
    with pytest.raises(ValueError, match="host and a port"):
        ReplicaScrape("http://gateway-metrics/metrics")
    assert ReplicaScrape("http://localhost:1/metrics").targets() in (["http://127.0.0.1:1/metrics"],
                                                                    ["http://127.0.0.1:1/metrics", "http://[::1]:1/metrics"])


def test_controller_metrics() -> None:
    srv = ControllerServer(0, secret=None, wake=lambda: None, host="127.0.0.1",
                           health=lambda: {"status": "degraded", "last_tick": 1700000000.0, "events": 3}).start()
    try:
        text = httpx.get(f"http://127.0.0.1:{srv.port}/metrics").text
        assert "serving_rollout_controller_up 0.0" in text
        assert "serving_rollout_last_tick_timestamp_seconds 1.7e+09" in text
        assert "serving_rollout_events_total 3.0" in text
        assert 'serving_rollout_webhook_deliveries_total{result="rejected"} 0.0' in text
    finally:
        srv.stop()

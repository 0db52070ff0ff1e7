"""The gateway's Prometheus metrics (conventional names, bounded label sets).

Labels: `model_group` (what the client asked for), `engine` (the deployment that answered), `endpoint`
(chat / completions) and `status_code`. Unknown model names are recorded as `model_group="unknown"` so a
client cannot blow up the label cardinality.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TPS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)

disable_created_metrics()  # no *_created series: they double the exposition and dashboards don't use them


class GatewayMetrics:
    """One registry per gateway process; served at `GET /metrics`."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "serving_requests", "Requests answered by the gateway.",
            ["model_group", "engine", "endpoint", "status_code"], registry=r,
        )
        self.latency = Histogram(
            "serving_request_duration_seconds", "End-to-end request latency at the gateway.",
            ["model_group", "engine", "endpoint"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "serving_time_to_first_token_seconds", "Time from request arrival to the first streamed token.",
            ["model_group", "engine"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.tps = Histogram(
            "serving_output_tokens_per_second", "Output tokens per second of one request after its first token.",
            ["model_group", "engine"], buckets=TPS_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "serving_prompt_tokens", "Prompt tokens processed.", ["model_group", "engine"], registry=r
        )
        self.completion_tokens = Counter(
            "serving_completion_tokens", "Completion tokens generated.", ["model_group", "engine"], registry=r
        )
        self.in_flight = Gauge(
            "serving_requests_in_flight", "Requests being served now.", ["model_group"], registry=r
        )
        # Quality-gated routing (`route` is a configured route name; `tier` a configured tier name).
        self.escalations = Counter(
            "serving_escalations", "Requests moved on from a tier, by reason (failed gates, transport, circuit).",
            ["route", "from_tier", "to_tier", "reason"], registry=r,
        )
        self.gate_results = Counter(
            "serving_gate_results", "Quality gate outcomes on tier answers (pass, fail, skip).",
            ["route", "tier", "gate", "result"], registry=r,
        )
        self.tier_attempts = Counter(
            "serving_tier_attempts", "Calls to a tier by outcome (accepted, gate_failed, transport_error, ...).",
            ["route", "tier", "outcome"], registry=r,
        )
        self.breaker_state = Gauge(
            "serving_breaker_state", "Circuit breaker state per tier: 0 closed, 1 half-open, 2 open.",
            ["tier"], registry=r,
        )
        self.cost = Counter(
            "serving_cost_usd", "Cost in USD of answered requests (every attempt, judge calls included).",
            ["route", "tier", "tenant"], registry=r,
        )
        self.tier_tokens = Counter(
            "serving_tier_tokens", "Tokens processed per tier (every attempt).", ["tier", "kind"], registry=r,
        )
        self.retries = Counter(
            "serving_tier_retries", "Retries of tier calls after transport faults.", ["tier", "reason"], registry=r,
        )
        # Per engine (= model version) outcomes of gated answers, for rollout analysis of a challenger.
        self.engine_answers = Counter(
            "serving_engine_answers", "Gated answers of a local engine: gate_pass, gate_fail, escalated.",
            ["model_group", "engine", "outcome"], registry=r,
        )
        # Shadow traffic (a blue-green warm-up): mirrored copies whose answers are discarded.
        self.shadow_requests = Counter(
            "serving_shadow_requests", "Mirrored requests sent to a shadow engine, by status.",
            ["model_group", "engine", "status_code"], registry=r,
        )
        self.shadow_latency = Histogram(
            "serving_shadow_request_duration_seconds", "Latency of mirrored requests at the shadow engine.",
            ["model_group", "engine"], buckets=LATENCY_BUCKETS, registry=r,
        )
        # Policies (serving.policy): admission verdicts, shared-state health, cache, PII, injection, runaways.
        self.policy_decisions = Counter(
            "serving_policy_decisions", "Admission verdicts: allowed, degraded (Redis down, fail-open) or the "
            "refusal code (rate_limit_exceeded, budget_exceeded, kill_switch, invalid_api_key, ...).",
            ["tenant", "decision"], registry=r,
        )
        self.redis_up = Gauge(
            "serving_policy_redis_up", "1 while the policy store (Redis) answers, 0 while it does not; no series "
            "when no store is configured.", ["store"], registry=r,
        )
        self.redis_errors = Counter(
            "serving_policy_redis_errors", "Policy-store operations that failed because Redis was unreachable.",
            ["operation"], registry=r,
        )
        self.cache = Counter(
            "serving_cache_requests", "Response-cache lookups of deterministic requests: hit, miss, bypass, error.",
            ["result"], registry=r,
        )
        self.pii = Counter(
            "serving_pii_detections", "Personal data found (never the values): in prompts bound for cloud tiers "
            "or in answers; action redacted, blocked, allowed or counted.",
            ["route", "direction", "kind", "action"], registry=r,
        )
        self.injection = Counter(
            "serving_prompt_injection_suspected", "Requests matching prompt-injection heuristics (flagged, blocked).",
            ["tenant", "action"], registry=r,
        )
        self.tenant_anomalous = Gauge(
            "serving_tenant_anomalous", "1 while a tenant's request rate is far above its baseline.", ["tenant"],
            registry=r,
        )
        self.anomalies = Counter(
            "serving_tenant_anomalies", "Windows in which a tenant's request rate broke its baseline.", ["tenant"],
            registry=r,
        )
        # Admission control (`name`: a model group or route).
        self.admission_in_flight = Gauge(
            "serving_admission_in_flight", "Requests holding an admission slot.", ["name"], registry=r,
        )
        self.admission_queued = Gauge(
            "serving_admission_queued", "Requests waiting for an admission slot.", ["name"], registry=r,
        )
        self.admission_shed = Counter(
            "serving_admission_shed", "Requests refused by admission control (429): queue_full or queue_timeout.",
            ["name", "reason", "priority"], registry=r,
        )
        self.admission_wait = Histogram(
            "serving_admission_wait_seconds", "Time admitted requests waited in the queue for a slot.",
            ["name", "priority"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self._refresh: list[Any] = []

    def on_render(self, fn: Any) -> None:
        """Call `fn()` before each scrape (e.g. to export breaker states that change with time)."""
        self._refresh.append(fn)

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        for fn in self._refresh:
            fn()
        return generate_latest(self.registry)


logger = logging.getLogger("serving.metrics")


class MetricsServer:
    """`GET /metrics` of one registry on its own port, in a daemon thread: the per-replica scrape target.

    Through Ray Serve's HTTP port, `/metrics` reaches whichever gateway replica the proxy picks, so counters of
    several replicas would alternate between scrapes; this port belongs to the replica alone.
    """

    def __init__(self, metrics: GatewayMetrics, port: int, host: str = "0.0.0.0"):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug(fmt, *args)

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render()
                self.send_response(200)
                self.send_header("content-type", metrics.content_type)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_metrics_server(metrics: GatewayMetrics, port: int | None) -> MetricsServer | None:
    """Serve `metrics` on `port` (None: not at all). A port already taken (a second replica on the node) is logged
    and skipped: the replica still serves, its metrics stay readable through the Serve port."""
    if port is None:
        return None
    try:
        return MetricsServer(metrics, port)
    except OSError as exc:
        logger.warning("gateway metrics port %d not available (%s): this replica is scraped through the Serve port "
                       "only (run at most one gateway replica per node)", port, exc.strerror or exc)
        return None

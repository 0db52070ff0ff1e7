"""The gateway's Prometheus metrics (conventional names, bounded label sets).

Labels: `model_group` (what the client asked for), `engine` (the deployment that answered), `endpoint`
(chat / completions) and `status_code`. Unknown model names are recorded as `model_group="unknown"` so a
client cannot blow up the label cardinality.
"""

from __future__ import annotations

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

    def render(self) -> bytes:
        """The Prometheus text exposition of this registry."""
        return generate_latest(self.registry)

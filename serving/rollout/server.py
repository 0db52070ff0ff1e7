"""The rollout controller's small HTTP server: `GET /healthz` (probes), `GET /metrics` (Prometheus) and
`POST /webhook` (MLflow webhooks).

MLflow (OSS, SQL backend) can POST registry events to a URL; with a secret it signs each delivery:
`X-MLflow-Signature: v1,<base64 HMAC-SHA256 of "<delivery id>.<timestamp>.<body>">`, with the id and timestamp in
`X-MLflow-Delivery-Id` / `X-MLflow-Timestamp`. A delivery with a valid signature and a fresh timestamp wakes the
controller at once (alias events); polling still runs, so a lost delivery only delays a rollout.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

logger = logging.getLogger("serving.rollout.server")

MAX_SKEW_S = 300.0
MAX_BODY = 1 << 20


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    """The `X-MLflow-Signature` value MLflow sends for this delivery."""
    mac = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(secret: str, headers: Any, body: str, now: float | None = None) -> str | None:
    """None if the delivery is authentic and fresh, else why not."""
    signature = headers.get("X-MLflow-Signature") or ""
    delivery_id = headers.get("X-MLflow-Delivery-Id") or ""
    timestamp = headers.get("X-MLflow-Timestamp") or ""
    if not (signature and delivery_id and timestamp):
        return "missing signature headers"
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return "bad timestamp"
    if age > MAX_SKEW_S:
        return f"timestamp {age:.0f} s off"
    if not hmac.compare_digest(signature, sign(secret, delivery_id, timestamp, body)):
        return "bad signature"
    return None


class _HealthCollector:
    """Exports the controller's health() at scrape time."""

    def __init__(self, health: Callable[[], dict[str, Any]], server: ControllerServer):
        self.health, self.server = health, server

    def collect(self) -> Any:
        h = self.health()
        yield GaugeMetricFamily("serving_rollout_controller_up",
                                "1 while the last controller tick succeeded, 0 after a failed one.",
                                value=1.0 if h.get("status") == "ok" else 0.0)
        yield GaugeMetricFamily("serving_rollout_last_tick_timestamp_seconds",
                                "Unix time of the controller's last tick (0: none yet).",
                                value=float(h.get("last_tick") or 0.0))
        yield CounterMetricFamily("serving_rollout_events", "Rollout events (steps, promotions, rollbacks, errors).",
                                  value=float(h.get("events") or 0))
        webhooks = CounterMetricFamily("serving_rollout_webhook_deliveries", "MLflow webhook deliveries by result.",
                                       labels=["result"])
        webhooks.add_metric(["accepted"], float(self.server.accepted))
        webhooks.add_metric(["rejected"], float(self.server.rejected))
        yield webhooks


class ControllerServer:
    """Serves /healthz and /webhook in a background thread; `wake` is called for accepted alias events."""

    def __init__(self, port: int, *, secret: str | None, wake: Callable[[], None],
                 health: Callable[[], dict[str, Any]], host: str = "0.0.0.0"):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt: str, *args: Any) -> None:
                logger.debug(fmt, *args)

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                path = self.path.split("?")[0]
                if path in ("/healthz", "/health"):
                    self._reply(200, health())
                elif path == "/metrics":
                    data = generate_latest(server.registry)
                    self.send_response(200)
                    self.send_header("content-type", CONTENT_TYPE_LATEST)
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/webhook":
                    return self._reply(404, {"error": "not found"})
                if secret is None:
                    return self._reply(404, {"error": "webhook disabled (no rollout.webhook_secret_env)"})
                length = int(self.headers.get("content-length") or 0)
                if length > MAX_BODY:
                    return self._reply(413, {"error": "body too large"})
                body = self.rfile.read(length).decode("utf-8", errors="replace")
                problem = verify(secret, self.headers, body)
                if problem:
                    server.rejected += 1
                    logger.warning("webhook delivery rejected: %s", problem)
                    return self._reply(401, {"error": problem})
                try:
                    event = json.loads(body)
                except ValueError:
                    return self._reply(400, {"error": "body is not JSON"})
                server.accepted += 1
                if event.get("entity") in ("model_version_alias", "model_version_tag", "model_version"):
                    wake()
                self._reply(200, {"status": "accepted"})

        self.accepted = 0
        self.rejected = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_HealthCollector(health, self))
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="rollout-http", daemon=True)

    def start(self) -> ControllerServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

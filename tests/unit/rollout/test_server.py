"""The controller's /healthz and the MLflow webhook endpoint: HMAC signatures as MLflow makes them."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx
import pytest
from mlflow.webhooks.delivery import _generate_hmac_signature

from serving.rollout.server import ControllerServer, sign, verify

SECRET = "whsec-test"


def test_signature_matches_mlflows_own() -> None:
    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {"name": "m"}})
    assert sign(SECRET, "d1", "1700000000", body) == _generate_hmac_signature(SECRET, "d1", "1700000000", body)


@pytest.fixture
def server():
    woken = threading.Event()
    srv = ControllerServer(0, secret=SECRET, wake=woken.set, health=lambda: {"status": "ok"}, host="127.0.0.1")
    srv.start()
    yield srv, woken, f"http://127.0.0.1:{srv.port}"
    srv.stop()


def delivery(body: str, *, secret: str = SECRET, ts: int | None = None) -> dict[str, str]:
    delivery_id, stamp = str(uuid.uuid4()), str(ts if ts is not None else int(time.time()))
    return {"content-type": "application/json", "X-MLflow-Delivery-Id": delivery_id, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(secret, delivery_id, stamp, body)}


def test_signed_alias_event_wakes_the_controller(server) -> None:
    srv, woken, url = server
    body = json.dumps({"entity": "model_version_alias", "action": "created",
                       "data": {"name": "chat", "alias": "challenger", "version": "3"}})
    resp = httpx.post(f"{url}/webhook", content=body, headers=delivery(body))
    assert resp.status_code == 200 and woken.is_set() and srv.accepted == 1
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(("make", "reason"), [
    (lambda b: delivery(b, secret="wrong"), "bad signature"),
    (lambda b: delivery(b, ts=int(time.time()) - 3600), "timestamp"),
    (lambda b: {"content-type": "application/json"}, "missing signature headers"),
    (lambda b: {**delivery(b), "X-MLflow-Delivery-Id": "other-id"}, "bad signature"),  # replayed under a new id
])
def test_unsigned_forged_or_stale_deliveries_are_refused(server, make, reason) -> None:
    srv, woken, url = server
    body = json.dumps({"entity": "model_version_alias", "action": "created", "data": {}})
    resp = httpx.post(f"{url}/webhook", content=body, headers=make(body))
    assert resp.status_code == 401 and reason in resp.json()["error"]
    assert not woken.is_set() and srv.rejected == 1


def test_tampered_body_is_refused() -> None:
    body = '{"entity": "model_version_alias"}'
    headers = delivery(body)
    assert verify(SECRET, headers, body) is None
    assert verify(SECRET, headers, body.replace("alias", "tag")) == "bad signature"


def test_webhook_off_without_a_secret() -> None:
    srv = ControllerServer(0, secret=None, wake=lambda: None, health=lambda: {}, host="127.0.0.1").start()
    try:
        resp = httpx.post(f"http://127.0.0.1:{srv.port}/webhook", content="{}")
        assert resp.status_code == 404 and "webhook disabled" in resp.json()["error"]
    finally:
        srv.stop()

"""A real `mlflow server` (sqlite backend) delivers its model-version-alias webhook to the controller's /webhook:
the signature MLflow computes is accepted, a webhook registered with another secret is refused."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from serving.rollout.server import ControllerServer

SECRET = "whsec-real-mlflow"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = _port()
    # MLflow refuses webhook URLs on private addresses and plain http unless told (an in-cluster controller needs both)
    env = {**os.environ, "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true", "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https"}
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    proc = subprocess.Popen([mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
                             "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1"],
                            env=env, stdout=(tmp_path / "mlflow.log").open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise AssertionError("mlflow server did not start:\n" + (tmp_path / "mlflow.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_mlflow_delivers_a_signed_alias_event(mlflow_server: str) -> None:
    woken = threading.Event()
    srv = ControllerServer(0, secret=SECRET, wake=woken.set, health=dict, host="127.0.0.1").start()
    try:
        client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
        hook = f"http://127.0.0.1:{srv.port}/webhook"
        client.create_webhook("controller", hook, ["model_version_alias.created"], secret=SECRET)
        client.create_webhook("impostor", hook, ["model_version_alias.created"], secret="not-the-secret")
        from serving.rollout.registry import Registry
        from serving.rollout.spec import parse_spec

        # registered the way `serving models register` does, against the real server's source validation
        spec = parse_spec({"engine": {"model": "builtin:tiny-llama", "device": "cpu"}})
        Registry(mlflow_server).register("chat", spec)
        client.set_registered_model_alias("chat", "challenger", "1")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (woken.is_set() and srv.rejected):
            time.sleep(0.2)
        assert woken.is_set() and srv.accepted == 1  # MLflow's own signature verified
        assert srv.rejected == 1  # the other secret's delivery
    finally:
        srv.stop()

"""`serving keys create --url <gateway>` from a plain (non-editable) install, where configs/ is not installed: the
CLI needs no local platform config to manage keys on a remote gateway (the chart's NOTES and docs/install.md)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

import serving.cli._common
import serving.config
from serving.cli import main


@pytest.fixture
def admin_api() -> Iterator[tuple[str, list[dict]]]:
    """A stand-in of the gateway's admin API (POST /admin/v1/keys) on localhost: records what the CLI sent."""
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
            out = json.dumps({"key": "sk-serving-new", "id": "key_1", "tenant": body["tenant"]}).encode()
            self.send_response(201)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", seen
    server.shutdown()


def test_keys_create_against_a_remote_gateway_without_local_config(admin_api, monkeypatch, tmp_path, capsys):
    url, seen = admin_api
    missing = Path(tmp_path / "not-installed" / "local.yaml")  # what a non-editable install has
    monkeypatch.setattr(serving.config, "DEFAULT_CONFIG", missing)
    monkeypatch.setattr(serving.cli._common, "DEFAULT_CONFIG", missing)
    monkeypatch.setenv("SERVING_ADMIN_KEY", "the-admin-credential")
    assert main(["keys", "create", "--tenant", "team-a", "--name", "first", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "sk-serving-new"
    assert seen == [{"path": "/admin/v1/keys", "auth": "Bearer the-admin-credential",
                     "body": {"tenant": "team-a", "name": "first"}}]


def test_keys_create_without_the_admin_credential_says_so(admin_api, monkeypatch, tmp_path, capsys):
    url, seen = admin_api
    missing = Path(tmp_path / "not-installed" / "local.yaml")  # what a non-editable install has
    monkeypatch.setattr(serving.config, "DEFAULT_CONFIG", missing)
    monkeypatch.setattr(serving.cli._common, "DEFAULT_CONFIG", missing)
    monkeypatch.delenv("SERVING_ADMIN_KEY", raising=False)
    assert main(["keys", "create", "--tenant", "team-a", "--url", url]) == 1
    assert "SERVING_ADMIN_KEY" in capsys.readouterr().err and not seen

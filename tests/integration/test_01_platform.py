"""The platform is up: models, liveness, readiness and `serving status` on the real stack."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.support import (
    ADMIT_ROUTE,
    AGENT_ROUTE,
    APP,
    CHAOS_CLOUD_ROUTE,
    EMBED_ENGINE,
    EMBED_GROUP,
    FAILOVER_ROUTE,
    JSON_ROUTE,
    LOAD_ROUTE,
    RESILIENT_ROUTE,
    SMOL_ENGINE,
    SMOL_GROUP,
    TINY_ENGINE,
    TINY_GROUP,
    Stack,
)

pytestmark = pytest.mark.integration


def test_models_lists_the_groups_and_the_routes(client: openai.OpenAI):
    models = {m.id: m for m in client.models.list()}
    assert set(models) == {TINY_GROUP, SMOL_GROUP, EMBED_GROUP, JSON_ROUTE, RESILIENT_ROUTE, LOAD_ROUTE,
                           ADMIT_ROUTE, CHAOS_CLOUD_ROUTE, FAILOVER_ROUTE, AGENT_ROUTE}
    assert all(m.object == "model" for m in models.values())
    assert client.models.retrieve(SMOL_GROUP).id == SMOL_GROUP
    assert models[TINY_GROUP].model_extra["engines"] == [TINY_ENGINE]
    assert models[SMOL_GROUP].model_extra["engines"] == [SMOL_ENGINE]
    assert models[EMBED_GROUP].model_extra["engines"] == [EMBED_ENGINE]


def test_health(http: httpx.Client):
    resp = http.get("/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}


def test_ready_reports_every_engine(http: httpx.Client):
    resp = http.get("/ready")
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "ready",
                           "engines": {TINY_ENGINE: "ready", SMOL_ENGINE: "ready", EMBED_ENGINE: "ready"}}


def test_serving_status(stack: Stack):
    proc = stack.cli("status", "--config", str(stack.config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"platform {APP}: RUNNING"), proc.stdout
    assert "+ 3 engine app(s)" in lines[0]
    for deployment in (f"engine-{TINY_ENGINE}", f"engine-{SMOL_ENGINE}", f"engine-{EMBED_ENGINE}", "gateway"):
        line = next((ln for ln in lines if ln.split()[:1] == [deployment]), None)
        assert line is not None, f"{deployment} missing from:\n{proc.stdout}"
        assert line.split()[1:] == ["HEALTHY", "RUNNING=1"], line
    assert any(ln.startswith(f"gateway {stack.url}: ready") for ln in lines), proc.stdout

"""GET /openapi.json: the gateway's OpenAPI 3.1 document (serving.api.openapi), and schemathesis over it.

The document is validated by schemathesis against the OpenAPI 3.1 schema, its `model` enum checked against the
served model groups and routes, and a short fuzz run (tests/support/fuzz.py: schemathesis's Python API over the
ASGI app, fake engines) asserts no 5xx, every error in the envelope and the answers as documented. What fuzzing
found has targeted tests in test_gateway_api.py.
"""
# ruff: noqa: F811  (the env / redis_server fixtures are imported from test_policies)

from __future__ import annotations

from typing import Any

import httpx
import schemathesis

from serving.api.server import build_api
from serving.config import GatewayConfig, ModelGroupConfig, ProviderConfig, RouteConfig, TierConfig
from serving.routing.groups import GroupRouter
from serving.routing.resilience import TierDown
from tests.support import fuzz
from tests.support.fakes import FakeEngine
from tests.unit.policy.test_policies import env, redis_server  # noqa: F401  (fixtures)

GROUP, ROUTE, ENGINES = "smollm2", "auto", ("smollm2-v1", "smollm2-v2")
PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}", "/health", "/ready"}
# Per operation and generation mode (positive: valid per the document; negative: invalid); 6 operations.
EXAMPLES = 40


def no_key(name: str, provider: ProviderConfig, tier: TierConfig) -> Any:
    raise TierDown(f"tier {name}: the API key variable OPENAI_API_KEY is not set")


def routing(**more: dict[str, Any]) -> tuple[Any, ...]:
    """(providers, tiers, routes, tenants): the route `auto`, shaped like the embedded default's (a gated local tier
    on the group, then a cloud tier that cannot run: no API key), and `more` routes."""
    tiers = {"local": TierConfig(model_group=GROUP), "cloud": TierConfig(provider="openai", model="gpt-4o-mini")}
    routes = {ROUTE: {"tiers": ["local", "cloud"], "gates": {"json": {}, "empty": {}}}, **more}
    return ({"openai": ProviderConfig(kind="openai")}, tiers,
            {n: RouteConfig.model_validate(r) for n, r in routes.items()}, {})


def make_app() -> Any:
    """A gateway with a two-engine model group and the route `auto`."""
    engines = {name: FakeEngine(name) for name in ENGINES}
    group = ModelGroupConfig.model_validate({"engines": list(ENGINES)})
    app = build_api(GroupRouter(engines, {GROUP: group}), GatewayConfig(health_interval_s=0), cloud_factory=no_key)
    app.state.gateway.update_routing(*routing())
    return app


async def fetch_document(app: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        resp = await http.get("/openapi.json", headers=headers)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    return resp.json()


def model_enums(doc: dict[str, Any]) -> list[list[str] | None]:
    """The `model` enum of both request bodies and of GET /v1/models/{model} (None where there is none)."""
    schemas = doc["components"]["schemas"]
    path_param = doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["schema"]
    return [schemas[n]["properties"]["model"].get("enum") for n in ("ChatCompletionRequest", "CompletionRequest")] \
        + [path_param.get("enum")]


# -- the document ------------------------------------------------------------------------------------------------


async def test_document_is_valid_openapi_31_with_the_subset():
    app = make_app()
    doc = await fetch_document(app)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == PATHS
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 schema; raises on an invalid document
    assert len(schema) == len(PATHS)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "404", "429", "503"} <= set(chat) and "401" not in chat  # API keys off: no 401
    assert chat["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "every tier" in chat["503"]["description"].lower()
    assert "security" not in doc


async def test_model_enum_lists_the_served_groups_and_routes_at_request_time():
    app = make_app()
    doc = await fetch_document(app)
    assert model_enums(doc) == [[GROUP, ROUTE]] * 3
    overrides = doc["components"]["schemas"]["RequestOverrides"]["properties"]
    assert overrides["route"]["anyOf"][0]["enum"] == [ROUTE]
    assert overrides["engine"]["anyOf"][0]["enum"] == list(ENGINES)

    app.state.gateway.update_routing(*routing(fast={"tiers": ["local"]}))
    assert model_enums(await fetch_document(app)) == [[GROUP, ROUTE, "fast"]] * 3


async def test_with_api_keys_the_document_names_what_the_key_may_use(env):
    e = env(tenants={"acme": {"models": ["cloud-only"]}, "beta": {}})
    anonymous = await fetch_document(e.a.app)
    assert anonymous["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key of the gateway's policies."}
    assert anonymous["security"] == [{"bearer": []}]
    assert anonymous["paths"]["/health"]["get"]["security"] == []
    assert "401" in anonymous["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert model_enums(anonymous) == [None] * 3  # no names for a caller without a valid key
    acme = await fetch_document(e.a.app, {"authorization": f"Bearer {await e.a.new_key('acme')}"})
    assert model_enums(acme) == [["cloud-only"]] * 3
    beta = await fetch_document(e.a.app, {"authorization": f"Bearer {await e.a.new_key('beta')}"})
    assert set(model_enums(beta)[0] or []) == {"tiny", "cloud-only", "private", "private-block"}


# -- schemathesis over the ASGI app ------------------------------------------------------------------------------


def test_fuzz_no_server_errors_and_every_error_in_the_envelope():
    """Each operation, positive and negative cases: every answer as documented (status, content type, schema),
    no 5xx, every error in the envelope; the valid cases reach the model group and the route on both endpoints."""
    report = fuzz.run(schemathesis.openapi.from_asgi("/openapi.json", make_app()), EXAMPLES, timeout=10)
    assert report.requests >= 4 * EXAMPLES, report.statuses  # at least the two POSTs, both modes
    assert not [s for (_, s) in report.statuses if s >= 500], report.statuses
    assert {(p, m) for p in ("/v1/chat/completions", "/v1/completions") for m in (GROUP, ROUTE)} <= report.served

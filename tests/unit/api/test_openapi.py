"""GET /openapi.json: the gateway's OpenAPI 3.1 document (serving.api.openapi), and schemathesis over it.

The document is validated by schemathesis against the OpenAPI 3.1 schema, its `model` enums checked against the
served model groups and routes (embedding groups on /v1/embeddings, the others and the routes elsewhere), and two
short fuzz runs (tests/support/fuzz.py: schemathesis's Python API over the ASGI app, fake engines, a fake response
store) assert no 5xx, every error in its endpoint's envelope and the answers as documented: one over the OpenAI
completions, models and probes, one (strict: the schemas honest to the parsers) over embeddings, the Responses API
and the Anthropic Messages API. What fuzzing found has targeted tests in test_gateway_api.py, test_agents_gateway.py
and test_messages_edge.py.
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
from tests.support.response_store_fake import FakeResponseStore
from tests.unit.policy.test_policies import env, redis_server  # noqa: F401  (fixtures)

GROUP, ROUTE, ENGINES = "smollm2", "auto", ("smollm2-v1", "smollm2-v2")
EMBED, EMBED_ENGINE = "minilm", "minilm-v1"  # an embedding model group
OPENAI_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model}", "/health", "/ready"}
AGENT_PATHS = {"/v1/embeddings", "/v1/responses", "/v1/responses/{response_id}", "/v1/messages"}
PATHS = OPENAI_PATHS | AGENT_PATHS
OPERATIONS = len(PATHS) + 1  # /v1/responses/{response_id}: GET and DELETE
# Per operation and generation mode (positive: valid per the document; negative: invalid): the OpenAI operations
# (6), and the agent ones (5; their bodies are larger).
EXAMPLES, AGENT_EXAMPLES = 40, 15
# The positive cases a schema cannot keep valid, by operation: the field the 400 names starts with one of these.
# Rules across fields (in the descriptions): a named or required tool choice needs tools, tool names are unique, a
# tool_result answers a tool_use of the turn before (and each tool_use gets one), thinking alone is no message,
# `serving.engine` is for model groups, a judge gate names a configured tier; and a JSON schema in a request must
# be valid per its metaschema (the document names its common keywords, and lets the others be).
CROSS_FIELD = {
    "POST /v1/responses": ("tool_choice", "tools[N].name", "tools[N].parameters", "text.format.schema", "serving"),
    "POST /v1/messages": ("tool_choice", "tools.N.name", "tools.N.input_schema", "output_config.format.schema",
                          "messages", "serving.engine", "Invalid 'serving' overrides"),
}


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
    """A gateway with a two-engine model group, an embedding model group, the route `auto`, and a (fake) response
    store."""
    engines = {name: FakeEngine(name) for name in (*ENGINES, EMBED_ENGINE)}
    groups = {GROUP: ModelGroupConfig.model_validate({"engines": list(ENGINES)}),
              EMBED: ModelGroupConfig.model_validate({"engines": [EMBED_ENGINE]})}
    app = build_api(GroupRouter(engines, groups), GatewayConfig(health_interval_s=0), cloud_factory=no_key)
    gateway = app.state.gateway
    gateway.update_routing(*routing(), embedding_groups=[EMBED])
    store = FakeResponseStore()
    gateway.responses_store = lambda: store  # as with policies.redis
    return app


async def fetch_document(app: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
        resp = await http.get("/openapi.json", headers=headers)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    return resp.json()


CHAT_BODIES = ("ChatCompletionRequest", "CompletionRequest", "ResponsesRequest", "MessagesRequest")


def model_enums(doc: dict[str, Any]) -> list[list[str] | None]:
    """The `model` enum of the chat request bodies (chat and text completions, responses, messages) and of GET
    /v1/models/{model} (None where there is none)."""
    schemas = doc["components"]["schemas"]
    path_param = doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["schema"]
    return [schemas[n]["properties"]["model"].get("enum") for n in CHAT_BODIES] + [path_param.get("enum")]


def embedding_enums(doc: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """The `model` enum of the embeddings body and the `serving.engine` enum of its extension field."""
    schemas = doc["components"]["schemas"]
    engine = schemas["EmbeddingOverrides"]["properties"]["engine"]
    return schemas["EmbeddingRequest"]["properties"]["model"].get("enum"), \
        engine["anyOf"][0].get("enum") if "enum" in engine["anyOf"][0] else None


# -- the document ------------------------------------------------------------------------------------------------


async def test_document_is_valid_openapi_31_with_the_subset():
    app = make_app()
    doc = await fetch_document(app)
    assert doc["openapi"] == "3.1.0"
    assert set(doc["paths"]) == PATHS
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 schema; raises on an invalid document
    assert len(schema) == OPERATIONS
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert set(chat["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "404", "429", "503"} <= set(chat) and "401" not in chat  # API keys off: no 401
    assert chat["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert "every tier" in chat["503"]["description"].lower()
    assert "security" not in doc


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


async def test_document_covers_embeddings_responses_and_messages():
    doc = await fetch_document(make_app())
    paths = doc["paths"]
    assert set(paths["/v1/responses/{response_id}"]) == {"get", "delete"}
    for path, method, body, answer, events, envelope in (
        ("/v1/embeddings", "post", "EmbeddingRequest", "EmbeddingList", None, "ErrorResponse"),
        ("/v1/responses", "post", "ResponsesRequest", "ResponseObject", "ResponsesStreamEvent", "ErrorResponse"),
        ("/v1/messages", "post", "MessagesRequest", "AnthropicMessage", "MessagesStreamEvent", "AnthropicError"),
        ("/v1/responses/{response_id}", "get", None, "ResponseObject", None, "ErrorResponse"),
        ("/v1/responses/{response_id}", "delete", None, "ResponseDeleted", None, "ErrorResponse"),
    ):
        op = paths[path][method]
        if body is not None:
            assert op["requestBody"]["content"]["application/json"]["schema"] == ref(body)
        ok = op["responses"]["200"]["content"]
        assert ok["application/json"]["schema"] == ref(answer)
        assert (ok["text/event-stream"]["schema"] if events else None) == (ref(events) if events else None)
        assert set(ok) == ({"application/json", "text/event-stream"} if events else {"application/json"})
        errors = {s: r for s, r in op["responses"].items() if s != "200"}
        assert "400" in errors and "404" in errors and "401" not in errors  # API keys off: no 401
        assert all(r["content"]["application/json"]["schema"] == ref(envelope) for r in errors.values()), path
    assert "store_not_configured" in paths["/v1/responses/{response_id}"]["get"]["responses"]["400"]["description"]
    assert "model_not_embedding" in paths["/v1/embeddings"]["post"]["responses"]["400"]["description"]
    schemas = doc["components"]["schemas"]
    assert schemas["ModelCard"]["properties"]["task"]["enum"] == ["chat", "embeddings"]
    assert schemas["AnthropicError"]["properties"]["type"] == {"const": "error", "type": "string"}
    for name in ("EmbeddingRequest", "ResponsesRequest", "MessagesRequest"):  # the parsers refuse other fields
        assert schemas[name]["additionalProperties"] is False, name
    assert {"thinking", "service_tier"} <= set(schemas["MessagesRequest"]["properties"])  # accepted, ignored
    assert schemas["MessagesRequest"]["required"] == ["model", "max_tokens", "messages"]
    assert schemas["ResponsesRequest"]["required"] == ["model", "input"]


async def test_model_enum_lists_the_served_groups_and_routes_at_request_time():
    app = make_app()
    doc = await fetch_document(app)
    assert model_enums(doc) == [[GROUP, ROUTE]] * 4 + [[GROUP, EMBED, ROUTE]]
    assert embedding_enums(doc) == ([EMBED], [EMBED_ENGINE])
    overrides = doc["components"]["schemas"]["RequestOverrides"]["properties"]
    assert overrides["route"]["anyOf"][0]["enum"] == [ROUTE]
    assert overrides["engine"]["anyOf"][0]["enum"] == list(ENGINES)

    app.state.gateway.update_routing(*routing(fast={"tiers": ["local"]}))
    assert model_enums(await fetch_document(app)) == [[GROUP, ROUTE, "fast"]] * 4 + [[GROUP, EMBED, ROUTE, "fast"]]
    app.state.gateway.update_routing(*routing(), embedding_groups=[])  # no embedding group: every group chats
    doc = await fetch_document(app)
    assert model_enums(doc) == [[GROUP, EMBED, ROUTE]] * 5
    assert embedding_enums(doc) == (None, None)


async def test_with_api_keys_the_document_names_what_the_key_may_use(env):
    e = env(tenants={"acme": {"models": ["cloud-only"]}, "beta": {}})
    anonymous = await fetch_document(e.a.app)
    assert anonymous["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "An API key of the gateway's policies."}
    assert anonymous["security"] == [{"bearer": []}]
    assert anonymous["paths"]["/health"]["get"]["security"] == []
    assert "401" in anonymous["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "401" in anonymous["paths"]["/v1/responses/{response_id}"]["get"]["responses"]
    assert model_enums(anonymous) == [None] * 5  # no names for a caller without a valid key
    assert embedding_enums(anonymous) == (None, None)
    acme = await fetch_document(e.a.app, {"authorization": f"Bearer {await e.a.new_key('acme')}"})
    assert model_enums(acme) == [["cloud-only"]] * 5
    beta = await fetch_document(e.a.app, {"authorization": f"Bearer {await e.a.new_key('beta')}"})
    assert set(model_enums(beta)[0] or []) == {"tiny", "cloud-only", "private", "private-block"}


# -- schemathesis over the ASGI app ------------------------------------------------------------------------------


def test_fuzz_no_server_errors_and_every_error_in_the_envelope():
    """Each OpenAI operation, positive and negative cases: every answer as documented (status, content type,
    schema), no 5xx, every error in the envelope; the valid cases reach the model group and the route on both
    endpoints."""
    report = fuzz.run(schemathesis.openapi.from_asgi("/openapi.json", make_app()), EXAMPLES, timeout=10,
                      paths=OPENAI_PATHS)
    assert report.requests >= 4 * EXAMPLES, report.statuses  # at least the two POSTs, both modes
    assert {op.split()[1] for op, _ in report.statuses} == OPENAI_PATHS
    assert not [s for (_, s) in report.statuses if s >= 500], report.statuses
    assert {(p, m) for p in ("/v1/chat/completions", "/v1/completions") for m in (GROUP, ROUTE)} <= report.served


def test_fuzz_the_agent_endpoints_strictly():
    """Embeddings, the Responses API (create, get, delete) and the Anthropic Messages API, positive and negative
    cases: every answer as documented (streams event by event), no 5xx, every error in its endpoint's envelope
    (Anthropic's on /v1/messages), no invalid case accepted, and no valid one refused but by a rule across fields;
    the valid cases reach the embedding group, and the chat group and the route on both chat endpoints."""
    report = fuzz.run(schemathesis.openapi.from_asgi("/openapi.json", make_app()), AGENT_EXAMPLES, timeout=10,
                      paths=AGENT_PATHS, strict=True)
    assert {op.split()[1] for op, _ in report.statuses} == AGENT_PATHS
    assert report.requests >= 6 * AGENT_EXAMPLES, report.statuses  # at least the three POSTs, both modes
    assert not [s for (_, s) in report.statuses if s >= 500], report.statuses
    assert report.served >= {("/v1/embeddings", EMBED), *((p, m) for p in ("/v1/responses", "/v1/messages")
                                                           for m in (GROUP, ROUTE))}, report.served
    assert {("GET /v1/responses/{response_id}", 404), ("DELETE /v1/responses/{response_id}", 404)} <= set(
        report.statuses)  # the store was reached: no stored response by a generated id
    unexplained = [(op, f) for op, f in report.refused if not f.startswith(CROSS_FIELD.get(op, ()))]
    assert not unexplained, report.refused

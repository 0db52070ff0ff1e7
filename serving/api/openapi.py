"""The gateway's OpenAPI 3.1 document (`GET /openapi.json`): the OpenAI-compatible subset it implements.

The document is built per request from the live gateway: `model` (and `GET /v1/models/{model}`) lists the model
groups and routes served now that the caller may use (on `POST /v1/embeddings` the embedding model groups, on the
other inference endpoints the other groups and the routes), `serving.route` the routes and `serving.engine` the
engines of the groups, so a client or a fuzzer reaches real models. With API keys on, the bearer scheme is
documented and a caller without a valid key gets the document without the names (`Served` with none).

Besides OpenAI's chat and text completions it documents the agent endpoints (models in serving.api.openapi_agents):
embeddings, the Responses API (with stored responses by id) and the Anthropic Messages API, whose errors are in
Anthropic's envelope.
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic.json_schema import models_json_schema

from serving.api import openapi_agents as agents
from serving.api.openapi_models import REQUESTS, RESPONSES
from serving.config import PRIORITIES

REF = "#/components/schemas/{model}"
JSON = "application/json"
SSE = "text/event-stream"


@dataclass(frozen=True)
class Served:
    """What the document names: the gateway's groups, routes and engines, and how callers identify."""

    groups: tuple[str, ...] = ()
    routes: tuple[str, ...] = ()
    engines: tuple[str, ...] = ()
    auth: bool = False
    tenant_header: str = "x-serving-tenant"
    priority_header: str = "x-serving-priority"
    max_body_bytes: int = 8 * 1024 * 1024
    root_path: str = ""
    embedding_groups: tuple[str, ...] = ()  # those of `groups` that answer only POST /v1/embeddings
    embedding_engines: tuple[str, ...] = ()  # the engines of those groups

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.groups, *self.routes)))  # a route may share a group's name

    @property
    def chat_models(self) -> tuple[str, ...]:
        """The names the chat endpoints take: the routes and the groups but the embedding ones."""
        embedding = set(self.embedding_groups) - set(self.routes)
        return tuple(m for m in self.models if m not in embedding)

    @property
    def chat_engines(self) -> tuple[str, ...]:
        return tuple(e for e in self.engines if e not in self.embedding_engines)


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("serving")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


@functools.cache
def _schemas() -> dict[str, Any]:
    """components.schemas: every request and response model (the doc's pydantic models, and their parts)."""
    models = (*REQUESTS, *RESPONSES, *agents.REQUESTS, *agents.RESPONSES)
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    return _without_null_defaults(defs["$defs"])


def _without_null_defaults(schema: Any) -> Any:
    """The schema without `"default": null` (a field left out takes the engine's default) and titles."""
    if isinstance(schema, dict):
        return {k: _without_null_defaults(v) for k, v in schema.items()
                if not (k == "default" and v is None) and not (k == "title" and isinstance(v, str))}
    if isinstance(schema, list):
        return [_without_null_defaults(v) for v in schema]
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(name)}}}


MEANING = {  # what each error status means on the inference endpoints
    400: "Invalid request: a field's type or range, an unknown engine, a context window exceeded.",
    401: "Missing or invalid API key.",
    403: "The tenant may not use this model, or a kill switch is on.",
    404: "No such model group or route.",
    413: "The request body is too large.",
    422: "Routes with `on_exhausted: error`: no tier's answer passed the quality gates.",
    429: "A rate limit, quota, budget or admission bound (see retry-after).",
    502: "The engine failed while serving the request.",
    503: "Every tier (engine) of the model group or route is unavailable now (see retry-after), or the "
         "policy store is unreachable.",
    504: "No answer within the request's deadline.",
}


def _errors(*statuses: int, auth: bool, envelope: str = "ErrorResponse", notes: dict[int, str] | None = None
            ) -> dict[str, Any]:
    """Error responses (in the OpenAI `envelope`, or an endpoint's own) of an operation, with what each status means
    here (`notes`: the endpoint's own meanings)."""
    meaning = {**MEANING, **(notes or {})}
    return {str(s): _json(envelope, meaning[s]) for s in statuses if s != 401 or auth}


def _model_param(names: tuple[str, ...]) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if names:
        schema["enum"] = list(names)
    return schema


def _headers(served: Served) -> list[dict[str, Any]]:
    params = [{"name": served.priority_header, "in": "header", "required": False,
               "description": "Admission class (any case); it can only lower the tenant's. Empty: the tenant's.",
               "schema": {"type": "string", "enum": [*PRIORITIES, ""]}}]
    if not served.auth:
        params.append({"name": served.tenant_header, "in": "header", "required": False,
                       "description": "The tenant (API keys off).", "schema": {"type": "string"}})
    return params


def _request_schema(name: str, models: tuple[str, ...]) -> dict[str, Any]:
    """A request body's schema, its `model` narrowed to the names served now (`models`)."""
    schema = copy.deepcopy(_schemas()[name])
    schema["properties"]["model"] = {**schema["properties"]["model"], **_model_param(models)}
    return schema


def _overrides(name: str, routes: tuple[str, ...], engines: tuple[str, ...]) -> dict[str, Any]:
    """The `serving` extension field's schema `name`, its `route` and `engine` narrowed to the names served now."""
    schema = copy.deepcopy(_schemas()[name])
    props = schema["properties"]
    for key, names in (("route", routes), ("engine", engines)):
        if names and key in props:
            props[key] = {**props[key], "anyOf": [{"type": "string", "enum": list(names)}, {"type": "null"}]}
    return schema


def _operation(served: Served, summary: str, request: str, answer: str, stream: str | None, *statuses: int,
               envelope: str = "ErrorResponse", notes: dict[int, str] | None = None) -> dict[str, Any]:
    """A POST inference operation: its body (`request`), its answer (and with `stream: true` the `stream` events)."""
    if stream is None:
        ok = _json(answer, "The answer.")
    else:
        ok = _json(answer, "The answer, or with `stream: true` server-sent events (the schema is each event's).")
        ok["content"][SSE] = {"schema": _ref(stream)}
    return {
        "summary": summary,
        "parameters": _headers(served),
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {"200": ok, **_errors(*statuses, auth=served.auth, envelope=envelope, notes=notes)},
    }


CHAT_ERRORS = (400, 401, 403, 404, 413, 422, 429, 502, 503, 504)


def _inference(served: Served, summary: str, request: str, answer: str) -> dict[str, Any]:
    return _operation(served, summary, request, answer, "StreamEvent", *CHAT_ERRORS)


def _agents_ops(served: Served) -> dict[str, Any]:
    """POST /v1/embeddings, the Responses API and the Anthropic Messages API."""
    stored = {400: "No response store on this gateway (`store_not_configured`: it needs policies.redis).",
              404: "No stored response of this tenant with this id (unknown, expired or deleted).",
              503: "The response store is unreachable (`store_unavailable`)."}
    by_id = [{"name": "response_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}},
             *(p for p in _headers(served) if p["name"] == served.tenant_header)]  # a tenant's stored responses
    errors = _errors(400, 401, 404, 503, auth=served.auth, notes=stored)
    responses = _operation(
        served, "Create a response (OpenAI Responses API)", "ResponsesRequest", "ResponseObject",
        "ResponsesStreamEvent", *CHAT_ERRORS, notes={
            400: f"{MEANING[400]} `previous_response_id` on a gateway without a response store "
                 "(`store_not_configured`).",
            404: "No such model group or route, or no stored response `previous_response_id` of this tenant.",
            503: f"{MEANING[503]} Or the response store is unreachable (`store_unavailable`)."})
    return {
        "/v1/embeddings": {"post": _operation(
            served, "Embeddings", "EmbeddingRequest", "EmbeddingList", None, 400, 401, 403, 404, 413, 429, 502, 503,
            504, notes={400: "Invalid request: a field's type or range, an unknown engine, a model that is not an "
                             "embedding model group (`model_not_embedding`)."})},
        "/v1/responses": {"post": responses},
        "/v1/responses/{response_id}": {
            "get": {"summary": "A stored response", "parameters": by_id,
                    "responses": {"200": _json("ResponseObject", "The response."), **errors}},
            "delete": {"summary": "Delete a stored response", "parameters": by_id,
                       "responses": {"200": _json("ResponseDeleted", "Deleted."), **errors}},
        },
        "/v1/messages": {"post": _operation(
            served, "Create a message (Anthropic Messages API)", "MessagesRequest", "AnthropicMessage",
            "MessagesStreamEvent", *CHAT_ERRORS, envelope="AnthropicError")},
    }


def _models_ops(served: Served) -> dict[str, Any]:
    errors = _errors(401, auth=served.auth)
    return {
        "/v1/models": {"get": {"summary": "The model groups and routes the caller may use",
                               "responses": {"200": _json("ModelList", "The models."), **errors}}},
        "/v1/models/{model}": {"get": {
            "summary": "One model group or route",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": _model_param(served.models)}],
            "responses": {"200": _json("ModelCard", "The model."), **errors,
                          **_errors(404, auth=served.auth)},
        }},
    }


def _probes() -> dict[str, Any]:
    public: list[Any] = []  # no credentials needed
    return {
        "/health": {"get": {"summary": "Liveness", "security": public,
                            "responses": {"200": _json("Health", "The gateway is up.")}}},
        "/ready": {"get": {"summary": "Readiness", "security": public, "responses": {
            "200": _json("Readiness", "Every model group has a ready engine."),
            "503": _json("Readiness", "Not ready: some model group has no ready engine (the probe's body, "
                                      "not the error envelope)."),
        }}},
    }


def document(served: Served) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a gateway serving `served`."""
    chat = served.chat_models
    schemas = {**_schemas(), **{name: _request_schema(name, chat) for name in (
                   "ChatCompletionRequest", "CompletionRequest", "ResponsesRequest", "MessagesRequest")},
               "EmbeddingRequest": _request_schema("EmbeddingRequest", served.embedding_groups),
               "RequestOverrides": _overrides("RequestOverrides", served.routes, served.chat_engines),
               "EmbeddingOverrides": _overrides("EmbeddingOverrides", (), served.embedding_engines)}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "serving gateway", "version": _version(),
                 "description": "The OpenAI-compatible subset this gateway implements, and the Anthropic Messages "
                                "API; `model` names its model groups and routes. Request bodies are limited to "
                                f"{served.max_body_bytes} bytes."},
        "paths": {
            "/v1/chat/completions": {"post": _inference(served, "Chat completion", "ChatCompletionRequest",
                                                        "ChatCompletion")},
            "/v1/completions": {"post": _inference(served, "Text completion", "CompletionRequest",
                                                   "TextCompletion")},
            **_agents_ops(served),
            **_models_ops(served),
            **_probes(),
        },
        "components": {"schemas": schemas},
    }
    if served.root_path:
        doc["servers"] = [{"url": served.root_path}]
    if served.auth:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer",
                                                           "description": "An API key of the gateway's policies."}}
        doc["security"] = [{"bearer": []}]
    return doc


def engines_of(groups: Iterable[Any]) -> tuple[str, ...]:
    """The engine names of model groups (each group's `engines`), in order, once each."""
    return tuple(dict.fromkeys(e.name for g in groups for e in g.engines))

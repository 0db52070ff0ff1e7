"""The gateway's OpenAPI 3.1 document (`GET /openapi.json`): the OpenAI-compatible subset it implements.

The document is built per request from the live gateway: `model` (and `GET /v1/models/{model}`) lists the model
groups and routes served now that the caller may use, `serving.route` the routes and `serving.engine` the engines
of the groups, so a client or a fuzzer reaches real models. With API keys on, the bearer scheme is documented and
a caller without a valid key gets the document without the names (`Served` with none).
"""

from __future__ import annotations

import copy
import functools
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pydantic.json_schema import models_json_schema

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

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.groups, *self.routes)))  # a route may share a group's name


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("serving")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a source tree
        return "0"


@functools.cache
def _schemas() -> dict[str, Any]:
    """components.schemas: every request and response model (the doc's pydantic models, and their parts)."""
    _, defs = models_json_schema([(m, "validation") for m in (*REQUESTS, *RESPONSES)], ref_template=REF)
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


def _errors(*statuses: int, auth: bool) -> dict[str, Any]:
    """Error responses (the OpenAI envelope) of an operation, with what each status means here."""
    meaning = {
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
    return {str(s): _json("ErrorResponse", meaning[s]) for s in statuses if s != 401 or auth}


def _model_param(served: Served) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "minLength": 1}
    if served.models:
        schema["enum"] = list(served.models)
    return schema


def _headers(served: Served) -> list[dict[str, Any]]:
    params = [{"name": served.priority_header, "in": "header", "required": False,
               "description": "Admission class; it can only lower the tenant's.",
               "schema": {"type": "string", "enum": list(PRIORITIES)}}]
    if not served.auth:
        params.append({"name": served.tenant_header, "in": "header", "required": False,
                       "description": "The tenant (API keys off).", "schema": {"type": "string"}})
    return params


def _request_schema(name: str, served: Served) -> dict[str, Any]:
    """A request body's schema, its `model` (and the `serving` names) narrowed to what is served now."""
    schema = copy.deepcopy(_schemas()[name])
    schema["properties"]["model"] = {**schema["properties"]["model"], **_model_param(served)}
    return schema


def _overrides(served: Served) -> dict[str, Any]:
    schema = copy.deepcopy(_schemas()["RequestOverrides"])
    props = schema["properties"]
    for key, names in (("route", served.routes), ("engine", served.engines)):
        if names:
            props[key] = {**props[key], "anyOf": [{"type": "string", "enum": list(names)}, {"type": "null"}]}
    return schema


def _inference(served: Served, summary: str, request: str, answer: str) -> dict[str, Any]:
    ok = _json(answer, "The answer, or with `stream: true` server-sent events (the schema is each event's).")
    ok["content"][SSE] = {"schema": _ref("StreamEvent")}
    return {
        "summary": summary,
        "parameters": _headers(served),
        "requestBody": {"required": True, "content": {JSON: {"schema": _ref(request)}}},
        "responses": {"200": ok, **_errors(400, 401, 403, 404, 413, 422, 429, 502, 503, 504, auth=served.auth)},
    }


def _models_ops(served: Served) -> dict[str, Any]:
    errors = _errors(401, auth=served.auth)
    return {
        "/v1/models": {"get": {"summary": "The model groups and routes the caller may use",
                               "responses": {"200": _json("ModelList", "The models."), **errors}}},
        "/v1/models/{model}": {"get": {
            "summary": "One model group or route",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": _model_param(served)}],
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
    schemas = {**_schemas(), "ChatCompletionRequest": _request_schema("ChatCompletionRequest", served),
               "CompletionRequest": _request_schema("CompletionRequest", served),
               "RequestOverrides": _overrides(served)}
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "serving gateway", "version": _version(),
                 "description": "The OpenAI-compatible subset this gateway implements; `model` names its model "
                                f"groups and routes. Request bodies are limited to {served.max_body_bytes} bytes."},
        "paths": {
            "/v1/chat/completions": {"post": _inference(served, "Chat completion", "ChatCompletionRequest",
                                                        "ChatCompletion")},
            "/v1/completions": {"post": _inference(served, "Text completion", "CompletionRequest",
                                                   "TextCompletion")},
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

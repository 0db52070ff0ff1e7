"""Request parsing: raw JSON -> validated vLLM/OpenAI protocol objects, or a 400 in the envelope.

vLLM's protocol models (re-exported by Ray Serve LLM) are the wire types the engines take; they are
lenient about some inputs OpenAI rejects, so the checks OpenAI makes up front are done here first.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
from pydantic import BaseModel, Field, ValidationError
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest

try:  # vLLM's own request checks (e.g. tool_choice without tools) raise these; in vLLM 0.32 not ValueErrors
    from vllm.exceptions import VLLMClientError
except ImportError:  # pragma: no cover - vLLM without it raised ValueError
    VLLMClientError = ValueError  # type: ignore[misc,assignment]

from serving.api.errors import APIError
from serving.config import GatesConfig, RouteConfig, StrictModel

MAX_TOKEN_ID = 2**31 - 1
"""Largest token id a prompt may carry (vocabularies are far smaller; larger ids crash the engine, not a 400)."""

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    if not raw:
        raise APIError(400, "The request body is empty; expected a JSON object.")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise APIError(400, f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise APIError(400, f"The request body must be a JSON object, not {type(body).__name__}.")
    return body


def drop_nulls(body: dict[str, Any]) -> dict[str, Any]:
    """The body without top-level `null`s: in the OpenAI API a null field takes its default, and some of vLLM's
    fields are not nullable (the completions `n`: a 400 otherwise)."""
    return {k: v for k, v in body.items() if v is not None}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> None:
    value = body.get(key)
    if value is None:
        return
    if isinstance(value, float) and value.is_integer():  # JSON has no integer type: 2.0 is 2 (as for vLLM)
        value = body[key] = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise APIError(400, f"'{key}' must be an integer, got {json.dumps(value)}.", param=key)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise APIError(400, f"'{key}' must be {bound}, got {value}.", param=key, code="invalid_value")


def _check_range(body: dict[str, Any], key: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    value = body.get(key)
    if value is None:
        return
    if not _is_number(value):
        raise APIError(400, f"'{key}' must be a number, got {json.dumps(value)}.", param=key)
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise APIError(400, f"'{key}' must be in {left}{lo}, {hi}], got {value}.", param=key, code="invalid_value")


def _check_common(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise APIError(400, "you must provide a model parameter", param="model", code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise APIError(400, "'model' must be a non-empty string.", param="model")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise APIError(400, "'stream' must be a boolean.", param="stream")
    _check_int(body, "max_tokens", 1)
    _check_int(body, "max_completion_tokens", 1)
    _check_int(body, "n", 1, 128)
    _check_range(body, "temperature", 0.0, 2.0)
    _check_range(body, "top_p", 0.0, 1.0, lo_open=True)
    _check_range(body, "presence_penalty", -2.0, 2.0)
    _check_range(body, "frequency_penalty", -2.0, 2.0)
    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and not (
        isinstance(stop, list) and all(isinstance(s, str) for s in stop)
    ):
        raise APIError(400, "'stop' must be a string or a list of strings.", param="stop")
    if body.get("stream_options") is not None and not body.get("stream"):
        raise APIError(400, "'stream_options' is only allowed when 'stream' is true.", param="stream_options")
    return model


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise APIError(400, "you must provide a messages parameter", param="messages",
                       code="missing_required_parameter")
    if not isinstance(messages, list):
        raise APIError(400, "'messages' must be an array of message objects.", param="messages")
    if not messages:
        raise APIError(400, "'messages' must contain at least one message.", param="messages", code="empty_array")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise APIError(400, f"messages[{i}] must be an object.", param=f"messages.[{i}]")
        role = msg.get("role")
        if role not in CHAT_ROLES:
            raise APIError(400, f"messages[{i}].role must be one of {sorted(CHAT_ROLES)}, got {json.dumps(role)}.",
                           param=f"messages.[{i}].role", code="invalid_value")


@functools.lru_cache(maxsize=512)
def _schema_problem(text: str) -> str | None:
    schema = json.loads(text)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return f"{'/'.join(map(str, exc.path)) or '(root)'}: {exc.message}"
    except (TypeError, AttributeError, ValueError, KeyError) as exc:  # e.g. "$schema": 5 breaks the lookup itself
        return f"its $schema cannot be used ({type(exc).__name__})"
    return None


def schema_problem(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON schema (checked against its metaschema), or None. Every endpoint checks
    tool parameters and response formats with it; results are cached by the schema's JSON text (agents send the
    same tools every turn, and an edge's request is checked again as a chat request)."""
    if not isinstance(schema, dict):
        return "it must be a JSON schema object"
    try:
        text = json.dumps(schema, sort_keys=True)
    except (TypeError, ValueError):
        return "it is not JSON"
    return _schema_problem(text)


def _check_tools(body: dict[str, Any]) -> None:
    """Each tool an object with a `function` object naming it and a JSON-schema `parameters` (vLLM's own check reads
    them unchecked: a 500); a named `tool_choice` names a declared function."""
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise APIError(400, "'tools' must be an array of tool objects.", param="tools")
    names: list[str] = []
    for i, tool in enumerate(tools or ()):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise APIError(400, f"tools[{i}] must be an object with a `function` object that has a string `name`.",
                           param=f"tools.[{i}].function")
        if tool.get("type", "function") != "function":
            raise APIError(400, f"tools[{i}].type must be 'function', got {json.dumps(tool.get('type'))}.",
                           param=f"tools.[{i}].type", code="invalid_value")
        params = function.get("parameters")
        if params is not None:
            if not isinstance(params, dict):
                raise APIError(400, f"tools[{i}].function.parameters must be a JSON schema object.",
                               param=f"tools.[{i}].function.parameters")
            if (problem := schema_problem(params)) is not None:
                raise APIError(400, f"tools[{i}].function.parameters is not a valid JSON schema: {problem}",
                               param=f"tools.[{i}].function.parameters", code="invalid_function_parameters")
        names.append(function["name"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise APIError(400, "tool_choice must be 'none', 'auto', 'required' or "
                           '{"type": "function", "function": {"name": ...}}.', param="tool_choice")
        if name not in names:
            declared = ", ".join(names) or "none"
            raise APIError(400, f"tool_choice names the function {name!r}, which is not in tools (declared: "
                           f"{declared}).", param="tool_choice", code="invalid_value")
    elif choice is not None and choice not in ("none", "auto", "required"):
        raise APIError(400, f"tool_choice must be 'none', 'auto', 'required' or a named function, got "
                       f"{json.dumps(choice)}.", param="tool_choice", code="invalid_value")


def _check_chat_logprobs(body: dict[str, Any]) -> None:
    _check_int(body, "top_logprobs", 0, 20)
    if body.get("top_logprobs") is not None and not body.get("logprobs"):
        raise APIError(400, "'top_logprobs' requires 'logprobs' to be true.", param="top_logprobs")


def _materialize(request: Any) -> Any:
    """vLLM's message types validate some `Iterable` fields lazily (a pydantic `ValidatorIterator`, e.g. the content of
    a tool message that has `name: null`): make them lists, so the request can be sent (pickled) to the engine replica
    and an invalid item is a 400 here, not an engine failure."""
    for msg in getattr(request, "messages", None) or ():
        if isinstance(msg, dict):
            for key, value in list(msg.items()):
                if isinstance(value, Iterator):
                    msg[key] = list(value)
    return request


def validate_model(cls: type[BaseModel], body: dict[str, Any]) -> Any:
    """`body` validated into the protocol model `cls` (vLLM's request types), or a 400 naming the field."""
    try:
        return _materialize(cls.model_validate(body))
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise APIError(400, f"Invalid value for '{param}': {msg}" if param else msg, param=param) from None
    except (ValueError, VLLMClientError) as exc:  # vLLM's VLLMValidationError and friends
        message = str(exc.args[0]) if exc.args else str(exc)  # without vLLM's "(parameter=...)" suffix
        raise APIError(400, message, param=getattr(exc, "parameter", None)) from None
    except (KeyError, IndexError, TypeError, AttributeError) as exc:  # a vLLM validator read a malformed field
        raise APIError(400, f"The request body has a malformed field ({type(exc).__name__}: {exc}).") from None


class RequestOverrides(StrictModel):
    """The `serving` extension field of a request body (ignored by OpenAI; documented in docs/routing.md)."""

    route: str | None = None
    gates: GatesConfig | None = Field(
        None, description="Per-gate config replacing the route's (gates not named keep the route's); null: off."
    )
    self_correct: bool | None = None
    on_exhausted: Literal["best_effort", "error"] | None = None
    deadline_s: float | None = Field(None, gt=0)
    engine: str | None = Field(
        None, description="Model groups only: send the request to this engine of the group (evaluating a version)."
    )

    def apply(self, route: RouteConfig) -> RouteConfig:
        """The route with these overrides applied (validated like the config)."""
        update: dict[str, Any] = {}
        if self.gates is not None:
            named = {f: getattr(self.gates, f) for f in self.gates.model_fields_set}
            update["gates"] = route.gates.model_copy(update=named)
        for key in ("self_correct", "on_exhausted", "deadline_s"):
            if (value := getattr(self, key)) is not None:
                update[key] = value
        return route.model_copy(update=update) if update else route


class ParsedRequest:
    """A validated request: the model the client named, whether it streams, the engine request, and the
    `serving` extension field (route choice and gate overrides), if any.

    `endpoint` is the internal request kind (`chat`, `completions`, `embeddings`) the pipeline serves; `edge` the
    endpoint's own wire format when it is not OpenAI's (`serving.api.edge`), which also sets `body` to the internal
    chat body (what policies, caches and audit read)."""

    __slots__ = ("body", "client_usage", "edge", "endpoint", "model", "overrides", "request", "stream")

    def __init__(self, model: str, stream: bool, client_usage: bool, request: Any,
                 overrides: RequestOverrides | None = None, body: dict[str, Any] | None = None,
                 endpoint: str = "chat", edge: Any = None):
        self.model = model
        self.stream = stream
        self.client_usage = client_usage
        self.request = request
        self.overrides = overrides
        self.body = body if body is not None else {}  # the JSON body as sent (without `serving`)
        self.endpoint = endpoint
        self.edge = edge


def pop_overrides(body: dict[str, Any]) -> RequestOverrides | None:
    """Take the `serving` extension field out of the body (engines never see it) and validate it."""
    raw = body.pop("serving", None)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise APIError(400, "'serving' must be an object.", param="serving")
    try:
        return RequestOverrides.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(["serving", *(str(p) for p in err["loc"])])
        raise APIError(400, f"Invalid value for '{param}': {err['msg'].removeprefix('Value error, ')}",
                       param=param) from None


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    """(stream, client asked for usage); a streamed request always asks the engine for usage."""
    stream = bool(body.get("stream"))
    if not stream:
        return False, False
    opts = body.get("stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise APIError(400, "'stream_options' must be an object.", param="stream_options")
    client_usage = bool(opts and opts.get("include_usage"))
    body["stream_options"] = {**(opts or {}), "include_usage": True}
    return True, client_usage


def parse_chat(raw: bytes) -> ParsedRequest:
    """Validate a `POST /v1/chat/completions` body."""
    return chat_request(parse_json_object(raw))


def chat_request(body: dict[str, Any]) -> ParsedRequest:
    """Validate an OpenAI chat/completions body (a JSON object; an edge's translated request too)."""
    body = drop_nulls(body)
    overrides = pop_overrides(body)
    model = _check_common(body)
    _check_messages(body)
    _check_tools(body)
    _check_chat_logprobs(body)
    stream, client_usage = _stream_flags(body)
    return ParsedRequest(model, stream, client_usage, validate_model(ChatCompletionRequest, body), overrides, body)


def revalidate_chat(parsed: ParsedRequest) -> None:
    """Validate `parsed.body` again into `parsed.request` (after an edge changed it, e.g. added history)."""
    parsed.request = validate_model(ChatCompletionRequest, parsed.body)


def _check_token_ids(prompt: list[Any]) -> None:
    """Token-id prompts (a list of ids, or a batch of them): integers in [0, MAX_TOKEN_ID]."""
    batches = prompt if prompt and isinstance(prompt[0], list) else [prompt]
    for b, ids in enumerate(batches):
        if not isinstance(ids, list) or (ids and isinstance(ids[0], str)):
            continue  # strings: checked by the protocol model
        for i, tok in enumerate(ids):
            ok = (isinstance(tok, int) and not isinstance(tok, bool)) or (isinstance(tok, float) and tok.is_integer())
            if ok and not 0 <= tok <= MAX_TOKEN_ID:
                where = f"prompt[{b}][{i}]" if batches is prompt else f"prompt[{i}]"
                raise APIError(400, f"'{where}' is not a valid token id: {tok}.", param="prompt",
                               code="invalid_value")


def parse_completion(raw: bytes) -> ParsedRequest:
    """Validate a `POST /v1/completions` body."""
    body = drop_nulls(parse_json_object(raw))
    overrides = pop_overrides(body)
    model = _check_common(body)
    prompt = body.get("prompt")
    if prompt is None:
        raise APIError(400, "you must provide a prompt parameter", param="prompt", code="missing_required_parameter")
    if prompt == "" or prompt == []:
        raise APIError(400, "'prompt' must not be empty.", param="prompt")
    if isinstance(prompt, list):  # a batch: vLLM's engine refuses an empty member only once it runs (a 502)
        for i, item in enumerate(prompt):
            if item == "" or item == []:
                raise APIError(400, f"'prompt[{i}]' must not be empty.", param=f"prompt.[{i}]")
        _check_token_ids(prompt)
    _check_int(body, "logprobs", 0, 20)
    stream, client_usage = _stream_flags(body)
    return ParsedRequest(model, stream, client_usage, validate_model(CompletionRequest, body), overrides, body,
                         endpoint="completions")

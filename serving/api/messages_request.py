"""Parsing an Anthropic Messages API (`POST /v1/messages`) body into the internal OpenAI chat request.

`parse_messages` validates the body, translates it (the conversation by `serving.api.messages_conversation`) and
attaches a `MessagesEdge` for the answer.

Accepted and ignored (hints this gateway cannot honour, harmless to drop): `thinking` (no thinking blocks are
returned; thinking blocks in assistant history are dropped), `service_tier`, `speed`, `inference_geo`,
`cache_control` (top level and on blocks), `citations`, `diagnostics`, `output_config.effort`, `user_profile_id`,
`workspace_id`. Rejected with a 400: images, documents, server tools and their blocks, `container`,
`mcp_servers`, `context_management`, and fields the API does not know ("Extra inputs are not permitted").
"""

from __future__ import annotations

import json
import re
from typing import Any

from serving.api.messages import MessagesEdge, invalid
from serving.api.messages_conversation import chat_messages
from serving.api.protocol import ParsedRequest, chat_request, parse_json_object, schema_problem

_FIELDS = frozenset({
    "model", "max_tokens", "messages", "system", "stop_sequences", "temperature", "top_p", "top_k", "stream",
    "metadata", "tools", "tool_choice", "output_config", "serving",
    # accepted, ignored
    "thinking", "service_tier", "speed", "inference_geo", "cache_control", "diagnostics", "user_profile_id",
    "workspace_id",
})
_UNSUPPORTED_FIELDS = {
    "container": "containers (code execution) are not supported by this model",
    "mcp_servers": "MCP servers are not supported by this model",
    "context_management": "context management is not supported by this model",
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def parse_messages(raw: bytes) -> ParsedRequest:
    """Validate a `POST /v1/messages` body into the internal chat request, with a `MessagesEdge` attached;
    raises `APIError(400, ..., param="messages.0.content.1")` naming the offending field."""
    body = parse_json_object(raw)
    for key in body:
        if key in _UNSUPPORTED_FIELDS and body[key] is not None:
            raise invalid(key, _UNSUPPORTED_FIELDS[key])
        if key not in _FIELDS and key not in _UNSUPPORTED_FIELDS:
            raise invalid(key, "Extra inputs are not permitted")
    model = body.get("model")
    if model is None:
        raise invalid("model", "Field required")
    if not isinstance(model, str) or not model:
        raise invalid("model", "Input should be a non-empty string")
    max_tokens = _integer(body, "max_tokens", 1, required=True)
    chat: dict[str, Any] = {"model": model, "max_tokens": max_tokens}

    messages = chat_messages(body.get("system"), body.get("messages"))
    last = messages[-1] if messages else None
    if last and last["role"] == "assistant" and "tool_calls" not in last:
        chat["continue_final_message"] = True  # a prefill: the answer continues the final assistant turn
        chat["add_generation_prompt"] = False
    chat["messages"] = messages

    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", "Input should be a valid boolean")
    if stream:
        chat["stream"] = True
    stops = _stop_sequences(body.get("stop_sequences"))
    if stops:
        chat["stop"] = stops
    if (temperature := _number(body, "temperature")) is not None:
        chat["temperature"] = temperature
    if (top_p := _number(body, "top_p", lo_open=True)) is not None:
        chat["top_p"] = top_p
    if (top_k := _integer(body, "top_k", 0)) is not None:
        chat["top_k"] = top_k
    if (user := _metadata_user(body.get("metadata"))) is not None:
        chat["user"] = user
    chat.update(_tools(body.get("tools"), body.get("tool_choice")))
    if (fmt := _output_format(body.get("output_config"))) is not None:
        chat["response_format"] = fmt
    if "serving" in body:
        chat["serving"] = body["serving"]

    parsed = chat_request(chat)
    parsed.edge = MessagesEdge(model, stops)
    parsed.client_usage = True
    return parsed


def _integer(body: dict[str, Any], key: str, lo: int, *, required: bool = False) -> int | None:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(key, "Field required")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid(key, f"Input should be a valid integer, got {_type_name(value)}")
    if value < lo:
        raise invalid(key, f"Input should be greater than or equal to {lo}")
    return value


def _number(body: dict[str, Any], key: str, *, lo_open: bool = False) -> float | None:
    """A number in [0, 1] (`lo_open`: in (0, 1])."""
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise invalid(key, f"Input should be a valid number, got {_type_name(value)}")
    if not 0 <= value <= 1 or (lo_open and value == 0):
        raise invalid(key, f"Input should be {'greater than 0 and at most' if lo_open else 'between 0 and'} 1, "
                        f"got {value}")
    return value


def _stop_sequences(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("stop_sequences", "Input should be a valid list of strings")
    for n, stop in enumerate(value):
        if not isinstance(stop, str):
            raise invalid(f"stop_sequences.{n}", "Input should be a valid string")
        if not stop.strip():
            raise invalid(f"stop_sequences.{n}", "stop sequences must contain non-whitespace")
    return list(value)


def _metadata_user(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("metadata", "Input should be an object")
    for key in value:
        if key != "user_id":
            raise invalid(f"metadata.{key}", "Extra inputs are not permitted")
    user = value.get("user_id")
    if user is not None and not isinstance(user, str):
        raise invalid("metadata.user_id", "Input should be a valid string")
    return user or None


def _check_schema(schema: Any, param: str) -> dict[str, Any]:
    if not isinstance(schema, dict):
        raise invalid(param, "Field required" if schema is None else "Input should be a JSON schema object")
    if (problem := schema_problem(schema)) is not None:
        raise invalid(param, f"invalid JSON schema: {problem}")
    return schema


def _tools(tools: Any, choice: Any) -> dict[str, Any]:
    """The OpenAI `tools`, `tool_choice` and `parallel_tool_calls` fields."""
    out: dict[str, Any] = {}
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools", "Input should be a valid list")
        functions = []
        for n, tool in enumerate(tools):
            where = f"tools.{n}"
            if not isinstance(tool, dict):
                raise invalid(where, "Input should be an object")
            kind = tool.get("type")
            if kind not in (None, "custom"):
                raise invalid(f"{where}.type", f"server tools ({json.dumps(kind)}) are not supported by this model; "
                                            "declare a custom tool with an input_schema")
            name = tool.get("name")
            if not isinstance(name, str) or not _TOOL_NAME.match(name):
                raise invalid(f"{where}.name", f"String should match pattern '{_TOOL_NAME.pattern}'")
            if name in names:
                raise invalid(f"{where}.name", f"tool names must be unique: {name}")
            names.append(name)
            description = tool.get("description")
            if description is not None and not isinstance(description, str):
                raise invalid(f"{where}.description", "Input should be a valid string")
            schema = _check_schema(tool.get("input_schema"), f"{where}.input_schema")
            if schema.get("type") != "object":
                raise invalid(f"{where}.input_schema.type", "Input should be 'object'")
            function: dict[str, Any] = {"name": name, "parameters": schema}
            if description:
                function["description"] = description
            functions.append({"type": "function", "function": function})
        if functions:
            out["tools"] = functions
    if choice is None:
        return out
    if not isinstance(choice, dict):
        raise invalid("tool_choice", "Input should be an object")
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        raise invalid("tool_choice.type", f"Input should be 'auto', 'any', 'tool' or 'none', got {json.dumps(kind)}")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise invalid("tool_choice.disable_parallel_tool_use", "Input should be a valid boolean")
    if kind in ("any", "tool") and not names:
        raise invalid("tool_choice", "tool_choice may only be specified while providing tools")
    if kind == "tool":
        name = choice.get("name")
        if name not in names:
            raise invalid("tool_choice.name", f"tool {json.dumps(name)} is not among the declared tools")
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    elif names:  # without tools, `auto` and `none` mean nothing (and vLLM refuses a tool_choice without tools)
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    if disable and names and kind != "none":
        out["parallel_tool_calls"] = False
    return out


def _output_format(config: Any) -> dict[str, Any] | None:
    """`output_config.format` (structured output) as an OpenAI `response_format`."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise invalid("output_config", "Input should be an object")
    fmt = config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise invalid("output_config.format.type", "Input should be 'json_schema'")
    schema = _check_schema(fmt.get("schema"), "output_config.format.schema")
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}

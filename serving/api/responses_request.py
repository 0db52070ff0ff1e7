"""Parsing an OpenAI Responses API (`POST /v1/responses`) body into the internal chat request.

`parse_responses` validates a Responses body and translates it: `instructions` become a first system message, input
items chat messages (consecutive `function_call` items one assistant message with several `tool_calls`, a
`function_call_output` a `tool` message), function tools chat tools, `text.format` the `response_format`,
`max_output_tokens` `max_tokens`; the `serving` extension field passes through. It attaches a `ResponsesEdge`.

Choices where this server differs from api.openai.com:

* only text in and out: `input_image`, `input_file` and `input_audio` parts are a 400, as are hosted tools
  (`web_search`, `file_search`, ...) and input items other than messages and function calls/outputs;
* `max_output_tokens` takes any value >= 1 (OpenAI's minimum is 16; a self-hosted model has no reason for one);
* `developer` messages become `system` messages (chat templates rarely know the `developer` role);
* `reasoning`, `include`, `truncation`, `service_tier`, `prompt_cache_key`, `prompt_cache_retention` and
  `stream_options` are accepted and ignored; `conversation`, `prompt`, `background`, `max_tool_calls` and
  `top_logprobs` are a 400 when set; any other unknown field is a 400 naming it;
* `store` and `previous_response_id`: see `serving.api.responses`.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from serving.api.errors import APIError
from serving.api.protocol import ParsedRequest, chat_request, parse_json_object, schema_problem
from serving.api.responses import ResponsesEdge, no_store, system_messages
from serving.policy.response_store import ResponseStore

_FIELDS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "max_output_tokens",
    "temperature", "top_p", "stream", "store", "previous_response_id", "metadata", "user", "safety_identifier",
    "reasoning", "serving",
})
_IGNORED = frozenset({
    "include", "truncation", "service_tier", "prompt_cache_key", "prompt_cache_retention", "stream_options",
})
_UNSUPPORTED = frozenset({"conversation", "prompt", "background", "max_tool_calls", "top_logprobs"})
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_MEDIA = frozenset({"input_image", "input_file", "input_audio"})


def _bad(message: str, param: str | None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _check_str(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _bad(f"'{param}' must be a{'' if empty else ' non-empty'} string, got {json.dumps(value)}.", param)
    return value


def _check_schema(schema: Any, param: str) -> None:
    """A JSON schema (checked against its metaschema), else a 400 naming `param`."""
    if not isinstance(schema, dict):
        raise _bad(f"'{param}' must be a JSON schema object.", param)
    if (problem := schema_problem(schema)) is not None:
        raise _bad(f"Invalid JSON schema for '{param}': {problem}", param, "invalid_schema")


def _text(content: Any, param: str) -> str:
    """The text of a message content (a string, or text parts joined by newlines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"'{param}' must be a string or an array of content parts.", param)
    texts = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text"):
            texts.append(_check_str(part.get("text"), f"{where}.text"))
        elif kind == "refusal":
            texts.append(_check_str(part.get("refusal"), f"{where}.refusal"))
        elif kind in _MEDIA:
            raise _bad(f"'{where}.type': {kind} content is not supported by this model; only text is.",
                       f"{where}.type", "unsupported_content")
        else:
            raise _bad(f"'{where}.type' must be 'input_text' or 'output_text', got {json.dumps(kind)}.",
                       f"{where}.type", "invalid_value")
    return "\n".join(texts)


def _items(value: Any) -> list[dict[str, Any]]:
    """`input` as chat messages (without instructions)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list):
        raise _bad("'input' must be a string or an array of input items.", "input")
    if not value:
        raise _bad("'input' must not be empty.", "input", "empty_array")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"'{where}' must be an object.", where)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise _bad(f"'{where}.role' must be one of {sorted(_ROLES)}, got {json.dumps(role)}.",
                           f"{where}.role", "invalid_value")
            out.append({"role": "system" if role == "developer" else role,
                        "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": _check_str(item.get("call_id"), f"{where}.call_id", empty=False), "type": "function",
                    "function": {"name": _check_str(item.get("name"), f"{where}.name", empty=False),
                                 "arguments": _check_str(item.get("arguments"), f"{where}.arguments")}}
            if out and out[-1]["role"] == "assistant":  # the same assistant turn (text and/or earlier calls)
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append({"role": "tool",
                        "tool_call_id": _check_str(item.get("call_id"), f"{where}.call_id", empty=False),
                        "content": _text(item.get("output"), f"{where}.output")})
        elif kind is None:
            raise _bad(f"'{where}' needs a 'type' (or a 'role' for a message).", f"{where}.type")
        else:
            raise _bad(f"Input items of type {json.dumps(kind)} are not supported by this server.",
                       f"{where}.type", "unsupported_value")
    return out


def _tools(value: Any) -> tuple[list[dict[str, Any]], set[str]]:
    """Function tools as chat tools, and their names."""
    if not isinstance(value, list):
        raise _bad("'tools' must be an array of tools.", "tools")
    tools, names = [], set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"'{where}' must be an object.", where)
        if tool.get("type") != "function":
            raise _bad(f"Tools of type {json.dumps(tool.get('type'))} are not supported by this server; only "
                       "'function' tools are.", f"{where}.type", "unsupported_value")
        name = _check_str(tool.get("name"), f"{where}.name", empty=False)
        if name in names:
            raise _bad(f"Duplicate tool name '{name}'.", f"{where}.name")
        names.add(name)
        function: dict[str, Any] = {"name": name}
        if tool.get("description") is not None:
            function["description"] = _check_str(tool["description"], f"{where}.description")
        if tool.get("parameters") is not None:
            _check_schema(tool["parameters"], f"{where}.parameters")
            function["parameters"] = tool["parameters"]
        if tool.get("strict") is not None:
            if not isinstance(tool["strict"], bool):
                raise _bad(f"'{where}.strict' must be a boolean.", f"{where}.strict")
            function["strict"] = tool["strict"]
        tools.append({"type": "function", "function": function})
    return tools, names


def _tool_choice(value: Any, names: set[str]) -> Any:
    """The chat `tool_choice` (None: leave it out)."""
    if value in ("none", "auto"):
        return value if names else None
    if value == "required":
        if not names:
            raise _bad("'tool_choice' is 'required' but no tools were given.", "tool_choice")
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if name not in names:
            raise _bad(f"'tool_choice' names the function {json.dumps(name)}, which is not in 'tools'.",
                       "tool_choice", "invalid_value")
        return {"type": "function", "function": {"name": name}}
    raise _bad("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}.",
               "tool_choice", "invalid_value")


def _response_format(text: Any) -> dict[str, Any] | None:
    """The chat `response_format` for `text` (None: plain text)."""
    if not isinstance(text, dict):
        raise _bad("'text' must be an object.", "text")
    fmt = text.get("format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        assert isinstance(fmt, dict)
        schema: dict[str, Any] = {"name": _check_str(fmt.get("name"), "text.format.name", empty=False)}
        _check_schema(fmt.get("schema"), "text.format.schema")
        schema["schema"] = fmt["schema"]
        if fmt.get("description") is not None:
            schema["description"] = _check_str(fmt["description"], "text.format.description")
        if fmt.get("strict") is not None:
            if not isinstance(fmt["strict"], bool):
                raise _bad("'text.format.strict' must be a boolean.", "text.format.strict")
            schema["strict"] = fmt["strict"]
        return {"type": "json_schema", "json_schema": schema}
    raise _bad("'text.format.type' must be 'text', 'json_object' or 'json_schema'.", "text.format.type",
               "invalid_value")


def _check_fields(body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key in _UNSUPPORTED and value:
            raise _bad(f"'{key}' is not supported by this server.", key, "unsupported_parameter")
        if key not in _FIELDS and key not in _IGNORED and key not in _UNSUPPORTED:
            raise _bad(f"Unknown parameter: '{key}'.", key, "unknown_parameter")
    for key in ("stream", "store", "parallel_tool_calls"):
        if key in body and not isinstance(body[key], bool):
            raise _bad(f"'{key}' must be a boolean.", key)
    for key in ("instructions", "user", "safety_identifier"):
        if key in body:
            _check_str(body[key], key)
    if "previous_response_id" in body:
        _check_str(body["previous_response_id"], "previous_response_id", empty=False)
    if "reasoning" in body and not isinstance(body["reasoning"], dict):
        raise _bad("'reasoning' must be an object.", "reasoning")
    limit = body.get("max_output_tokens")
    if limit is not None:
        if isinstance(limit, float) and limit.is_integer():
            limit = body["max_output_tokens"] = int(limit)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            raise _bad(f"'max_output_tokens' must be an integer >= 1, got {json.dumps(limit)}.",
                       "max_output_tokens", "invalid_value")
    metadata = body.get("metadata")
    if metadata is not None and not (
        isinstance(metadata, dict) and len(metadata) <= 16
        and all(isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in metadata.items())
    ):
        raise _bad("'metadata' must be an object of at most 16 string values (keys up to 64 characters, values up "
                   "to 512).", "metadata")


def parse_responses(raw: bytes, store: ResponseStore | None) -> ParsedRequest:
    """Validate a `POST /v1/responses` body into the internal chat request, with a `ResponsesEdge` attached.

    Every invalid field is an `APIError(400, ..., param=<its path, e.g. "input[2].content[0].type">)`. With
    `previous_response_id` the history is loaded by `ResponsesEdge.prepare` (it needs the tenant)."""
    body = {k: v for k, v in parse_json_object(raw).items() if v is not None}  # null: the default
    if "model" not in body:
        raise _bad("you must provide a model parameter", "model", "missing_required_parameter")
    if "input" not in body:
        raise _bad("you must provide an input parameter", "input", "missing_required_parameter")
    _check_fields(body)
    previous = body.get("previous_response_id")
    if previous is not None and store is None:
        raise no_store("previous_response_id", "previous_response_id")
    items = _items(body["input"])
    tools, names = _tools(body.get("tools", []))
    tool_choice = _tool_choice(body.get("tool_choice", "auto"), names)
    response_format = _response_format(body.get("text", {}))
    instructions = body.get("instructions") or None

    chat: dict[str, Any] = {"model": body["model"],
                            "messages": system_messages(instructions) + copy.deepcopy(items)}
    if tools:
        chat["tools"] = copy.deepcopy(tools)  # the echoed `tools` share the schemas
        if tool_choice is not None:
            chat["tool_choice"] = tool_choice
        if "parallel_tool_calls" in body:
            chat["parallel_tool_calls"] = body["parallel_tool_calls"]
    if response_format is not None:
        chat["response_format"] = response_format
    for src, dst in (("max_output_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "top_p"),
                     ("stream", "stream"), ("user", "user"), ("serving", "serving")):
        if src in body:
            chat[dst] = body[src]
    parsed = chat_request(chat)

    saves = store is not None and body.get("store", True)
    echo = {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": body.get("metadata", {}),
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": previous,
        "reasoning": None,
        "safety_identifier": body.get("safety_identifier"),
        "store": saves,
        "temperature": body.get("temperature"),
        "text": {"format": {"type": "text"}, **body.get("text", {})},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p"),
        "truncation": "disabled",
        "user": body.get("user"),
    }
    parsed.edge = ResponsesEdge(store=store if saves or previous else None, model=parsed.model, echo=echo,
                                instructions=instructions, items=items, previous_response_id=previous, save=saves)
    parsed.client_usage = True
    return parsed

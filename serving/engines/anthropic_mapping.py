"""OpenAI chat/completions requests as Anthropic Messages API calls (messages, function tools and tool_choice, tool
calls and tool results in the history), and Anthropic's stop reasons and usage in OpenAI's terms (the mapping
`serving.engines.anthropic_messages` documents)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from serving.engines.base import Endpoint, EngineRejected

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

JSON_INSTRUCTION = "Reply with only a JSON object: no other text before or after it, and no Markdown code fences."

EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}
"""The `input_schema` of a function tool without `parameters` (Anthropic requires one)."""

TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
"""OpenAI's string tool_choice values as Anthropic tool_choice types."""

_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")


def finish_reason(stop_reason: str | None) -> str:
    """An Anthropic stop_reason as an OpenAI finish_reason."""
    return FINISH_REASONS.get(stop_reason or "end_turn", "stop")


def reject(message: str, param: str | None = None) -> EngineRejected:
    """A 400 for a request field the Messages API cannot take."""
    return EngineRejected(message, status=400, code="invalid_value" if param else None, param=param)


def text_parts(content: Any, where: str) -> list[str]:
    """The texts of an OpenAI message content (a string or a list of parts); non-text parts are rejected."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise reject(f"{where}.content must be a string or a list of content parts.", f"{where}.content")
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "refusal":
            texts.append(str(part.get("refusal") or ""))
        else:
            raise reject(
                f"{where}.content[{j}] is a {kind or 'non-text'} part: this model takes text only "
                "(images, audio and files are not supported).",
                f"{where}.content",
            )
    return texts


def openai_usage(input_tokens: int, cache_creation: int | None, cache_read: int | None, output_tokens: int) -> dict:
    """Anthropic token counts as OpenAI usage (prompt tokens include the cache's)."""
    prompt = input_tokens + (cache_creation or 0) + (cache_read or 0)
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": output_tokens,
        "total_tokens": prompt + output_tokens,
    }
    if cache_read:
        usage["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return usage


def messages_kwargs(model: str, endpoint: Endpoint, body: dict[str, Any], default_max_tokens: int, *,
                    send_sampling_params: bool = False) -> dict[str, Any]:
    """The SDK's `messages.create` kwargs for an OpenAI chat/completions request body (the fields the client
    set); raises `EngineRejected` for what the Messages API cannot take."""
    if (body.get("n") or 1) > 1:
        raise reject("n > 1 is not supported by this model; send one request per answer.", "n")
    system: list[str] = []
    if endpoint == "chat":
        messages = map_messages(body.get("messages") or [], system)
        tools = tools_kwargs(body)
    else:
        tools = {}
        messages = [{"role": "user", "content": [{"type": "text", "text": completion_prompt(body)}]}]
    if not messages:
        raise reject("At least one user or assistant message with text is required.", "messages")
    fmt = body.get("response_format") or {}
    if fmt.get("type") in ("json_object", "json_schema"):
        instruction = JSON_INSTRUCTION
        schema = (fmt.get("json_schema") or {}).get("schema")
        if fmt.get("type") == "json_schema" and schema is not None:
            instruction += f"\nThe JSON object must match this JSON schema:\n{json.dumps(schema)}"
        system.append(instruction)

    kwargs: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens,
    }
    if system:
        kwargs["system"] = "\n\n".join(system)
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    stops = [s for s in stops if s.strip()]
    if stops:
        kwargs["stop_sequences"] = stops
    if body.get("user"):
        kwargs["metadata"] = {"user_id": str(body["user"])}
    kwargs.update(tools)
    if send_sampling_params:
        extra = {}
        if body.get("temperature") is not None:
            extra["temperature"] = min(1.0, max(0.0, float(body["temperature"])))
        if body.get("top_p") is not None:
            extra["top_p"] = float(body["top_p"])
        if extra:
            kwargs["extra_body"] = extra
    if body.get("stream"):
        kwargs["stream"] = True
    return kwargs


def tools_kwargs(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages API's `tools` / `tool_choice` for an OpenAI body's `tools`, `tool_choice` and
    `parallel_tool_calls` (none without tools); raises `EngineRejected`."""
    choice = body.get("tool_choice")
    if not body.get("tools"):
        if choice == "required" or isinstance(choice, Mapping):
            raise reject("tool_choice requires tools.", "tool_choice")
        return {}
    tools = map_tools(body["tools"])
    out: dict[str, Any] = {"tools": tools}
    parallel_off = body.get("parallel_tool_calls") is False
    if choice is None:
        if parallel_off:
            out["tool_choice"] = {"type": "auto", "disable_parallel_tool_use": True}
        return out
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        tool_choice: dict[str, Any] = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        fn = choice.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        if name not in {t["name"] for t in tools}:
            raise reject(f"tool_choice names the function {name!r}, which is not in tools.",
                         "tool_choice.function.name")
        tool_choice = {"type": "tool", "name": name}
    else:
        raise reject('tool_choice must be "auto", "required", "none" or {"type": "function", "function": '
                     '{"name": ...}} for this model.', "tool_choice")
    if parallel_off and tool_choice["type"] != "none":
        tool_choice["disable_parallel_tool_use"] = True
    out["tool_choice"] = tool_choice
    return out


def map_tools(raw: Any) -> list[dict[str, Any]]:
    """OpenAI function tools as Anthropic tools (`parameters` -> `input_schema`); other tool types are rejected."""
    if not isinstance(raw, list):
        raise reject("tools must be a list of function tools.", "tools")
    tools = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        kind = tool.get("type", "function") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise reject(f"{where} is a {kind or 'malformed'} tool: this model takes function tools only.",
                         f"{where}.type")
        fn = tool.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise reject(f"{where}.function.name is required.", f"{where}.function.name")
        params = fn.get("parameters")
        if not params:
            schema = dict(EMPTY_SCHEMA)
        elif isinstance(params, Mapping) and params.get("type", "object") == "object":
            schema = {"type": "object", **params}
        else:
            raise reject(f"{where}.function.parameters must be a JSON schema of type object.",
                         f"{where}.function.parameters")
        out: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            out["description"] = str(fn["description"])
        out["input_schema"] = schema
        if isinstance(fn.get("strict"), bool):
            out["strict"] = fn["strict"]
        tools.append(out)
    return tools


def tool_use_id(call_id: str) -> str:
    """A tool call id as Anthropic takes it (`^[a-zA-Z0-9_-]+$`): kept when it fits, else made to fit the same way
    every time (ids from other tiers, e.g. `functions.get_weather:0`), so a call and its result still pair up."""
    if _TOOL_ID.match(call_id):
        return call_id
    digest = hashlib.sha256(call_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^a-zA-Z0-9_-]', '_', call_id)}_{digest}"


def tool_use_blocks(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's OpenAI `tool_calls` as `tool_use` blocks; `arguments` must be a JSON object (empty
    arguments: `{}`)."""
    if not isinstance(calls, list):
        raise reject(f"{where}.tool_calls must be a list.", f"{where}.tool_calls")
    blocks = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        kind = call.get("type", "function") if isinstance(call, Mapping) else None
        if kind != "function":
            raise reject(f"{at} is a {kind or 'malformed'} tool call: this model takes function calls only.",
                         f"{at}.type")
        if not isinstance(call.get("id"), str) or not call["id"]:
            raise reject(f"{at}.id is required.", f"{at}.id")
        fn = call.get("function")
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise reject(f"{at}.function.name is required.", f"{at}.function.name")
        arguments = fn.get("arguments")
        args: Any = None
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            args = {}
        elif isinstance(arguments, str):
            with contextlib.suppress(ValueError):
                args = json.loads(arguments)
        if not isinstance(args, dict):
            raise reject(f"{at}.function.arguments must be a JSON object (in a string).", f"{at}.function.arguments")
        blocks.append({"type": "tool_use", "id": tool_use_id(call["id"]), "name": fn["name"], "input": args})
    return blocks


def map_messages(raw: list[Any], system: list[str]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Messages API turns (system/developer texts appended to `system`): assistant
    `tool_calls` become `tool_use` blocks after the text, `tool` messages `tool_result` blocks opening the next user
    turn; every tool call must be answered by the tool messages right after it."""
    messages: list[dict[str, Any]] = []
    pending: dict[str, int] = {}  # tool call id -> index of the assistant message that made it, until answered

    def append(role: str, blocks: list[dict[str, Any]]) -> None:
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})

    def check_answered() -> None:
        if pending:
            k = min(pending.values())
            ids = ", ".join(c for c, at in pending.items() if at == k)
            raise reject(f"messages[{k}] has tool calls no tool message answers ({ids}): each tool call needs a "
                         "tool message right after the assistant message.", f"messages[{k}].tool_calls")

    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        role = msg.get("role") if isinstance(msg, Mapping) else None
        if role in ("system", "developer"):
            text = "\n".join(t for t in text_parts(msg.get("content"), where) if t)
            if text:
                system.append(text)
            continue
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise reject(f"{where}.tool_call_id is required.", f"{where}.tool_call_id")
            if pending.pop(call_id, None) is None:
                raise reject(f"{where} answers tool call {call_id!r}, which is not an unanswered call of the "
                             "assistant message before it.", f"{where}.tool_call_id")
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id(call_id)}
            text = "\n".join(t for t in text_parts(msg.get("content"), where) if t)
            if text:
                result["content"] = text
            append("user", [result])
            continue
        if role not in ("user", "assistant"):
            raise reject(f"{where} has role {role!r}: legacy function messages are not supported by this model "
                         "(use tool_calls and tool messages).", f"{where}.role")
        check_answered()
        if msg.get("function_call"):
            raise reject(f"{where} has a legacy function_call: use tool_calls.", f"{where}.function_call")
        blocks = [{"type": "text", "text": t} for t in text_parts(msg.get("content"), where) if t]
        if role == "assistant" and msg.get("tool_calls"):
            blocks += tool_use_blocks(msg["tool_calls"], where)
            pending.update({call["id"]: i for call in msg["tool_calls"]})
        if blocks:  # Anthropic rejects empty text blocks
            append(role, blocks)
    check_answered()
    if messages and messages[-1]["role"] == "assistant":  # a prefill may not end in whitespace
        last = messages[-1]["content"][-1]
        last["text"] = last["text"].rstrip()  # a text block: unanswered tool calls were rejected above
        if not last["text"]:
            messages[-1]["content"].pop()
            if not messages[-1]["content"]:
                messages.pop()
    return messages


def completion_prompt(body: dict[str, Any]) -> str:
    """The one prompt string of a completions request."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise reject(
            "The prompt must be one string (several prompts and token ids are not supported by this model).",
            "prompt",
        )
    if not prompt.strip():
        raise reject("The prompt must not be empty.", "prompt")
    if body.get("suffix"):
        raise reject("suffix is not supported by this model.", "suffix")
    if (body.get("best_of") or 1) > 1:
        raise reject("best_of > 1 is not supported by this model.", "best_of")
    return prompt

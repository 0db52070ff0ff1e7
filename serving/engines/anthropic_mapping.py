"""OpenAI chat/completions requests as Anthropic Messages API calls, and Anthropic's stop reasons and usage in
OpenAI's terms (the mapping `serving.engines.anthropic_messages` documents)."""

from __future__ import annotations

import json
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
        if body.get("tools") and body.get("tool_choice") != "none":
            raise reject("Tools / function calling are not supported by this model.", "tools")
    else:
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

def map_messages(raw: list[Any], system: list[str]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Messages API turns (system/developer texts appended to `system`)."""
    messages: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        role = msg.get("role")
        if role in ("system", "developer"):
            text = "\n".join(t for t in text_parts(msg.get("content"), where) if t)
            if text:
                system.append(text)
            continue
        if role not in ("user", "assistant"):
            raise reject(
                f"{where} has role {role!r}: tool and function messages are not supported by this model.",
                f"{where}.role",
            )
        if msg.get("tool_calls") or msg.get("function_call"):
            raise reject(
                f"{where} has tool calls: tool calling is not supported by this model.", f"{where}.tool_calls"
            )
        blocks = [{"type": "text", "text": t} for t in text_parts(msg.get("content"), where) if t]
        if not blocks:
            continue  # Anthropic rejects empty text blocks
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    if messages and messages[-1]["role"] == "assistant":  # a prefill may not end in whitespace
        last = messages[-1]["content"][-1]
        last["text"] = last["text"].rstrip()
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

"""The conversation of an Anthropic Messages request (`system` and `messages`) as OpenAI chat messages.

Consecutive messages of one role are one turn; a user turn's `tool_result` blocks become `tool` messages (each must
answer a `tool_use` of the previous turn), an assistant turn's `tool_use` blocks its `tool_calls`, and thinking blocks
are dropped. Images and documents are a 400.
"""

from __future__ import annotations

import json
from typing import Any

from serving.api.errors import APIError
from serving.api.messages import invalid

_UNSUPPORTED_BLOCKS = {
    "image": "images are not supported by this model",
    "document": "documents are not supported by this model",
}


def chat_messages(system: Any, messages: Any) -> list[dict[str, Any]]:
    """The OpenAI chat messages for a request's `system` and `messages`; raises `APIError(400, ...,
    param="messages.0.content.1")` naming the offending field."""
    out = _system(system)
    turns = _turns(messages)
    if not turns:
        raise invalid("messages", "at least one message with content is required")
    for n, (role, blocks) in enumerate(turns):
        out.extend(_user_turn(blocks, turns[n - 1][1] if n else []) if role == "user" else _assistant_turn(blocks))
    if not out:  # only thinking blocks, which are dropped
        raise invalid("messages", "at least one message with content other than thinking is required")
    return out


def _texts(blocks: Any, where: str) -> list[str]:
    """The texts of a list of text blocks (`system`, a tool result's content)."""
    if not isinstance(blocks, list):
        raise invalid(where, "Input should be a valid string or a list of text blocks")
    texts = []
    for n, block in enumerate(blocks):
        param = f"{where}.{n}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind in _UNSUPPORTED_BLOCKS:
            raise invalid(param, _UNSUPPORTED_BLOCKS[kind])
        if kind != "text":
            raise invalid(f"{param}.type", f"expected a text block, got {json.dumps(kind)}")
        texts.append(_text(block, param))
    return texts


def _text(block: dict[str, Any], param: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise invalid(f"{param}.text", "Field required" if text is None else "Input should be a valid string")
    if not text:
        raise invalid(f"{param}.text", "text content blocks must be non-empty")
    return text


def _content(texts: list[str]) -> str | list[dict[str, str]]:
    """One string for one text, OpenAI text parts for several (the chat template joins them)."""
    return texts[0] if len(texts) == 1 else [{"type": "text", "text": t} for t in texts]


def _system(value: Any) -> list[dict[str, Any]]:
    if value is None or value == "":
        return []
    texts = [value] if isinstance(value, str) else _texts(value, "system")
    return [{"role": "system", "content": _content(texts)}] if texts else []


Block = tuple[str, dict[str, Any]]
"""A content block with its param path (`messages.0.content.1`)."""


def _turns(raw: Any) -> list[tuple[str, list[Block]]]:
    """The conversation as turns of content blocks; consecutive messages of one role are one turn (as in the API)."""
    if raw is None:
        raise invalid("messages", "Field required")
    if not isinstance(raw, list):
        raise invalid("messages", "Input should be a valid list")
    if not raw:
        raise invalid("messages", "at least one message is required")
    turns: list[tuple[str, list[Block]]] = []
    for i, msg in enumerate(raw):
        where = f"messages.{i}"
        if not isinstance(msg, dict):
            raise invalid(where, "Input should be an object")
        for key in msg:
            if key not in ("role", "content"):
                raise invalid(f"{where}.{key}", "Extra inputs are not permitted")
        role = msg.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role", f"Input should be 'user' or 'assistant', got {json.dumps(role)}")
        content = msg.get("content")
        if content is None:
            raise invalid(f"{where}.content", "Field required")
        if content in ("", []):
            if i == len(raw) - 1 and role == "assistant":
                continue
            raise invalid(where, "all messages must have non-empty content except for the optional final assistant "
                              "message")
        if isinstance(content, str):
            blocks: list[Block] = [(f"{where}.content", {"type": "text", "text": content})]
        elif isinstance(content, list):
            blocks = []
            for j, block in enumerate(content):
                if not isinstance(block, dict):
                    raise invalid(f"{where}.content.{j}", "Input should be an object")
                blocks.append((f"{where}.content.{j}", block))
        else:
            raise invalid(f"{where}.content", "Input should be a valid string or a list of content blocks")
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return turns


def _unsupported(param: str, block: dict[str, Any], role: str) -> APIError:
    kind = block.get("type")
    if kind in _UNSUPPORTED_BLOCKS:
        return invalid(param, _UNSUPPORTED_BLOCKS[kind])
    if kind in ("text", "tool_use", "tool_result", "thinking", "redacted_thinking"):
        return invalid(f"{param}.type", f"{kind} blocks are not allowed in {role} messages")
    return invalid(f"{param}.type", f"content blocks of type {json.dumps(kind)} are not supported by this model")


def _tool_use_ids(blocks: list[Block]) -> dict[str, str]:
    return {b["id"]: p for p, b in blocks if b.get("type") == "tool_use" and isinstance(b.get("id"), str)}


def _user_turn(blocks: list[Block], previous: list[Block]) -> list[dict[str, Any]]:
    """`tool` messages for the turn's tool results (one for each tool use of the `previous` turn), then a user
    message with its texts."""
    known = _tool_use_ids(previous)
    tools: list[dict[str, Any]] = []
    texts: list[str] = []
    for param, block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, param))
        elif kind == "tool_result":
            tool_use_id = block.get("tool_use_id")
            if not isinstance(tool_use_id, str) or not tool_use_id:
                raise invalid(f"{param}.tool_use_id", "Input should be a non-empty string")
            if tool_use_id not in known:
                raise invalid(param, f"unexpected `tool_use_id` found in `tool_result` blocks: {tool_use_id}. Each "
                                  "`tool_result` block must have a corresponding `tool_use` block in the previous "
                                  "message.")
            tools.append({"role": "tool", "tool_call_id": tool_use_id, "content": _tool_result(block, param)})
        else:
            raise _unsupported(param, block, "user")
    missing = [i for i in known if i not in {t["tool_call_id"] for t in tools}]
    if missing:
        raise invalid(known[missing[0]].rsplit(".content", 1)[0],
                   f"`tool_use` ids were found without `tool_result` blocks immediately after: {', '.join(missing)}. "
                   "Each `tool_use` block must have a corresponding `tool_result` block in the next message.")
    return tools + ([{"role": "user", "content": _content(texts)}] if texts else [])


def _tool_result(block: dict[str, Any], param: str) -> str:
    """A tool result's content as one string (`Error: ...` when `is_error`)."""
    content = block.get("content")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise invalid(f"{param}.is_error", "Input should be a valid boolean")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        text = "\n".join(_texts(content, f"{param}.content"))
    if is_error:
        return f"Error: {text}" if text else "Error"
    return text


def _assistant_turn(blocks: list[Block]) -> list[dict[str, Any]]:
    """One assistant message: its texts and tool calls (thinking blocks dropped)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for param, block in blocks:
        kind = block.get("type")
        if kind == "text":
            texts.append(_text(block, param))
        elif kind == "tool_use":
            call_id, name, args = block.get("id"), block.get("name"), block.get("input")
            if not isinstance(call_id, str) or not call_id:
                raise invalid(f"{param}.id", "Input should be a non-empty string")
            if not isinstance(name, str) or not name:
                raise invalid(f"{param}.name", "Input should be a non-empty string")
            if not isinstance(args, dict):
                raise invalid(f"{param}.input", "Input should be an object")
            calls.append({"id": call_id, "type": "function",
                          "function": {"name": name, "arguments": json.dumps(args)}})
        elif kind not in ("thinking", "redacted_thinking"):
            raise _unsupported(param, block, "assistant")
    if not texts and not calls:
        return []
    msg: dict[str, Any] = {"role": "assistant"}
    if texts:
        msg["content"] = _content(texts)
    if calls:
        msg["tool_calls"] = calls
    return [msg]

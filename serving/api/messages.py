"""The Anthropic Messages API (`POST /v1/messages`) at the edge: its wire format.

`serving.api.messages_request.parse_messages` validates an Anthropic request body into the internal OpenAI chat
request and attaches a `MessagesEdge`, which turns the pipeline's OpenAI answer (a `chat.completion` body or its SSE
chunks) back into an Anthropic `message` (or its `message_start` ... `message_stop` events) and renders errors in
Anthropic's envelope, so the official `anthropic` SDK works against the gateway unchanged.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from serving.api.errors import APIError

logger = logging.getLogger("serving.api")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
"""Anthropic's error `type` by HTTP status (other 4xx: invalid_request_error, other 5xx: api_error)."""

_BY_OPENAI_TYPE = {  # the OpenAI error types of `serving.api.errors` (a mid-stream error event has no status)
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "internal_error": "api_error",
    "api_error": "api_error",
    "service_unavailable": "overloaded_error",
    "timeout": "timeout_error",
}


def invalid(param: str, text: str) -> APIError:
    """A 400 `invalid_request_error` naming `param` (message `param: text`, as the Messages API words them)."""
    return APIError(400, f"{param}: {text}", param=param)


def _message_id(chat_id: Any) -> str:
    if isinstance(chat_id, str) and chat_id:
        return "msg_" + chat_id.removeprefix("chatcmpl-")
    return "msg_" + uuid.uuid4().hex


def _tool_id() -> str:
    return "toolu_" + uuid.uuid4().hex[:24]


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        value = None
    if isinstance(value, dict):
        return value
    logger.warning("tool call arguments are not a JSON object: %.200r", arguments)
    return {}


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    """OpenAI usage as Anthropic's (whose input_tokens exclude the tokens read from the prefix cache)."""
    usage = usage or {}
    prompt = int(usage.get("prompt_tokens") or 0)
    cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": max(prompt - cached, 0),
        "output_tokens": int(usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def error_type(status: int) -> str:
    """Anthropic's error `type` for an HTTP status."""
    return ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_envelope(exc: APIError) -> dict[str, Any]:
    """`{"type": "error", "error": {"type", "message"}}` for `exc` (also for a body `parse_messages` refused before
    any edge existed), plus its top-level extension fields (e.g. `serving`)."""
    out: dict[str, Any] = {"type": "error", "error": {"type": error_type(exc.status), "message": exc.message}}
    if exc.extra:
        out.update(exc.extra)
    return out


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, separators=(',', ':'))}\n\n"


class MessagesEdge:
    """The Anthropic Messages wire format of one request (`model`: the name the client sent; `stop_sequences`:
    the ones it asked for, to report which one stopped the answer)."""

    name = "messages"

    def __init__(self, model: str, stop_sequences: Sequence[str] = ()):
        self.model = model
        self.stop_sequences = tuple(stop_sequences)

    async def finish(self, rendered: dict[str, Any]) -> None:
        """Nothing to keep: Messages API answers are not stored."""

    async def prepare(self, parsed: Any, tenant: str) -> None:
        """Nothing to complete: a Messages request carries its whole conversation."""

    def error_body(self, exc: APIError) -> dict[str, Any]:
        """Anthropic's error envelope for `exc` (see `error_envelope`)."""
        return error_envelope(exc)

    def stop(self, finish_reason: Any, matched: Any, tool_calls: bool) -> tuple[str, str | None]:
        """Anthropic's (stop_reason, stop_sequence) for an OpenAI finish_reason and vLLM's `stop_reason`."""
        if finish_reason == "length":
            return "max_tokens", None
        if finish_reason == "content_filter":
            return "refusal", None
        if finish_reason == "tool_calls" or tool_calls:  # vLLM finishes a forced (named/required) call with "stop"
            return "tool_use", None
        if isinstance(matched, str) and matched in self.stop_sequences:
            return "stop_sequence", matched
        return "end_turn", None

    def render(self, body: dict[str, Any]) -> dict[str, Any]:
        """An Anthropic `message` for a `chat.completion` body."""
        choices = body.get("choices") or [{}]
        choice = choices[0]
        message = choice.get("message") or {}
        content: list[dict[str, Any]] = []
        if message.get("content"):
            content.append({"type": "text", "text": message["content"]})
        calls = message.get("tool_calls") or []
        for call in calls:
            function = call.get("function") or {}
            content.append({"type": "tool_use", "id": call.get("id") or _tool_id(), "name": function.get("name") or "",
                            "input": _tool_input(function.get("arguments"))})
        stop_reason, stop_sequence = self.stop(choice.get("finish_reason"), choice.get("stop_reason"), bool(calls))
        out: dict[str, Any] = {
            "id": _message_id(body.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": _usage(body.get("usage")),
        }
        if "serving" in body:
            out["serving"] = body["serving"]
        return out

    async def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """Anthropic SSE events for the pipeline's `chat.completion.chunk` events: `message_start`, content blocks
        (text, tool_use), `message_delta` with the stop reason and final usage, `message_stop`; an OpenAI error event
        becomes an Anthropic `error` event that ends the stream."""
        state = _StreamState(self)
        ended = False
        async for event in events:
            if ended:
                continue  # drain what follows (the `[DONE]` after an error), so the source finishes normally
            for line in event.splitlines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    ended = True
                    for out in state.finish():
                        yield out
                    break
                try:
                    chunk = json.loads(payload)
                except ValueError:
                    logger.warning("not a JSON stream event: %.200r", payload)
                    continue
                if "error" in chunk and "choices" not in chunk:
                    ended = True
                    yield state.error(chunk["error"])
                    break
                for out in state.chunk(chunk):
                    yield out
        if not ended:
            for out in state.finish():
                yield out


class _StreamState:
    """The Anthropic content blocks of one streamed answer, built from OpenAI deltas."""

    def __init__(self, edge: MessagesEdge):
        self.edge = edge
        self.started = False
        self.index = -1  # the index of the last block started
        self.open = False  # whether that block has not been stopped yet
        self.text_open = False  # whether the open block is a text block
        self.tools: dict[int, int] = {}  # OpenAI tool-call index -> block index
        self.pending: dict[int, dict[str, str]] = {}  # tool calls whose name has not arrived yet
        self.finish_reason: Any = None
        self.matched: Any = None
        self.usage: dict[str, Any] | None = None
        self.serving: Any = None

    def start(self, chat_id: Any) -> list[str]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": _message_id(chat_id), "type": "message", "role": "assistant", "model": self.edge.model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},  # known only at the end: sent in message_delta
        }
        return [_event("message_start", {"message": message})]

    def close(self) -> list[str]:
        if not self.open:
            return []
        self.open = self.text_open = False
        return [_event("content_block_stop", {"index": self.index})]

    def begin(self, block: dict[str, Any], text: bool) -> list[str]:
        out = self.close()
        self.index += 1
        self.open, self.text_open = True, text
        out.append(_event("content_block_start", {"index": self.index, "content_block": block}))
        return out

    def chunk(self, chunk: dict[str, Any]) -> list[str]:
        out = self.start(chunk.get("id"))
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if "serving" in chunk:
            self.serving = chunk["serving"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if not self.text_open:
                    out += self.begin({"type": "text", "text": ""}, text=True)
                out.append(_event("content_block_delta",
                                  {"index": self.index, "delta": {"type": "text_delta", "text": text}}))
            for pos, call in enumerate(delta.get("tool_calls") or ()):
                out += self.tool_call(pos, call)
            if choice.get("finish_reason") is not None:
                self.finish_reason = choice["finish_reason"]
                self.matched = choice.get("stop_reason")
        return out

    def tool_call(self, pos: int, call: dict[str, Any]) -> list[str]:
        """A tool-call delta: the first one (with the name) starts a tool_use block, the rest are JSON fragments."""
        i = call.get("index", pos)
        function = call.get("function") or {}
        args = function.get("arguments") or ""
        if i in self.tools:
            if not args:
                return []
            return [_event("content_block_delta",
                           {"index": self.tools[i], "delta": {"type": "input_json_delta", "partial_json": args}})]
        pending = self.pending.setdefault(i, {"id": "", "name": "", "args": ""})
        pending["id"] = pending["id"] or call.get("id") or ""
        pending["name"] = pending["name"] or function.get("name") or ""
        pending["args"] += args
        if not pending["name"]:
            return []
        del self.pending[i]
        out = self.begin({"type": "tool_use", "id": pending["id"] or _tool_id(), "name": pending["name"],
                          "input": {}}, text=False)
        self.tools[i] = self.index
        if pending["args"]:
            out.append(_event("content_block_delta", {
                "index": self.index, "delta": {"type": "input_json_delta", "partial_json": pending["args"]}}))
        return out

    def finish(self) -> list[str]:
        out = self.start(None) + self.close()
        stop_reason, stop_sequence = self.edge.stop(self.finish_reason, self.matched, bool(self.tools))
        delta: dict[str, Any] = {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                 "usage": _usage(self.usage)}
        if self.serving is not None:
            delta["serving"] = self.serving
        out.append(_event("message_delta", delta))
        out.append(_event("message_stop", {}))
        return out

    def error(self, error: Any) -> str:
        error = error if isinstance(error, dict) else {"message": str(error)}
        kind = _BY_OPENAI_TYPE.get(str(error.get("type")), "api_error")
        return _event("error", {"error": {"type": kind, "message": str(error.get("message") or "stream failed")}})

"""A streamed answer put back together: OpenAI stream chunks (`chat.completion.chunk`, or `text_completion` for
completions) folded into the complete response object a non-streamed request gets.

The gateway streams from engines even when the client does not, so that its timeouts can follow progress (time to
the first token, then the gap between tokens) instead of the length of the answer; this module turns the chunks
back into `chat.completion` / `text_completion` JSON: text and refusal concatenated, tool-call deltas merged by
index (ids, names, argument fragments), per-token logprobs appended, `finish_reason` / `stop_reason` kept, usage
taken from the final usage chunk.
"""

from __future__ import annotations

import json
from typing import Any

from serving.engines.base import EngineFailed, EngineRejected


class _Choice:
    __slots__ = ("finish_reason", "index", "logprobs", "refusal", "role", "stop_reason", "text", "tool_calls")

    def __init__(self, index: int):
        self.index = index
        self.role = "assistant"
        self.text: list[str] = []
        self.refusal: list[str] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish_reason: str | None = None
        self.stop_reason: Any = None


CLIENT_ERROR_TYPES = frozenset({"BadRequestError", "invalid_request_error", "NotFoundError"})


def _client_error_status(err: Any) -> int | None:
    """The 4xx status of an in-stream error event that refuses the request (vLLM: `code` 400 or type
    `BadRequestError`), else None (an engine fault)."""
    if not isinstance(err, dict):
        return None
    code = err.get("code")
    if isinstance(code, int) and 400 <= code < 500:
        return code
    return 400 if err.get("type") in CLIENT_ERROR_TYPES else None


class StreamAssembler:
    """Feed it the stream's SSE chunks in order (`add`), then take the complete response (`response`)."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint
        self.head: dict[str, Any] = {}
        self.choices: dict[int, _Choice] = {}
        self.usage: dict[str, Any] | None = None
        self.chunks = 0

    def add(self, chunk: str) -> None:
        """One SSE event (`data: {...}\\n\\n`); `[DONE]` and comments are ignored, an error event raises
        `EngineFailed`."""
        data = chunk.strip()
        if not data.startswith("data:"):
            return
        payload = data[5:].strip()
        if payload == "[DONE]":
            return
        try:
            obj = json.loads(payload)
        except json.JSONDecodeError:
            raise EngineFailed(f"malformed stream chunk: {payload[:120]!r}") from None
        if not isinstance(obj, dict):
            raise EngineFailed("malformed stream chunk: not a JSON object")
        if "error" in obj or obj.get("object") == "error":
            err = obj.get("error", obj)
            message = err.get("message") if isinstance(err, dict) else str(err)
            status = _client_error_status(err)
            if status is not None:  # the engine refused the request itself (e.g. a token id out of vocabulary)
                raise EngineRejected(str(message), status=status,
                                     param=err.get("param") if isinstance(err.get("param"), str) else None)
            raise EngineFailed(f"engine error in stream: {message}")
        self.chunks += 1
        if not self.head:
            self.head = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if obj.get(k) is not None}
        if obj.get("usage"):
            self.usage = obj["usage"]
        for c in obj.get("choices") or ():
            self._add_choice(c)

    def _add_choice(self, c: dict[str, Any]) -> None:
        index = int(c.get("index") or 0)
        choice = self.choices.get(index)
        if choice is None:
            choice = self.choices[index] = _Choice(index)
        if self.endpoint == "chat":
            delta = c.get("delta") or {}
            if delta.get("role"):
                choice.role = delta["role"]
            if delta.get("content"):
                choice.text.append(delta["content"])
            if delta.get("refusal"):
                if choice.refusal is None:
                    choice.refusal = []
                choice.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(choice, call)
        elif c.get("text"):
            choice.text.append(c["text"])
        logprobs = c.get("logprobs")
        if logprobs:
            if choice.logprobs is None:
                choice.logprobs = {}
            for key, value in logprobs.items():
                if isinstance(value, list):
                    choice.logprobs.setdefault(key, []).extend(value)
        if c.get("finish_reason") is not None:
            choice.finish_reason = c["finish_reason"]
        if c.get("stop_reason") is not None:
            choice.stop_reason = c["stop_reason"]

    @staticmethod
    def _add_tool_call(choice: _Choice, call: dict[str, Any]) -> None:
        index = int(call.get("index") or 0)
        merged = choice.tool_calls.get(index)
        if merged is None:
            merged = choice.tool_calls[index] = {"id": None, "type": "function",
                                                 "function": {"name": "", "arguments": ""}}
        if call.get("id"):
            merged["id"] = call["id"]
        if call.get("type"):
            merged["type"] = call["type"]
        fn = call.get("function") or {}
        if fn.get("name"):
            merged["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            merged["function"]["arguments"] += fn["arguments"]

    def response(self) -> dict[str, Any]:
        """The complete response as OpenAI's non-streamed JSON."""
        if not self.chunks:
            raise EngineFailed("the engine's stream ended before any answer")
        chat = self.endpoint == "chat"
        body: dict[str, Any] = {"id": self.head.get("id"), "object": "chat.completion" if chat else "text_completion",
                                "created": self.head.get("created"), "model": self.head.get("model")}
        if "system_fingerprint" in self.head:
            body["system_fingerprint"] = self.head["system_fingerprint"]
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            out: dict[str, Any] = {"index": index}
            if chat:
                message: dict[str, Any] = {"role": c.role, "content": "".join(c.text) if c.text or not c.tool_calls
                                           else None}
                if c.refusal is not None:
                    message["refusal"] = "".join(c.refusal)
                if c.tool_calls:
                    message["tool_calls"] = [c.tool_calls[i] for i in sorted(c.tool_calls)]
                out["message"] = message
            else:
                out["text"] = "".join(c.text)
            out["logprobs"] = c.logprobs
            out["finish_reason"] = c.finish_reason
            if c.stop_reason is not None:
                out["stop_reason"] = c.stop_reason
            choices.append(out)
        body["choices"] = choices
        if self.usage is not None:
            body["usage"] = self.usage
        return body

"""The items of a Response and the Responses SSE events of one streamed answer, built from chat chunks."""

from __future__ import annotations

import json
import uuid
from typing import Any


def text_part(text: str) -> dict[str, Any]:
    """An `output_text` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, status: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    """An assistant `message` output item."""
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> dict[str, Any]:
    """A `function_call` output item."""
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


class ResponseStream:
    """One streamed Response being built: items are opened and closed one at a time, as OpenAI streams them."""

    def __init__(self) -> None:
        self.seq = 0
        self.output: list[dict[str, Any]] = []  # closed items, final form
        self.open: dict[str, Any] | None = None  # the item being streamed (its `added` form, growing)
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.serving: Any = None

    def event(self, kind: str, **fields: Any) -> str:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), ensure_ascii=False)}\n\n"

    @property
    def index(self) -> int:
        """The output index of the open item."""
        return len(self.output)

    def chunk(self, chunk: dict[str, Any]) -> list[str]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        if "serving" in chunk:
            self.serving = chunk["serving"]
        events: list[str] = []
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self.text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self.tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def text(self, delta: str) -> list[str]:
        events: list[str] = []
        item = self.open
        if item is None or item["type"] != "message":
            events += self.close_open("completed")
            item = self.open = message_item(f"msg_{uuid.uuid4().hex}", "in_progress", [])
            events.append(self.event("response.output_item.added", output_index=self.index, item=item))
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=self.index,
                                     content_index=0, part=text_part("")))
            item["content"].append(text_part(""))
        item["content"][0]["text"] += delta
        events.append(self.event("response.output_text.delta", item_id=item["id"], output_index=self.index,
                                 content_index=0, delta=delta, logprobs=[]))
        return events

    def tool_call(self, call: dict[str, Any]) -> list[str]:
        events: list[str] = []
        fn = call.get("function") or {}
        item = self.calls.get(call.get("index", 0))
        if item is not None and fn.get("name") and not item["name"]:
            item["name"] = fn["name"]  # a name sent after the call's first delta (OpenAI sends it first)
        if item is None:
            events += self.close_open("completed")
            item = self.open = call_item(f"fc_{uuid.uuid4().hex}", call.get("id") or f"call_{uuid.uuid4().hex}",
                                          fn.get("name") or "", "", "in_progress")
            self.calls[call.get("index", 0)] = item
            events.append(self.event("response.output_item.added", output_index=self.index, item=item))
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            if item is self.open:
                events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                         output_index=self.index, delta=fn["arguments"]))
            # else: a late fragment of a call already closed (vLLM streams calls one after another): the final
            # Response still has the whole arguments
        return events

    def close_open(self, status: str) -> list[str]:
        """Close the open item: its `done` events; it moves to `output`."""
        item, self.open = self.open, None
        if item is None:
            return []
        item["status"] = status
        events: list[str] = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", item_id=item["id"], output_index=self.index,
                                     content_index=0, text=part["text"], logprobs=[]))
            events.append(self.event("response.content_part.done", item_id=item["id"], output_index=self.index,
                                     content_index=0, part=part))
        else:
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"],
                                     output_index=self.index, name=item["name"], arguments=item["arguments"]))
        events.append(self.event("response.output_item.done", output_index=self.index, item=item))
        self.output.append(item)
        return events

    def abandon(self) -> None:
        """Move the open item to `output` as `incomplete`, without events (the stream failed)."""
        if self.open is not None:
            self.open["status"] = "incomplete"
            self.output.append(self.open)
            self.open = None

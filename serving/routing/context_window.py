"""Context-window fallback: a prompt that cannot fit a tier's context skips that tier before any call.

The gateway does not tokenize: it takes a lower bound of the prompt's tokens (its UTF-8 bytes / `BYTES_PER_TOKEN`;
BPE tokenizers average about 4 bytes per token on English text and code, so 6 undercounts nearly every prompt)
plus the completion tokens the request asks for, as the engine counts them (vLLM refuses a request whose prompt
and `max_tokens` together exceed `max_model_len`). A tier is skipped only when even that lower bound does not fit,
so a tier that could serve the request is never skipped; a prompt the bound lets through but the engine refuses
still moves on to the next tier (the refusal is a client error, not a fault).
"""

from __future__ import annotations

import json
from typing import Any

BYTES_PER_TOKEN = 6


def _text_bytes(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "replace"))
    if isinstance(value, list):
        return sum(_text_bytes(v) for v in value)
    if isinstance(value, dict):
        return _text_bytes(value.get("text")) + _text_bytes(value.get("content"))
    return 0


def prompt_tokens_lower_bound(endpoint: str, request: Any) -> int:
    """At least this many prompt tokens: message texts (chat) or the prompt (completions), and tool schemas."""
    if endpoint == "chat":
        size = 0
        for m in getattr(request, "messages", None) or []:
            size += _text_bytes(m.get("content") if isinstance(m, dict) else getattr(m, "content", None))
        tools = getattr(request, "tools", None)
        if tools:
            size += len(json.dumps([t if isinstance(t, dict) else t.model_dump() for t in tools]))
    else:
        prompt = getattr(request, "prompt", None)
        size = _text_bytes(prompt) if not (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)) \
            else len(prompt) * BYTES_PER_TOKEN  # token ids: exactly their number
    return size // BYTES_PER_TOKEN


def requested_completion_tokens(request: Any) -> int:
    return int(getattr(request, "max_completion_tokens", None) or getattr(request, "max_tokens", None) or 0)


def does_not_fit(endpoint: str, request: Any, window: int | None) -> tuple[int, int] | None:
    """(prompt tokens at least, completion tokens asked) when they cannot fit `window` tokens, else None."""
    if window is None:
        return None
    prompt = prompt_tokens_lower_bound(endpoint, request)
    completion = requested_completion_tokens(request)
    return (prompt, completion) if prompt + completion > window else None

"""Exact-match response cache keys: deterministic requests only, normalised, per tenant.

A request is deterministic when it asks for temperature 0 or gives a seed (and one choice). The key is a SHA-256
of the tenant, the endpoint and the body with its keys sorted and the fields that do not change the answer
dropped (`stream`, `stream_options`, `user`), so a streamed and a non-streamed request share an entry.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

IGNORED_FIELDS = frozenset({"stream", "stream_options", "user"})


def is_deterministic(body: dict[str, Any]) -> bool:
    """temperature 0 or a seed, and a single choice."""
    if (body.get("n") or 1) != 1:
        return False
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_control(header: str | None) -> tuple[bool, bool]:
    """(may read the cache, may store) from a request's `cache-control` header."""
    if not header:
        return True, True
    directives = {d.strip().split("=", 1)[0].lower() for d in header.split(",")}
    return "no-cache" not in directives and "no-store" not in directives, "no-store" not in directives


def cache_key(prefix: str, tenant: str, endpoint: str, body: dict[str, Any],
              overrides: dict[str, Any] | None = None) -> str:
    """The Redis key of a request's cached answer."""
    normal = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    payload = json.dumps([tenant, endpoint, normal, overrides], sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False)
    return prefix + "cache:" + hashlib.sha256(payload.encode()).hexdigest()

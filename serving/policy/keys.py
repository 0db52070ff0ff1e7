"""Gateway API keys: generated once, shown once, stored only as a SHA-256 digest (never in plain text or logs).

A key is 32 random bytes (256 bits), so a fast digest is safe to store: it cannot be brute-forced, and a lookup
by digest costs one hash per request (a slow password hash would cost milliseconds on the hot path).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from serving.config import LimitsConfig

KEY_PREFIX = "sk-serving-"


def new_key() -> str:
    """A fresh API key (`sk-serving-` + 43 URL-safe characters)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    """The stored form of a key: its SHA-256 hex digest."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_secret(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison of two secrets (False when either is missing)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(key_digest(given), key_digest(expected))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header (None if absent or another scheme)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(frozen=True)
class KeyRecord:
    """What the gateway knows about a key: never the key itself."""

    id: str
    tenant: str
    name: str
    created: float
    hint: str  # the key's first characters, to recognise it in lists
    limits: LimitsConfig | None = None
    revoked: float | None = None

    def to_redis(self) -> dict[str, str]:
        out = {"id": self.id, "tenant": self.tenant, "name": self.name, "created": f"{self.created:.3f}",
               "hint": self.hint}
        if self.limits is not None:
            out["limits"] = self.limits.model_dump_json(exclude_none=True)
        if self.revoked is not None:
            out["revoked"] = f"{self.revoked:.3f}"
        return out

    @classmethod
    def from_redis(cls, rec: dict[str, str]) -> KeyRecord:
        limits = LimitsConfig.model_validate(json.loads(rec["limits"])) if rec.get("limits") else None
        return cls(id=rec["id"], tenant=rec["tenant"], name=rec.get("name", ""), created=float(rec["created"]),
                   hint=rec.get("hint", ""), limits=limits,
                   revoked=float(rec["revoked"]) if rec.get("revoked") else None)

    def public(self) -> dict[str, Any]:
        """The record as the admin API shows it."""
        return {"id": self.id, "object": "api_key", "tenant": self.tenant, "name": self.name,
                "created": int(self.created), "hint": self.hint + "...",
                "limits": self.limits.model_dump(exclude_none=True) if self.limits else None,
                "revoked": int(self.revoked) if self.revoked else None}

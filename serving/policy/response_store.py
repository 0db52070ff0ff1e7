"""Stored Responses API answers (`previous_response_id`, `GET`/`DELETE /v1/responses/{id}`), per tenant in Redis.

A record is one JSON document under `<prefix>response:<tenant>:<id>` with a TTL: a tenant's key space never holds
another tenant's responses, so one tenant can never read, continue or delete another's (it gets a 404, as for an id
that never existed).
"""

from __future__ import annotations

import json
from typing import Any

from serving.policy.store import PolicyStore


class ResponseStore:
    """Responses kept in the policy store's Redis; every method raises `StoreUnavailable` when Redis is down."""

    def __init__(self, store: PolicyStore, ttl_s: int):
        self.store = store
        self.ttl_s = ttl_s

    def _key(self, tenant: str, response_id: str) -> str:
        return self.store.key("response", tenant, response_id)

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        """The record stored under `response_id` for `tenant` (None: none, expired, or another tenant's)."""
        raw = await self.store.record_get(self._key(tenant, response_id))
        return json.loads(raw) if raw else None

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        """Store (or replace) a record for `ttl_s` seconds."""
        text = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        await self.store.record_put(self._key(tenant, response_id), text, self.ttl_s)

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Delete a record; False if there was none for this tenant."""
        return await self.store.record_delete(self._key(tenant, response_id))

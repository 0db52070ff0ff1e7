"""An in-memory stand-in for `serving.policy.response_store.ResponseStore` (same async get/put/delete)."""

from __future__ import annotations

import json
from typing import Any

from serving.policy.response_store import ResponseStore
from serving.policy.store import StoreUnavailable


class FakeResponseStore(ResponseStore):
    """Records per (tenant, id), JSON round-tripped like Redis; `down = True` makes every call raise
    `StoreUnavailable`."""

    def __init__(self) -> None:  # no PolicyStore behind it
        self.records: dict[tuple[str, str], str] = {}
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("ConnectionError")

    async def get(self, tenant: str, response_id: str) -> dict[str, Any] | None:
        self._check()
        raw = self.records.get((tenant, response_id))
        return json.loads(raw) if raw else None

    async def put(self, tenant: str, response_id: str, record: dict[str, Any]) -> None:
        self._check()
        self.records[(tenant, response_id)] = json.dumps(record)

    async def delete(self, tenant: str, response_id: str) -> bool:
        self._check()
        return self.records.pop((tenant, response_id), None) is not None

"""The admin API (`/admin/v1`): API keys and kill switches, behind a separate admin credential.

    POST   /admin/v1/keys                  {"tenant", "name"?, "limits"?} -> the key, shown once
    GET    /admin/v1/keys[?tenant=t]       key records (id, tenant, name, hint, limits, revoked); never keys
    DELETE /admin/v1/keys/{id}             revoke (effective at once on every replica)
    GET    /admin/v1/kill-switches         engaged switches
    PUT    /admin/v1/kill-switches/{scope} {"reason"}: scope is `global`, `tenant:<t>`, `route:<model>` or `key:<id>`
    DELETE /admin/v1/kill-switches/{scope}
    GET    /admin/v1/tenants/{t}/usage     tokens today, USD this hour and today, against the limits

The admin credential is the `policies.auth.admin_key_env` variable (SERVING_ADMIN_KEY), sent as a Bearer token.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import JSONResponse, Response

from serving.api.errors import APIError
from serving.api.protocol import parse_json_object
from serving.config import NAME_RE, LimitsConfig
from serving.policy.keys import KeyRecord, bearer_token, key_digest, new_key, same_secret
from serving.policy.layer import PolicyLayer
from serving.policy.limits import Scope, counter_keys
from serving.policy.store import PolicyStore, StoreUnavailable

KILL_SCOPES = ("global", "tenant:", "route:", "key:")


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str = Field(min_length=1, max_length=63)
    name: str = Field("", max_length=200)
    limits: LimitsConfig | None = None


class KillSwitch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=500)


def _validated(cls: type[BaseModel], raw: bytes) -> Any:
    body = parse_json_object(raw)
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        raise APIError(400, f"Invalid value for '{param}': {err['msg']}", param=param) from None


def admin_router(policy: PolicyLayer) -> APIRouter:
    """The /admin/v1 routes over the gateway's policy layer."""
    router = APIRouter(prefix="/admin/v1")

    def store_for(request: Request) -> PolicyStore:
        expected = os.environ.get(policy.cfg.auth.admin_key_env)
        if not expected:
            raise APIError(503, f"The admin API is off: set {policy.cfg.auth.admin_key_env} on the gateway.",
                           code="admin_disabled")
        if not same_secret(bearer_token(request.headers.get("authorization")), expected):
            raise APIError(401, "Incorrect admin credential.", code="invalid_admin_key")
        if policy.store is None:
            raise APIError(503, "The admin API needs the policy store: set policies.redis.url (or REDIS_URL).",
                           code="policy_unavailable")
        return policy.store

    async def call(coro: Any) -> Any:
        try:
            return await coro
        except StoreUnavailable:
            raise APIError(503, "Redis is unreachable; retry later.", code="policy_unavailable",
                           headers={"retry-after": "1"}) from None

    @router.post("/keys")
    async def create_key(request: Request) -> Response:
        store = store_for(request)
        spec: KeyCreate = _validated(KeyCreate, await request.body())
        if not NAME_RE.match(spec.tenant):
            raise APIError(400, f"invalid tenant name {spec.tenant!r}: use lower-case letters, digits, '.', '-', '_'",
                           param="tenant")
        key = new_key()
        record = KeyRecord(id="key_" + secrets.token_hex(6), tenant=spec.tenant, name=spec.name, created=time.time(),
                           hint=key[:15], limits=spec.limits)
        await call(store.put_key(key_digest(key), record.to_redis()))
        body = {**record.public(), "key": key}
        if spec.tenant not in policy.tenants:
            body["warning"] = f"tenant {spec.tenant!r} is not in the platform config: default limits and routes apply"
        return JSONResponse(body, status_code=201)

    @router.get("/keys")
    async def list_keys(request: Request, tenant: str | None = None) -> Response:
        store = store_for(request)
        records = [KeyRecord.from_redis(r) for r in await call(store.list_keys())]
        data = [r.public() for r in sorted(records, key=lambda r: r.created) if tenant is None or r.tenant == tenant]
        return JSONResponse({"object": "list", "data": data})

    @router.delete("/keys/{key_id}")
    async def revoke_key(request: Request, key_id: str) -> Response:
        store = store_for(request)
        rec = await call(store.revoke_key(key_id, time.time()))
        if rec is None:
            raise APIError(404, f"No API key has the id {key_id!r}.", code="key_not_found")
        return JSONResponse(KeyRecord.from_redis(rec).public())

    @router.get("/kill-switches")
    async def list_kills(request: Request) -> Response:
        store = store_for(request)
        kills = await call(store.kills())
        return JSONResponse({"object": "list", "data": [{"scope": k, **v} for k, v in sorted(kills.items())]})

    def valid_scope(scope: str) -> str:
        if scope != "global" and not any(scope.startswith(p) and len(scope) > len(p) for p in KILL_SCOPES[1:]):
            raise APIError(400, f"invalid kill-switch scope {scope!r}: use global, tenant:<name>, route:<model> or "
                           "key:<id>", param="scope")
        return scope

    @router.put("/kill-switches/{scope}")
    async def engage(request: Request, scope: str) -> Response:
        store = store_for(request)
        raw = await request.body()
        spec = _validated(KillSwitch, raw) if raw.strip() else KillSwitch()
        await call(store.set_kill(valid_scope(scope), spec.reason, time.time()))
        return JSONResponse({"scope": scope, "reason": spec.reason, "engaged": True})

    @router.delete("/kill-switches/{scope}")
    async def release(request: Request, scope: str) -> Response:
        store = store_for(request)
        removed = await call(store.clear_kill(valid_scope(scope)))
        return JSONResponse({"scope": scope, "engaged": False, "was_engaged": removed})

    @router.get("/tenants/{tenant}/usage")
    async def usage(request: Request, tenant: str) -> Response:
        store = store_for(request)
        tcfg = policy.tenants.get(tenant)
        limits = policy.cfg.limits.merged(tcfg.limits if tcfg else None)
        keys = counter_keys(store.prefix, Scope("tenant", tenant, limits), time.time())
        tokens_day, usd_hour, usd_day = await call(store.read_numbers(list(keys.values())))
        return JSONResponse({
            "tenant": tenant, "configured": tcfg is not None,
            "tokens_today": int(tokens_day), "usd_this_hour": round(usd_hour, 6), "usd_today": round(usd_day, 6),
            "limits": limits.model_dump(exclude_none=True),
        })

    return router

"""One request's policy state (`RequestContext`), who sent it (`Principal`) and the policy errors: the types the
policy layer, the pipeline and the audit line share."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from serving.policy.admission import Slot
from serving.policy.keys import KeyRecord
from serving.policy.limits import AdmitPlan, Scope


class PolicyError(Exception):
    """A request refused by a policy (the API layer answers it in the OpenAI error envelope)."""

    def __init__(self, status: int, message: str, code: str, headers: dict[str, str] | None = None,
                 param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}


class PolicySetupError(ValueError):
    """Policies that cannot run as configured (e.g. API keys on but no Redis URL)."""


@dataclass
class Principal:
    """Who sent a request: the key's tenant (or the tenant header when API keys are off)."""

    tenant: str | None
    key: KeyRecord | None = None
    digest: str | None = None


@dataclass
class RequestContext:
    """One request's policy state, from arrival to its audit line."""

    endpoint: str
    request_id: str | None
    wall: float
    start: float
    principal: Principal | None = None
    tenant: str = "default"
    label: str = "default"
    model: str | None = None
    stream: bool = False
    plan: AdmitPlan | None = None
    scopes: list[Scope] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    cache_key: str | None = None
    cache: str = "off"  # off | bypass | miss | hit
    cache_store: bool = False
    semantic: tuple[str, Any] | None = None  # (bucket, prompt embedding) of a semantic-cache miss
    injection: list[str] = field(default_factory=list)
    pii: Counter[str] = field(default_factory=Counter)
    details: dict[str, Any] = field(default_factory=dict)  # route, tier, attempts, versions, flagged
    usage: dict[str, Any] | None = None
    cost_usd: float = 0.0
    t_first: float | None = None
    charged_tokens: int = 0
    charged_usd: float = 0.0
    degraded: bool = False  # admitted without Redis (fail-open)
    deferred: bool = False  # a stream: completed by its finish hook
    slot: Slot | None = None  # the admission slot it holds, given back when it is complete
    done: bool = False
    prompt: Any = None

    @property
    def tokens(self) -> int:
        u = self.usage or {}
        return int(u.get("prompt_tokens") or 0) + int(u.get("completion_tokens") or 0)

"""The Engine interface the gateway calls, and the errors an engine call may raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

Endpoint = Literal["chat", "completions"]


class EngineUnavailable(Exception):
    """The engine cannot take the request now (no ready replica, replica died, back-pressure)."""


class EngineTimeout(Exception):
    """The engine did not answer within the deadline."""


class EngineFailed(Exception):
    """The engine raised while serving the request (a server-side fault, not a client error)."""


class EngineRateLimited(EngineUnavailable):
    """The engine (a cloud API) refused the request for now (HTTP 429, or 503 with retry-after)."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineRejected(Exception):
    """The engine refused this request as invalid (a 4xx from a cloud API): retrying it will not help."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param


TRANSIENT_ERRORS = (EngineUnavailable, EngineTimeout, EngineFailed)
"""Faults worth a retry (with backoff) and counted by a tier's circuit breaker."""


class Engine(Protocol):
    """A model served behind the gateway.

    `generate` yields, for a streamed request, SSE strings (`"data: {...}\\n\\n"`, ending in
    `"data: [DONE]\\n\\n"`); for a non-streamed request, one response object with `model_dump_json()`
    and `usage`; or, first and only, an error object with `.error.{message,type,param,code}` for a
    request the engine rejects (e.g. context length exceeded).
    """

    name: str

    def generate(self, endpoint: Endpoint, request: Any) -> AsyncIterator[Any]:
        """Start one request; raise `EngineUnavailable`/`EngineTimeout`/`EngineFailed` on faults."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine is not ready to serve."""
        ...

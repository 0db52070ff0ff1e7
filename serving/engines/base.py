"""The Engine interface the gateway calls: typed results and the errors an engine call may raise."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, Literal, NewType, Protocol

Endpoint = Literal["chat", "completions", "embeddings"]

Chunk = NewType("Chunk", str)
"""One server-sent event of a streamed answer, exactly as it goes on the wire: `"data: {...}\\n\\n"` (the last one
is `"data: [DONE]\\n\\n"`)."""


class Completed:
    """A complete, non-streamed answer: the provider's response object (vLLM's or an SDK's pydantic model, or an
    OpenAI-shaped dict). `body` is its JSON form, computed once."""

    __slots__ = ("_body", "response")

    def __init__(self, response: Any):
        self.response = response
        self._body: dict[str, Any] | None = response if isinstance(response, dict) else None

    @property
    def body(self) -> dict[str, Any]:
        """The answer as a JSON object (the fields the engine set)."""
        if self._body is None:
            self._body = self.response.model_dump(mode="json", exclude_unset=True)
        return self._body

    def __repr__(self) -> str:
        return f"Completed({type(self.response).__name__})"


class Rejected:
    """The engine refused the request as it is (e.g. vLLM's 400 for a prompt longer than the context): the first
    and only item of the call. `status` is the HTTP status the engine gave."""

    __slots__ = ("code", "message", "param", "status", "type")

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def __repr__(self) -> str:
        return f"Rejected({self.status}, {self.message!r})"


EngineItem = Chunk | Completed | Rejected
"""What `Engine.generate` yields: chunks for a streamed request, one `Completed` for a non-streamed one, or one
`Rejected` first and only."""


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
    """The engine refused this request as invalid (a 4xx): retrying it will not help. `detail`: the engine's own
    `Rejected` item, when it answered with one."""

    def __init__(self, message: str, status: int = 400, code: str | None = None, param: str | None = None,
                 detail: Rejected | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.detail = detail


TRANSIENT_ERRORS = (EngineUnavailable, EngineTimeout, EngineFailed)
"""Faults worth a retry (with backoff) and counted by a tier's circuit breaker."""


class Engine(Protocol):
    """A model served behind the gateway (a Ray Serve LLM deployment or a cloud API)."""

    name: str

    def generate(self, endpoint: Endpoint, request: Any) -> AsyncGenerator[EngineItem, None]:
        """Start one request (a vLLM/OpenAI protocol request object); raise `EngineUnavailable`/`EngineTimeout`/
        `EngineFailed` on faults, `EngineRejected` for a request the engine refuses."""
        ...

    async def check_health(self) -> None:
        """Raise if the engine is not ready to serve."""
        ...

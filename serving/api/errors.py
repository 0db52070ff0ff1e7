"""The OpenAI error envelope: `{"error": {"message", "type", "param", "code"}}` on every failure."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from serving.engines.base import Rejected

logger = logging.getLogger("serving.api")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_error",
    502: "api_error",
    503: "service_unavailable",
    504: "timeout",
}


class APIError(Exception):
    """An error answered to the client in the OpenAI envelope."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPES.get(status, "api_error")
        self.param = param
        self.code = code
        self.headers = headers or {}
        self.extra = extra

    def envelope(self) -> dict[str, Any]:
        """`{"error": {...}}`, plus top-level extension fields (e.g. `serving`) when set."""
        out: dict[str, Any] = {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        }
        if self.extra:
            out.update(self.extra)
        return out

    def response(self, envelope: Callable[[APIError], dict[str, Any]] | None = None) -> Response:
        """The error as an HTTP response: the OpenAI envelope, or the endpoint's own (`envelope`)."""
        return Response(
            json.dumps(envelope(self) if envelope is not None else self.envelope()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def from_engine_error(error: Rejected) -> APIError:
    """Map an engine's refusal (e.g. vLLM's `ErrorResponse`) to an `APIError` with the right status and code."""
    status, message = error.status, error.message
    code = None
    lowered = message.lower()
    if status == 400 and ("context length" in lowered or "maximum model length" in lowered
                          or "model length" in lowered or "too long" in lowered):
        code = "context_length_exceeded"
    if status >= 500:
        # Engine-side faults are not the client's: don't leak internals, keep the status honest.
        logger.warning("engine error %s: %s", status, message)
        return APIError(502 if status == 500 else status, "the engine failed to serve the request",
                        code="engine_error")
    # OpenAI's error types by status (vLLM says "BadRequestError" where OpenAI says "invalid_request_error").
    return APIError(status, message, param=error.param, code=code)


Envelope = Callable[[APIError], dict[str, Any]]
"""An endpoint's own error body for an `APIError` (e.g. the Anthropic Messages API's)."""


def install_error_handlers(app: FastAPI, envelopes: Mapping[str, Envelope] | None = None) -> None:
    """Route every failure (ours, Starlette's 404/405, unexpected bugs) through the envelope: OpenAI's, or for a
    path in `envelopes` (path -> envelope) that endpoint's own."""
    own = dict(envelopes or {})

    def envelope_of(request: Request) -> Envelope | None:
        path = request.url.path.rstrip("/")
        return next((fn for suffix, fn in own.items() if path.endswith(suffix)), None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response(envelope_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "Not found: no such endpoint"
        err = APIError(exc.status_code, message, headers=getattr(exc, "headers", None))
        return err.response(envelope_of(request))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        err = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        error = APIError(400, str(err["msg"]), param=".".join(str(p) for p in err["loc"][1:]) or None)
        return error.response(envelope_of(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error in the gateway")
        return APIError(500, "internal error in the gateway", code="internal_error").response(envelope_of(request))

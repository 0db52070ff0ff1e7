"""What the cloud engines (`openai_compat`, `anthropic_messages`) share: the SDKs' HTTP clients and transport
errors, SSE framing, request bodies, retry-after parsing, secret masking, and upstream HTTP statuses mapped to the
engine errors of `serving.engines.base`."""

from __future__ import annotations

import email.utils
import importlib
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import httpx

from serving.engines.base import Chunk, EngineFailed, EngineRateLimited, EngineRejected, EngineUnavailable

DONE = Chunk("data: [DONE]\n\n")

UNAVAILABLE_STATUSES = frozenset({502, 503, 504, 529})
"""Upstream overloaded or down: try later or elsewhere (`EngineUnavailable`, `EngineRateLimited` with retry-after)."""

CONFIG_ERROR_STATUSES = frozenset({401, 402, 403, 404})
"""A bad API key, billing, permissions or model name: the gateway's configuration, not the client's request."""


def _http_modules() -> tuple[ModuleType, ...]:
    try:
        return (importlib.import_module("httpx2"), httpx)
    except ImportError:
        return (httpx,)


HTTP_TIMEOUT_ERRORS: tuple[type[BaseException], ...] = tuple(m.TimeoutException for m in _http_modules())
HTTP_ERRORS: tuple[type[BaseException], ...] = tuple(m.HTTPError for m in _http_modules())
"""Raw transport errors of httpx2 (current SDKs) and httpx (older SDKs), seen while a stream is read."""


def sdk_http_client(default_client_cls: type, timeout_s: float, max_connections: int) -> tuple[Any, Any]:
    """(http client, timeout) for an SDK: its `DefaultAsyncHttpxClient` (httpx2-based in current SDKs, httpx-based
    in older ones), with the SDK's defaults, our timeout and a connection pool of `max_connections`."""
    module = httpx
    for base in default_client_cls.__mro__:
        root = base.__module__.split(".")[0]
        if root in ("httpx", "httpx2"):
            module = importlib.import_module(root)
            break
    timeout = module.Timeout(timeout_s, connect=min(timeout_s, 10.0))
    limits = module.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return default_client_cls(timeout=timeout, limits=limits), timeout


def sse(data: str) -> Chunk:
    return Chunk(f"data: {data}\n\n")


def request_body(request: Any) -> dict[str, Any]:
    """The fields the client set, as JSON-ready values (aliases as on the wire: `json_schema.schema`)."""
    if isinstance(request, Mapping):
        return {k: v for k, v in request.items() if v is not None}
    return request.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)


def retry_after_seconds(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `retry-after` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Redactor:
    """Masks a secret in texts quoted from upstream (error bodies, exception strings)."""

    def __init__(self, secret: str | None):
        self._secret = secret or None

    def __call__(self, text: str) -> str:
        if self._secret and self._secret in text:
            text = text.replace(self._secret, "***")
        return text

    def leaks(self, exc: BaseException | None) -> bool:
        """Whether `exc` (or its cause chain) quotes the secret."""
        seen = 0
        while exc is not None and seen < 10:
            if self._secret and (self._secret in str(exc) or self._secret in repr(exc.args)):
                return True
            exc, seen = exc.__cause__ or exc.__context__, seen + 1
        return False

    def raise_from(self, error: BaseException, cause: BaseException) -> BaseException:
        """Chain `error` to `cause` unless the cause quotes the secret (then it is dropped)."""
        if self.leaks(cause):
            error.__cause__ = None
            error.__suppress_context__ = True
        else:
            error.__cause__ = cause
        return error


def status_error(
    engine: str,
    status: int,
    message: str,
    headers: Mapping[str, str] | None,
    *,
    code: str | None = None,
    param: str | None = None,
) -> Exception:
    """The engine error for an upstream HTTP error status (the table in `serving.engines.openai_compat`)."""
    where = f"engine {engine}: upstream HTTP {status}"
    retry_after = retry_after_seconds(headers)
    if status == 429:
        return EngineRateLimited(f"{where} (rate limited): {message}", retry_after)
    if status in UNAVAILABLE_STATUSES:
        if retry_after is not None:
            return EngineRateLimited(f"{where} (overloaded): {message}", retry_after)
        return EngineUnavailable(f"{where} (unavailable): {message}")
    if status >= 500 or status in (408, 409):
        return EngineFailed(f"{where}: {message}")
    if status in CONFIG_ERROR_STATUSES:
        what = {
            401: "the API key was refused",
            402: "billing",
            403: "permission denied",
            404: "model or endpoint not found",
        }[status]
        return EngineFailed(f"{where}: {what} (check the provider configuration)")
    return EngineRejected(message, status=status, code=code, param=param)

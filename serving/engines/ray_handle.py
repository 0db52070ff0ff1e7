"""`Engine` over a Ray Serve LLM `LLMServer` deployment, called through its DeploymentHandle."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import ray.exceptions
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle

from serving.engines.base import Chunk, Completed, Endpoint, EngineFailed, EngineItem, EngineUnavailable, Rejected

_UNAVAILABLE = (
    BackPressureError,
    DeploymentUnavailableError,
    ray.exceptions.RayActorError,
    ray.exceptions.ActorUnavailableError,
)


def to_item(item: Any) -> EngineItem:
    """One output of Ray Serve LLM's `LLMServer` (vLLM's protocol objects) as a typed engine item: an SSE string is
    a `Chunk`, vLLM's `ErrorResponse` a `Rejected`, a response object a `Completed`."""
    if isinstance(item, str):
        return Chunk(item)
    info = getattr(item, "error", None)
    if info is not None and not hasattr(item, "choices"):
        return Rejected(int(getattr(info, "code", 500) or 500), str(getattr(info, "message", "engine error")),
                        type=getattr(info, "type", None), param=getattr(info, "param", None))
    return Completed(item)


class RayLLMEngine:
    """Streams from an `LLMServer` replica; flattens Ray Serve LLM's per-interval lists of SSE chunks."""

    def __init__(self, name: str, handle: DeploymentHandle):
        self.name = name
        self._stream_handle = handle.options(stream=True)
        self._handle = handle

    async def generate(self, endpoint: Endpoint, request: Any) -> AsyncGenerator[EngineItem, None]:
        method = getattr(self._stream_handle, endpoint)  # chat / completions / embeddings
        responses: Any = method.remote(request)  # a DeploymentResponseGenerator (stream=True)
        finished = False
        try:
            async for item in responses:  # SSE strings are already Chunks: no conversion on the per-chunk path
                if type(item) is list:
                    for sub in item:
                        yield sub if type(sub) is str else to_item(sub)  # type: ignore[misc]  # str is a Chunk
                else:
                    yield item if type(item) is str else to_item(item)  # type: ignore[misc]  # str is a Chunk
            finished = True
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"engine {self.name} is unavailable: {type(exc).__name__}") from exc
        except RequestCancelledError:
            raise
        except ray.exceptions.RayTaskError as exc:
            cause = type(exc.cause).__name__ if getattr(exc, "cause", None) else "error"
            raise EngineFailed(f"engine {self.name} failed: {cause}") from exc
        finally:
            if not finished:
                responses.cancel()  # the client went away or we failed: abort the request in vLLM

    async def check_health(self) -> None:
        try:
            await self._handle.check_health.remote()
        except _UNAVAILABLE as exc:
            raise EngineUnavailable(f"engine {self.name} is unavailable: {type(exc).__name__}") from exc

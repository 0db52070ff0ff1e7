"""Endpoint wire formats around the one internal request.

Every inference endpoint is served by the same pipeline on an OpenAI chat/completions request (vLLM's protocol
objects). An endpoint whose wire format is not OpenAI's (the Anthropic Messages API, the OpenAI Responses API)
translates at the edge: its parser builds the internal chat request and attaches an `Edge`, which turns the
pipeline's OpenAI answer (a `chat.completion` body, or `chat.completion.chunk` SSE events) back into the endpoint's
own format and renders errors in its own envelope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from serving.api.errors import APIError


class Edge(Protocol):
    """The wire format of one request's endpoint (created by that endpoint's parser, one per request)."""

    name: str
    """The endpoint's label in metrics and audit lines (`messages`, `responses`)."""

    async def prepare(self, parsed: Any, tenant: str) -> None:
        """Complete the internal request once the caller is known (e.g. load `previous_response_id` of this tenant);
        raises `APIError`."""
        ...

    def render(self, body: dict[str, Any]) -> dict[str, Any]:
        """The endpoint's JSON answer for the pipeline's `chat.completion` body (with `usage`; a route's answer also
        has the `serving` extension field)."""
        ...

    async def finish(self, rendered: dict[str, Any]) -> None:
        """Called with `render`'s result before it is sent (e.g. store the response for `previous_response_id`)."""
        ...

    def stream(self, events: AsyncIterator[str]) -> AsyncIterator[str]:
        """The endpoint's SSE events for the pipeline's stream: `data: {chat.completion.chunk}\\n\\n` events, the
        usage chunk (`"choices": []`, always present, maybe with `serving`) and `data: [DONE]\\n\\n`; a fault mid-stream
        arrives as an OpenAI error event `data: {"error": {...}}\\n\\n` followed by `[DONE]`."""
        ...

    def error_body(self, exc: APIError) -> dict[str, Any]:
        """The endpoint's error envelope for `exc`."""
        ...


async def aiter_of(events: Any) -> AsyncIterator[str]:
    """An async iterator over a sync or async iterable of SSE strings."""
    if hasattr(events, "__aiter__"):
        async for e in events:
            yield e
    else:
        for e in events:
            yield e

"""ASGI middleware of the gateway app."""

from __future__ import annotations

import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class RequestIdMiddleware:
    """Gives every response an `x-request-id` (the client's, if it sent one).

    Behind Ray Serve's HTTP proxy, the proxy already sets the header (from the client's or a new id) and
    `add_header=False` avoids a duplicate; the id is still put in `scope["state"]` for logs.
    """

    def __init__(self, app: ASGIApp, add_header: bool = True):
        self.app = app
        self.add_header = add_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not self.add_header:
            if rid:
                scope.setdefault("state", {})["request_id"] = rid
            await self.app(scope, receive, send)
            return
        if not rid:
            rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        raw_rid = rid.encode("latin-1")

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", raw_rid))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_id)

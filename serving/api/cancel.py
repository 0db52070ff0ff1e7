"""Client disconnects: racing work against the client going away, cancelling the work (engines abort) if it does."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer started (recorded as 499)."""


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only `http.disconnect` can come)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request | None, work: Awaitable[T]) -> T:
    """Await `work`; if the client disconnects first, cancel it (engine calls abort) and raise `ClientGone`."""
    task = asyncio.ensure_future(work)
    if request is None:
        return await task
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone()
    return task.result()

"""The REST front's side of a call: its deadline, and noticing that the client left."""

from __future__ import annotations

import asyncio

from fastapi import Request

from ..core import Call
from ..metrics import StageTimer


async def request_gone(request: Request, pause: float = 0.02) -> None:
    """Return when the client disconnects.

    Once the body has been read, the ASGI server answers `receive()` only when the client
    goes away, with `http.disconnect`: waiting on it costs nothing while the work runs.
    (Polling `Request.is_disconnected()` every 20 ms instead cost a fifth of the event
    loop's time at concurrency 64.) Any other message is unexpected at this point; the
    pause keeps a server that sends them anyway from spinning.
    """
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(pause)


def rest_call(request: Request, endpoint: str, timeout: float | None) -> Call:
    """The core's view of this request, made as it starts (the parse stage counts reading the body)."""
    return Call(StageTimer(request.app.state.metrics, endpoint), timeout, lambda: request_gone(request))

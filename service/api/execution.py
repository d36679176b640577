"""Running an engine call under the request's deadline, and stopping it if the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import Request

from ..errors import DeadlineExceededError, GenserveError, ShuttingDownError

if TYPE_CHECKING:  # lifecycle.py imports the API's error responses
    from ..lifecycle import Lifecycle

T = TypeVar("T")


class ClientGoneError(GenserveError):
    """The client disconnected; the work stopped and nobody will read this answer."""

    status = 499
    type = "client-closed-request"
    title = "Client closed request"


async def _disconnected(request: Request, pause: float) -> None:
    """Return when the client disconnects.

    Once the body has been read, the ASGI server answers `receive()` only when the client
    goes away, with `http.disconnect`: waiting on it costs nothing while the work runs.
    (Polling `Request.is_disconnected()` every 20 ms instead cost a fifth of the event
    loop's time at concurrency 64.) Any other message is unexpected at this point; the
    pause keeps a server that sends them anyway from spinning.
    """
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(pause)


async def guarded(
    request: Request,
    work: Coroutine[Any, Any, T],
    timeout: float,
    poll: float = 0.02,
    lifecycle: Lifecycle | None = None,
) -> T:
    """Await `work`, cancelling it on deadline (504) or client disconnect. Call it after the
    request body has been read.

    Cancelling stops a sampling loop at its next graph call, and a cancelled call still
    waiting in the batcher's queue gives its slot back. With the server's `lifecycle`, the
    end of a drain's grace period stops the work too (503, ShuttingDownError).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request, poll))
    if lifecycle is not None:
        lifecycle.work.add(task)  # the end of a drain's grace period may stop it
    try:
        done, _ = await asyncio.wait({task, watcher}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if lifecycle is not None:
            lifecycle.work.discard(task)
    if task in done:
        if task.cancelled() and lifecycle is not None and lifecycle.abandoning:
            raise ShuttingDownError(
                "the server shut down before the answer was ready; retry on another replica"
            )
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if watcher in done:
        raise ClientGoneError("the client disconnected before the answer was ready")
    raise DeadlineExceededError(f"the request did not finish within its deadline of {timeout:g} s")

"""One call's circumstances, whatever its transport: its deadline, how to tell that the
client left, and where its stage timings go; and running the work under them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import DeadlineExceededError, GenserveError, ShuttingDownError
from ..metrics import StageTimer

if TYPE_CHECKING:  # lifecycle.py imports the API's error responses
    from ..lifecycle import Lifecycle

T = TypeVar("T")
# Returns (or raises) when the client has gone away; never returns while it is there.
Gone = Callable[[], Awaitable[None]]


class ClientGoneError(GenserveError):
    """The client disconnected; the work stopped and nobody will read this answer."""

    status = 499
    type = "client-closed-request"
    title = "Client closed request"


@dataclass
class Call:
    """What the core needs from a front for one operation."""

    stages: StageTimer  # parse and compute are closed by the core, serialize by the front
    timeout: float | None = None  # the client's deadline (s), capped by the server's
    gone: Gone | None = None  # None: the transport cannot tell


async def guarded(
    work: Coroutine[Any, Any, T],
    timeout: float,
    gone: Gone | None = None,
    lifecycle: Lifecycle | None = None,
) -> T:
    """Await `work`, cancelling it on deadline (504) or when the client goes (499).

    Cancelling stops a sampling loop at its next graph call, and a cancelled call still
    waiting in the batcher's queue gives its slot back. With the server's `lifecycle`, the
    end of a drain's grace period stops the work too (503, ShuttingDownError).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(gone()) if gone is not None else None
    if lifecycle is not None:
        lifecycle.work.add(task)  # the end of a drain's grace period may stop it
    waited = {task} if watcher is None else {task, watcher}
    try:
        done, _ = await asyncio.wait(waited, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The caller was cancelled (a gRPC client cancelled its call): the work goes too.
        task.cancel()
        raise
    finally:
        if watcher is not None:
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
    if watcher is not None and watcher in done:
        raise ClientGoneError("the client disconnected before the answer was ready")
    raise DeadlineExceededError(f"the request did not finish within its deadline of {timeout:g} s")

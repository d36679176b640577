"""The server's life: starting -> ready | degraded -> draining -> stopped, and graceful shutdown.

On SIGTERM (or SIGINT) `GracefulServer` does not stop listening at once, as plain uvicorn
does. It turns the app to *draining*: /health/ready answers 503 at once, every new request
gets a 503 problem with Retry-After and `Connection: close` (the socket still answers, so
a load balancer sees a retryable refusal rather than a reset and sends the request to
another replica), /health/live stays 200, and requests already running finish. When none
is left, or the grace period is over, uvicorn's ordinary shutdown runs: it closes the
listener, the lifespan unloads the models, and the process exits 0.

`uvicorn --factory service.app:create_app` serves the same app without this: plain uvicorn
closes the listener on the first signal and waits for open connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api.errors import problem
from .errors import NotReadyError
from .metrics import Metrics

log = logging.getLogger("genserve.lifecycle")

State = Literal["starting", "ready", "degraded", "draining", "stopped"]

# Always answered, whatever the state: an orchestrator must be able to tell "alive but
# not ready" from "dead", and Prometheus should see a draining replica to the end.
ALWAYS_ANSWERED = frozenset(
    {"/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"}
)
# The work a degraded (not ready) server refuses; /models stays open so an operator can
# see what did load.
MODEL_WORK = frozenset({"/sample", "/log-likelihood", "/reconstruct"})


def is_model_work(path: str) -> bool:
    """Whether a path runs a model: the genserve operations and OIP inference."""
    return path in MODEL_WORK or (path.startswith("/v2/models/") and path.endswith("/infer"))


DRAIN_RETRY_AFTER_S = 2
ABANDON_ANSWER_S = 1.0  # after the grace period, how long stopped requests get to answer


@dataclass
class Lifecycle:
    """Where the server is in its life, and how many requests are running."""

    state: State = "starting"
    inflight: int = 0
    drain_started: float | None = None
    reason: str = ""
    # Model work in progress (each request's engine call), so that the end of the grace
    # period can stop it and answer 503 instead of leaving uvicorn to cancel the requests,
    # which it answers with a bare 500.
    work: set[asyncio.Future[Any]] = field(default_factory=set)
    abandoning: bool = False

    @property
    def accepting(self) -> bool:
        return self.state == "ready"

    @property
    def draining(self) -> bool:
        return self.state in ("draining", "stopped")

    def begin_drain(self) -> None:
        """Stop taking new work. Only plain assignments: this runs inside a signal handler."""
        self.drain_started = time.monotonic()
        self.reason = "shutting down: finishing the requests in progress"
        self.state = "draining"

    def abandon(self) -> int:
        """The grace period is over: stop the model work still running (each request then
        answers 503 with Retry-After). Returns how many were stopped."""
        self.abandoning = True
        for w in self.work:
            w.cancel()
        return len(self.work)


class LifecycleMiddleware:
    """Refuses work the server's state does not allow, and counts requests in progress."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, metrics: Metrics) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        lc = self.lifecycle
        if lc.draining or lc.state == "starting":
            detail = "the server is shutting down; retry on another replica"
            if lc.state == "starting":
                detail = "the server is starting; retry shortly"
            refusal = problem(
                503,
                NotReadyError.type,
                NotReadyError.title,
                detail,
                # close: a client or proxy holding a keep-alive connection must reconnect,
                # which lands it on a replica that is not going away.
                headers={"Retry-After": str(DRAIN_RETRY_AFTER_S), "Connection": "close"},
                path=scope["path"],
            )
            await refusal(scope, receive, send)
            return
        if lc.state == "degraded" and is_model_work(scope["path"]):
            refusal = problem(
                503,
                NotReadyError.type,
                NotReadyError.title,
                "the server is not ready: the model store failed verification or loading "
                "(see /health/ready for the reasons)",
                path=scope["path"],
            )
            await refusal(scope, receive, send)
            return

        async def send_closing_when_draining(message: Message) -> None:
            # A request that started before the drain still gets its answer, but its
            # connection is not kept alive: the next request goes elsewhere.
            if message["type"] == "http.response.start" and lc.draining:
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        lc.inflight += 1
        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_closing_when_draining)
        finally:
            lc.inflight -= 1
            self.metrics.inflight.dec()


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a drain phase between the signal and the shutdown."""

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle, grace_period: float) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.grace_period = grace_period
        self.abandoned = 0  # requests still running when the grace period ran out

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not calling super(): it records the signal, and uvicorn re-raises recorded
        # signals after shutdown, which would end the process by SIGTERM instead of exit 0.
        state = self.lifecycle.state
        if state in ("ready", "degraded"):
            self.lifecycle.begin_drain()
            # Logging takes locks; a signal handler must not. Log from the loop instead.
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to log from
                asyncio.get_running_loop().call_soon_threadsafe(self._log_drain, sig)
        elif state == "draining" and sig == signal.SIGINT:
            lc = self.lifecycle
            if lc.abandoning or lc.drain_started is None:  # a third: stop at once
                self.should_exit = True
                self.force_exit = True
            else:
                # A second Ctrl+C stops waiting for requests (uvicorn's convention), by
                # ending the grace period now: the stopped requests answer 503 within
                # ABANDON_ANSWER_S instead of uvicorn's bare 500, and the models unload.
                self.grace_period = min(self.grace_period, time.monotonic() - lc.drain_started)
        elif state == "starting":
            self.should_exit = True  # interrupted while loading: skip serving altogether

    def _log_drain(self, sig: int) -> None:
        log.info(
            "%s: draining, %d request(s) in progress, grace period %gs",
            signal.Signals(sig).name,
            self.lifecycle.inflight,
            self.grace_period,
        )

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        lc = self.lifecycle
        if lc.state != "draining" or lc.drain_started is None:
            return False
        if lc.inflight == 0:
            log.info("drained in %.1fs; shutting down", time.monotonic() - lc.drain_started)
            return True
        overdue = time.monotonic() - lc.drain_started - self.grace_period
        if overdue >= 0 and not lc.abandoning:
            self.abandoned = lc.inflight
            log.warning(
                "grace period of %gs is over with %d request(s) still running; cancelling them",
                self.grace_period,
                lc.inflight,
            )
            lc.abandon()
        # The stopped requests answer 503 within a few loop turns; a request the app cannot
        # stop (still reading a slow upload) is left to uvicorn's bounded close.
        return overdue >= ABANDON_ANSWER_S

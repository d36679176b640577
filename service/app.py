"""The FastAPI application: create_app(settings), its lifespan, middleware and routes.

uvicorn --factory service.app:create_app      # settings from GENSERVE_* variables
genserve serve                                # the same, with a readable start-up
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import __version__, heap
from .api import generate, health, models, playground
from .api.auth import AuthMiddleware
from .api.bodylimit import BodyLimitMiddleware
from .api.errors import install_error_handlers, is_oip
from .batching import Batcher
from .config import Settings, load_settings
from .core import Operations
from .lifecycle import Lifecycle, LifecycleMiddleware, is_model_work
from .metrics import Metrics
from .model_control import ModelControl
from .oip import repository as oip_repository
from .oip import rest as oip_rest
from .oip.dataplane import DataPlane
from .registry import Registry
from .resources import thread_layout

log = logging.getLogger("genserve")

_ENDPOINTS = {
    "/sample",
    "/log-likelihood",
    "/reconstruct",
    "/models",
    "/health/live",
    "/health/ready",
    "/metrics",
}


def _endpoint(path: str) -> str:
    """The metrics label of a path: only fixed strings, never what a client typed."""
    if path in _ENDPOINTS:
        return path
    if path.startswith("/models/"):
        return "/models/{name}"
    if is_oip(path):
        return "/v2/infer" if is_model_work(path) else "/v2"
    return "other"


class MetricsMiddleware:
    """Counts requests and times them, labelled by model, version, endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = _endpoint(path)
        status = 500
        start = time.perf_counter()

        async def tap(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tap)
        finally:
            # Set by the route once the model is resolved: only loaded names and versions
            # become label values, never what a client typed.
            state = scope.get("state", {})
            model, version = state.get("model", "-"), state.get("model_version", "-")
            self.metrics.requests.labels(model, version, endpoint, str(status)).inc()
            if endpoint in ("/sample", "/log-likelihood", "/reconstruct", "/v2/infer"):
                self.metrics.latency.labels(model, version, endpoint).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The lifespan opens and verifies the store, loads every model into its
    backend, warms each graph up, and only then reports ready."""
    settings = settings or load_settings()
    metrics = Metrics()
    lifecycle = Lifecycle()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(metrics, lanes=thread_layout(settings.threads, settings.lanes)[1])
        registry = Registry(settings, batcher, metrics)
        app.state.registry = registry
        app.state.operations = Operations(registry, settings, metrics, lifecycle)
        explicit = settings.model_control == "explicit"
        app.state.oip = DataPlane(app.state.operations, model_repository=explicit)
        registry.load()  # raises DeviceUnavailableError for device=cuda without a GPU
        await registry.warm_up()
        control = app.state.control = ModelControl(registry, settings, lifecycle, metrics)
        control.adopt()
        # Live but not ready on a bad store: the process stays up so an orchestrator can
        # report why (in /health/ready and the log) instead of restarting it in a loop.
        partial = settings.allow_partial and bool(registry.loaded)
        lifecycle.state = "ready" if registry.ready or partial else "degraded"
        grpc_server = None
        if settings.grpc_port is not None:
            # Imported only when asked for: the generated modules and grpc's start-up cost.
            from .oip.grpc.servicer import start_grpc

            grpc_server = await start_grpc(
                app.state.oip,
                lifecycle,
                metrics,
                settings.host,
                settings.grpc_port,
                settings.max_body_bytes,
                settings.token,
                control if settings.model_control == "explicit" else None,
            )
            log.info("Open Inference Protocol over gRPC on %s:%d", settings.host, settings.grpc_port)
        heap.settle()  # before traffic: no full collection pauses requests (service/heap.py)
        metrics.ready.set(1 if lifecycle.accepting else 0)
        control.start()
        if settings.model_control != "none":
            log.info("model control: %s", settings.model_control)
        if registry.ready:
            log.info(
                "genserve %s ready: %d model(s) from %s",
                __version__,
                len(registry.loaded),
                settings.model_store,
            )
        elif partial:
            lifecycle.reason = f"serving {len(registry.loaded)} model(s); some failed (allow_partial)"
            log.warning(
                "genserve %s ready with %d model(s), allow_partial set; NOT loaded: %s",
                __version__,
                len(registry.loaded),
                registry.failures,
            )
        else:
            lifecycle.reason = "the model store failed verification or loading"
            log.error("genserve %s NOT ready: %s", __version__, registry.failures)
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=settings.grace_period_s)
            lifecycle.state = "stopped"
            metrics.ready.set(0)
            await control.stop()
            await batcher.close()
            unloaded = len(registry.loaded)
            registry.close()
            heap.release()
            log.info("genserve stopped: %d model(s) unloaded", unloaded)

    app = FastAPI(
        title="genserve",
        version=__version__,
        summary="Deep generative models over HTTP: sample, score (with outlier verdicts), reconstruct.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.lifecycle = lifecycle
    install_error_handlers(app)
    app.include_router(generate.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(oip_rest.router)
    app.include_router(playground.router)
    app.mount(playground.PREFIX + "/static", playground.static_files(), name="playground-static")
    if settings.model_control == "explicit":  # elsewhere the repository routes are 404
        app.include_router(oip_repository.router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    # Inside the metrics middleware, so refusals while draining are counted as 503s.
    app.add_middleware(LifecycleMiddleware, lifecycle=lifecycle, metrics=metrics)
    token = settings.token
    if token is not None:  # outside the lifecycle: no state is told to a client without the token
        app.add_middleware(AuthMiddleware, token=token, metrics_public=settings.metrics_public)
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "genserve binds %s without an access token: anyone who can reach it can use every "
            "model (set GENSERVE_API_TOKEN or GENSERVE_API_TOKEN_FILE)",
            settings.host,
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app

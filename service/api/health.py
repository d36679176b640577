"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    """200 whenever the server can answer at all: while degraded and while draining too."""
    return {"status": "live"}


@router.get("/health/ready", summary="Every model loaded, verified and warmed up")
async def ready(request: Request) -> Response:
    """200 when ready to serve; 503 (with the reasons) while starting, draining or broken.

    The body names each model that failed and why (for a bad store: the version and the
    file that failed verification), and the lifecycle state.
    """
    state = request.app.state
    lifecycle = state.lifecycle
    registry = getattr(state, "registry", None)  # absent before the lifespan starts
    status: dict[str, Any] = registry.status() if registry is not None else {"models": {}, "failures": {}}
    ok = lifecycle.accepting
    status["ready"] = ok
    status["state"] = lifecycle.state
    if lifecycle.reason:
        status["detail"] = lifecycle.reason
    return JSONResponse(status, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Requests, latencies, samples produced, rows scored, loaded models."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

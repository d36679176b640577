"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/health/live", summary="The process is up")
async def live() -> dict[str, str]:
    """200 whenever the server can answer at all."""
    return {"status": "live"}


@router.get("/health/ready", summary="Every model loaded, verified and warmed up")
async def ready(request: Request) -> Response:
    """200 when ready to serve; 503 (with the reasons) while starting, draining or broken."""
    state = request.app.state
    status: dict[str, Any] = state.registry.status()
    ok = status["ready"] and state.lifecycle.accepting
    status["ready"] = ok
    status["state"] = state.lifecycle.state
    return JSONResponse(status, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Requests, latencies, samples produced, rows scored, loaded models."""
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

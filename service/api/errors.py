"""The one place where failures become HTTP: RFC 9457 application/problem+json bodies on
the genserve routes, and the Open Inference Protocol's `{"error": "..."}` under /v2."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from ..errors import FieldError, GenserveError, RetryLaterError, ShuttingDownError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("genserve.api")


def is_oip(path: str) -> bool:
    """Whether a path is one of the Open Inference Protocol's routes."""
    return path == "/v2" or path.startswith("/v2/")


# OIP clients know 400 for any bad request (tritonclient reads only the `error` text).
_OIP_STATUS = {415: 400, 422: 400}


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> Response:
    """A problem-details response; `errors` lists {loc, msg} without echoing any input.
    Under /v2 (`path`), the OIP error body with the same detail instead."""
    if is_oip(path):
        return Response(
            orjson.dumps({"error": detail}),
            status_code=_OIP_STATUS.get(status, status),
            media_type="application/json",
            headers=headers,
        )
    body: dict[str, Any] = {
        "type": f"urn:genserve:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [{"loc": e.loc, "msg": e.msg} for e in errors]
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: GenserveError, path: str = "") -> Response:
    """The response for one of the service's own exceptions (OIP's form under /v2)."""
    headers = None
    if isinstance(exc, RetryLaterError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, ShuttingDownError):  # the next try must reach another replica
        headers = {**(headers or {}), "Connection": "close"}
    return problem(exc.status, exc.type, exc.title, exc.detail, exc.errors, headers, path)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to a problem response; unknown ones become a logged 500."""

    @app.exception_handler(GenserveError)
    async def _service_error(request: Request, exc: GenserveError) -> Response:
        return problem_for(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            FieldError([p for p in e["loc"] if p != "body"] or ["body"], e["msg"]) for e in exc.errors()
        ]
        detail = "the request failed validation"
        return problem(422, "invalid-input", "Invalid input", detail, errors, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = dict(exc.headers) if exc.headers else None
        detail = str(exc.detail)
        return problem(exc.status_code, slug, detail, detail, headers=headers, path=request.url.path)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up while sending its body: a network event, not a server error.
        # Nobody reads this answer; it is for the access log and the request metrics.
        return problem(
            499,
            "client-closed-request",
            "Client closed request",
            "the client disconnected while sending",
            path=request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500,
            "internal-error",
            "Internal error",
            "an unexpected error occurred; it has been logged",
            path=request.url.path,
        )

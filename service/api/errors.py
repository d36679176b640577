"""The one place where failures become HTTP: RFC 9457 application/problem+json bodies."""

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


def problem(
    status: int,
    slug: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """A problem-details response; `errors` lists {loc, msg} without echoing any input."""
    body: dict[str, Any] = {
        "type": f"urn:genserve:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors:
        body["errors"] = [{"loc": e.loc, "msg": e.msg} for e in errors]
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_for(exc: GenserveError) -> Response:
    """The response for one of the service's own exceptions."""
    headers = None
    if isinstance(exc, RetryLaterError):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    if isinstance(exc, ShuttingDownError):  # the next try must reach another replica
        headers = {**(headers or {}), "Connection": "close"}
    return problem(exc.status, exc.type, exc.title, exc.detail, exc.errors, headers)


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception to a problem response; unknown ones become a logged 500."""

    @app.exception_handler(GenserveError)
    async def _service_error(_: Request, exc: GenserveError) -> Response:
        return problem_for(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            FieldError([p for p in e["loc"] if p != "body"] or ["body"], e["msg"]) for e in exc.errors()
        ]
        return problem(422, "invalid-input", "Invalid input", "the request failed validation", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> Response:
        slug = {404: "not-found", 405: "method-not-allowed"}.get(exc.status_code, "http-error")
        headers = dict(exc.headers) if exc.headers else None
        return problem(exc.status_code, slug, str(exc.detail), str(exc.detail), headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(_: Request, exc: ClientDisconnect) -> Response:
        # The client hung up while sending its body: a network event, not a server error.
        # Nobody reads this answer; it is for the access log and the request metrics.
        return problem(
            499, "client-closed-request", "Client closed request", "the client disconnected while sending"
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500, "internal-error", "Internal error", "an unexpected error occurred; it has been logged"
        )

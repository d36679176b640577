"""Typed exceptions for genserve's answers: one class per problem `type` (docs/api.md#errors)."""

from __future__ import annotations

from typing import Any

PROBLEM_PREFIX = "urn:genserve:problem:"


class GenserveError(Exception):
    """Base of every error the client raises."""


class TransportError(GenserveError):
    """The server could not be reached, or the connection failed before an answer."""


class ProblemError(GenserveError):
    """An error answer from the server (`application/problem+json`, RFC 9457).

    `kind` is the stable part of `type` (e.g. "invalid-input"); `errors` names the fields
    at fault as `[{loc, msg}]`; `retry_after` is the server's `Retry-After` in seconds.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        title: str,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {kind}: {detail}")
        self.status = status
        self.kind = kind
        self.type = PROBLEM_PREFIX + kind
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.retry_after = retry_after

    @property
    def fields(self) -> list[str]:
        """The fields at fault, dotted (`inputs`, `outputs.samples`), in the server's order."""
        return [".".join(str(p) for p in e.get("loc", [])) for e in self.errors]


class MalformedBodyError(ProblemError):
    """400: the body could not be read (not JSON, not a valid .npy)."""


class ModelLoadError(ProblemError):
    """400: a repository load refused the version."""


class UnauthorizedError(ProblemError):
    """401: the server wants `Authorization: Bearer <token>` (give `token=`)."""


class ModelNotFoundError(ProblemError):
    """404: no loaded model by that name, or that version is not loaded."""


class NotFoundError(ProblemError):
    """404: no such route (an old server, or a wrong base URL)."""


class MethodNotAllowedError(ProblemError):
    """405: the route exists for another method."""


class PayloadTooLargeError(ProblemError):
    """413: the request or its answer is over the server's limits: split it."""


class UnsupportedMediaTypeError(ProblemError):
    """415: the server does not take that body type."""


class InvalidInputError(ProblemError):
    """422: a field is wrong; `fields` names each."""


class UnsupportedOperationError(ProblemError):
    """422: the model's family cannot do that (a GAN has no likelihood, no encoder)."""


class OverloadedError(ProblemError):
    """503: the model's queue is full (retried by the client until its retries run out)."""


class NotReadyError(ProblemError):
    """503: the server is starting, or failed to load that model."""


class ShuttingDownError(ProblemError):
    """503: the server is draining."""


class DeadlineExceededError(ProblemError):
    """504: the request outlived its deadline; its work was stopped."""


class InternalServerError(ProblemError):
    """500: a bug in the server (it logged it)."""


class NotImplementedByServerError(ProblemError):
    """501: the server does not offer that operation in its current mode."""


_BY_KIND: dict[str, type[ProblemError]] = {
    "malformed-body": MalformedBodyError,
    "model-load-failed": ModelLoadError,
    "unauthorized": UnauthorizedError,
    "model-not-found": ModelNotFoundError,
    "not-found": NotFoundError,
    "method-not-allowed": MethodNotAllowedError,
    "payload-too-large": PayloadTooLargeError,
    "unsupported-media-type": UnsupportedMediaTypeError,
    "invalid-input": InvalidInputError,
    "unsupported-operation": UnsupportedOperationError,
    "overloaded": OverloadedError,
    "not-ready": NotReadyError,
    "shutting-down": ShuttingDownError,
    "deadline-exceeded": DeadlineExceededError,
    "internal-error": InternalServerError,
    "not-implemented": NotImplementedByServerError,
}

_BY_STATUS: dict[int, type[ProblemError]] = {
    401: UnauthorizedError,
    404: NotFoundError,
    413: PayloadTooLargeError,
    415: UnsupportedMediaTypeError,
    422: InvalidInputError,
    503: NotReadyError,
    504: DeadlineExceededError,
}


def problem_error(
    status: int, body: dict[str, Any] | None, retry_after: float | None = None, text: str = ""
) -> ProblemError:
    """The exception for an error answer: by its problem `type`, else by its status (a proxy
    in front of the server answers without problem+json)."""
    body = body or {}
    raw_type = str(body.get("type", ""))
    kind = raw_type.removeprefix(PROBLEM_PREFIX) if raw_type.startswith(PROBLEM_PREFIX) else ""
    cls = (
        _BY_KIND.get(kind)
        or _BY_STATUS.get(status)
        or (InternalServerError if status >= 500 else ProblemError)
    )
    detail = str(body.get("detail") or body.get("error") or text[:200] or f"HTTP {status}")
    errors = body.get("errors") if isinstance(body.get("errors"), list) else None
    return cls(status, kind or f"http-{status}", str(body.get("title", "")), detail, errors, retry_after)

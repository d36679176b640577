"""The service's exception tree. api/errors.py maps it to RFC 9457 problem responses.

Each failure has one type with its HTTP status; messages name fields, never echo inputs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class FieldError:
    """One validation problem: where (JSON path) and what."""

    loc: list[str | int]
    msg: str


class GenserveError(Exception):
    """Base: carries the HTTP status, a stable problem type and a title."""

    status: int = 500
    type: str = "internal-error"
    title: str = "Internal error"

    def __init__(self, detail: str, errors: list[FieldError] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class InvalidInputError(GenserveError):
    """The request is well-formed JSON but a field is wrong (shape, range, label, ...)."""

    status = 422
    type = "invalid-input"
    title = "Invalid input"

    @classmethod
    def field(cls, loc: list[str | int], msg: str) -> InvalidInputError:
        """One bad field: the detail names it."""
        where = ".".join(str(p) for p in loc)
        return cls(f"{where}: {msg}", [FieldError(loc, msg)])


class MalformedBodyError(GenserveError):
    """The body cannot be parsed at all (broken JSON, broken .npy)."""

    status = 400
    type = "malformed-body"
    title = "Malformed request body"


class UnsupportedMediaTypeError(GenserveError):
    """A content type the endpoint does not accept."""

    status = 415
    type = "unsupported-media-type"
    title = "Unsupported media type"


class PayloadTooLargeError(GenserveError):
    """The body, or the output it would produce, is over a configured limit."""

    status = 413
    type = "payload-too-large"
    title = "Payload too large"


class ModelNotFoundError(GenserveError):
    """No loaded model (or version) by that name."""

    status = 404
    type = "model-not-found"
    title = "Model not found"


class UnsupportedOperationError(GenserveError):
    """The model's family cannot do this (a GAN has no likelihood and no encoder)."""

    status = 422
    type = "unsupported-operation"
    title = "Operation not supported by this model"


class NotReadyError(GenserveError):
    """The server is starting, draining, or has no usable models."""

    status = 503
    type = "not-ready"
    title = "Service not ready"


class RetryLaterError(GenserveError):
    """A 503 the client should retry after `retry_after` seconds (sent as Retry-After)."""

    status = 503
    retry_after_default = 1.0

    def __init__(self, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after = self.retry_after_default if retry_after is None else retry_after


class OverloadedError(RetryLaterError):
    """The model's queue is full; retry after a moment."""

    type = "overloaded"
    title = "Server overloaded"


class ShuttingDownError(RetryLaterError):
    """The grace period ran out before the request finished; its work was stopped."""

    type = "shutting-down"
    title = "Server shutting down"
    retry_after_default = 2.0


class DeadlineExceededError(GenserveError):
    """The request's deadline passed before it finished."""

    status = 504
    type = "deadline-exceeded"
    title = "Deadline exceeded"


class ModelLoadError(GenserveError):
    """A model version failed verification, loading or warm-up; whatever served before still does."""

    status = 400
    type = "model-load-failed"
    title = "Model version refused"


class ManagementOffError(GenserveError):
    """A model-repository call while model management is not explicit. Over HTTP those
    routes do not exist (404); over gRPC the RPCs do, and answer UNIMPLEMENTED."""

    status = 501
    type = "not-implemented"
    title = "Not implemented"

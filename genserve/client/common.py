"""What the sync and async clients share: settings, and the arguments of each call turned
into a prepared request (the clients differ only in how they send and wait)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np

from .errors import TransportError
from .protocol import (
    Labels,
    Prepared,
    prepare_log_likelihood,
    prepare_reconstruct,
    prepare_sample,
    read_model,
    read_models,
    read_reconstruction,
    read_sample,
    read_scores,
    request_timeout,
)
from .results import ModelInfo, Reconstruction, Samples, Scores
from .retry import RetryPolicy

T = TypeVar("T")
Reader = Callable[[httpx.Response], T]

DEFAULT_URL = "http://127.0.0.1:8000"
# Inputs of this many values or more go as .npy bodies: JSON's text costs the server
# several times the parsing (docs/benchmarks.md, W1), and the client the writing.
BINARY_ABOVE = 10_000


@dataclass(frozen=True)
class Settings:
    """A client's settings: base URL, access token, retries, the default deadline."""

    url: str = DEFAULT_URL
    token: str | None = None
    timeout: float | None = None  # seconds per call, retries included; None: the server's
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    binary_above: int = BINARY_ABOVE

    def headers(self) -> dict[str, str]:
        """Headers of every request."""
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    @classmethod
    def of(
        cls,
        url: str,
        token: str | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        binary_above: int | None,
    ) -> Settings:
        """A client constructor's arguments, None meaning the default (both clients')."""
        return cls(
            url=url,
            token=token,
            timeout=timeout,
            retry=retry or RetryPolicy(),
            binary_above=BINARY_ABOVE if binary_above is None else binary_above,
        )


def transport_timeout(settings: Settings, remaining: float | None) -> float:
    """How long one try may take on the wire (the server's default deadline is 120 s)."""
    return request_timeout(remaining, 130.0 if settings.timeout is None else settings.timeout + 5.0)


def transport_error(exc: httpx.HTTPError, url: str) -> TransportError:
    """A typed error for an httpx failure (the request never got an answer)."""
    return TransportError(f"{type(exc).__name__} talking to {url}: {exc}")


def retryable(exc: httpx.HTTPError) -> bool:
    """Connection failures happen before the server sees the request: safe to retry."""
    return isinstance(exc, httpx.ConnectError)


def as_array(value: Any, name: str) -> np.ndarray:
    """A NumPy array from the caller's inputs (lists, arrays)."""
    arr = np.asarray(value)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a rectangular array of numbers")
    return arr


def _context_as_array(options: dict[str, Any]) -> None:
    if options.get("context") is not None:
        options["context"] = as_array(options["context"], "context")


def sample_request(
    model: str,
    n: int,
    labels: Labels,
    version: int | None,
    seed: int | None,
    temperature: float | None,
    context: Any,
    alpha: float | None,
    sampler: dict[str, Any] | None = None,
) -> tuple[Prepared, Reader[Samples]]:
    """/sample's request and reader (`sampler`: a diffusion model's steps, sampler, guidance)."""
    ctx = None if context is None else as_array(context, "context")
    prepared = prepare_sample(
        model,
        n,
        labels,
        version=version,
        seed=seed,
        temperature=temperature,
        context=ctx,
        alpha=alpha,
        sampler=sampler,
    )
    return prepared, read_sample


def score_request(
    settings: Settings, model: str, inputs: Any, labels: Labels, options: dict[str, Any]
) -> tuple[Prepared, Reader[Scores]]:
    """/log-likelihood's request and reader."""
    _context_as_array(options)
    prepared = prepare_log_likelihood(
        model, as_array(inputs, "inputs"), labels, binary_above=settings.binary_above, **options
    )
    return prepared, read_scores


def reconstruct_request(
    settings: Settings,
    model: str,
    inputs: Any,
    labels: Labels,
    mask: Any,
    options: dict[str, Any],
) -> tuple[Prepared, Reader[Reconstruction]]:
    """/reconstruct's request and reader."""
    _context_as_array(options)
    prepared = prepare_reconstruct(
        model,
        as_array(inputs, "inputs"),
        labels,
        mask=None if mask is None else as_array(mask, "mask"),
        binary_above=settings.binary_above,
        **options,
    )
    return prepared, read_reconstruction


def models_request() -> tuple[Prepared, Reader[list[ModelInfo]]]:
    """GET /models."""
    return Prepared("GET", "/models"), read_models


def model_request(name: str, version: int | None) -> tuple[Prepared, Reader[ModelInfo]]:
    """GET /models/{name}."""
    params = {} if version is None else {"version": str(version)}
    return Prepared("GET", f"/models/{name}", params=params), read_model

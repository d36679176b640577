"""genserve's Python client: `Client` (sync) and `AsyncClient` over httpx.

    from genserve.client import Client

    with Client("http://127.0.0.1:8000", token=None) as gs:
        drawn = gs.sample("vae-digits", n=8, labels=3, seed=1)
        scores = gs.log_likelihood("vae-digits", drawn.samples)

Answers are NumPy arrays in typed results (`results`); errors are typed exceptions
carrying the server's problem+json fields (`errors`). See docs/client.md.
"""

from .aio import AsyncClient
from .errors import (
    DeadlineExceededError,
    GenserveError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    ProblemError,
    ShuttingDownError,
    TransportError,
    UnauthorizedError,
    UnsupportedOperationError,
)
from .results import ModelInfo, Reconstruction, Samples, Scores
from .retry import RetryPolicy
from .sync import Client

__all__ = [
    "AsyncClient",
    "Client",
    "DeadlineExceededError",
    "GenserveError",
    "InvalidInputError",
    "ModelInfo",
    "ModelNotFoundError",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "ProblemError",
    "Reconstruction",
    "RetryPolicy",
    "Samples",
    "Scores",
    "ShuttingDownError",
    "TransportError",
    "UnauthorizedError",
    "UnsupportedOperationError",
]

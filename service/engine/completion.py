"""Conditioning an autoregressive completion on known pixels that come later in its order.

A PixelCNN samples pixel i from p(x_i | x_<i). Filling the missing pixels that way is an
exact draw from p(x_missing | x_known) only when every missing pixel comes after every
known one (a raster-order suffix, e.g. the bottom rows). For any other mask (a hole in
the middle, the right half) the known pixels after a missing one must also weigh in:

    p(x_missing | x_known) ∝ Π_{i missing} p(x_i | x_<i) · Π_{j known} p(x_j | x_<j).

Drawing the missing pixels from their conditionals (the first product) is a proposal
whose importance weight is the second product. A particle filter (sequential Monte Carlo)
runs M proposals per row along the raster order, multiplies each particle's weight by
p(x_j | x_<j) as it passes known pixel j, and resamples a row's particles when their
weights degenerate, so particles that contradict the known pixels are replaced by ones
that agree with them early. One particle per row is returned, chosen by its final weight:
exact as M grows, and never worse than the plain proposal (M = 1).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

# Particles per row when the request names none. On digits, 16 particles make completions
# agree with the known pixels 95-100 % as well as 64 do, at a quarter of the cost
# (`python -m bench.completion`, docs/api.md); each particle is one row in every graph call.
DEFAULT_PARTICLES = 16


def raster_flat(a: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N, H·W·C] in the sampler's order (rows, columns, then channels)."""
    return a.transpose(0, 2, 3, 1).reshape(len(a), -1)


def needs_particles(known: NDArray[np.bool_]) -> bool:
    """Whether any row has a known pixel after a missing one in raster order."""
    flat = raster_flat(known).astype(np.int8)
    return bool((np.diff(flat, axis=1) > 0).any())


def raster_position(q: NDArray[np.int64], C: int, W: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raster-flat positions q = (i·W + j)·C + c -> (c, i, j) index arrays."""
    pixel, c = np.divmod(q, C)
    i, j = np.divmod(pixel, W)
    return c, i, j


def normalised(log_w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per row of log-weights [N, M], weights summing to 1; a row whose particles all
    have zero weight (every one contradicts a known pixel) counts them all alike."""
    top = log_w.max(axis=1, keepdims=True)
    w = np.exp(log_w - np.where(np.isfinite(top), top, 0.0))
    w[w.sum(axis=1) == 0] = 1.0
    out: NDArray[np.float64] = w / w.sum(axis=1, keepdims=True)
    return out


def effective_size(log_w: NDArray[np.float64]) -> NDArray[np.float64]:
    """Effective sample size per row of log-weights [N, M]: 1 / Σ w² of the normalised w."""
    out: NDArray[np.float64] = 1.0 / (normalised(log_w) ** 2).sum(axis=1)
    return out


def systematic_indices(log_w: NDArray[np.float64], u: NDArray[np.float64]) -> NDArray[np.int64]:
    """Systematic resampling: per row of log-weights [N, M] and one uniform u [N] in [0, 1),
    M particle indices [N, M] (ascending), particle m drawn about M·w_m times."""
    N, M = log_w.shape
    cdf = np.cumsum(normalised(log_w), axis=1)
    points = (u[:, None] + np.arange(M)[None, :]) / M  # [N, M]
    idx = np.stack([np.searchsorted(cdf[n], points[n], side="right") for n in range(N)])
    return np.minimum(idx, M - 1).astype(np.int64)


def pick_one(log_w: NDArray[np.float64], u: NDArray[np.float64]) -> NDArray[np.int64]:
    """One particle index per row [N], drawn by its weight with the uniform u [N] in [0, 1)
    (a particle of zero weight is never drawn, whatever u)."""
    cdf = np.cumsum(normalised(log_w), axis=1)
    idx = (cdf <= u[:, None] * cdf[:, -1:]).sum(axis=1)
    return np.minimum(idx, log_w.shape[1] - 1).astype(np.int64)

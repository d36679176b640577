"""A local background model for the likelihood-ratio outlier score.

Ren et al. (2019) score outliers by the ratio of the model's likelihood to a background
model's, which captures only population-level low-level statistics, so that the ratio
keeps the semantic part. Schirrmeister et al. (2020) show a model with a small receptive
field makes a good background. This one is the smallest such model that is a proper
distribution over the discrete images: each pixel given the quantized values of its left
and upper neighbours, one table shared by every position and channel (raster order, so
the product over pixels normalises). It is fitted by counting at build time and travels
in the manifest; scoring is a table lookup.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .manifest import BackgroundRecord

FloatArray = NDArray[np.float64]
MAX_BINS = 16  # neighbour values are quantized to at most this many bins (table size (B+1)^2 x K)


def _contexts(x: np.ndarray, levels: int, bins: int) -> NDArray[np.int64]:
    """Context index per pixel [N, C, H, W]: (left bin, upper bin), with a bin for 'outside'."""
    q = np.asarray(x, dtype=np.int64) * bins // levels  # [N, C, H, W] in 0..bins-1
    left = np.full_like(q, bins)  # 'outside the image' is its own bin
    up = np.full_like(q, bins)
    left[..., :, 1:] = q[..., :, :-1]
    up[..., 1:, :] = q[..., :-1, :]
    return left * (bins + 1) + up


def fit_background(x: np.ndarray, levels: int, smoothing: float = 1.0) -> BackgroundRecord:
    """Count pixel values per context over images `x` [N, C, H, W]; additive smoothing."""
    bins = min(levels, MAX_BINS)
    ctx = _contexts(x, levels, bins).ravel()
    values = np.asarray(x, dtype=np.int64).ravel()
    counts = np.zeros(((bins + 1) ** 2, levels), dtype=np.float64)
    np.add.at(counts, (ctx, values), 1.0)
    counts += smoothing
    log_probs = np.log(counts / counts.sum(axis=1, keepdims=True))
    return BackgroundRecord(
        levels=levels,
        bins=bins,
        smoothing=smoothing,
        images=len(x),
        log_probs=np.round(log_probs, 6).tolist(),
    )


def background_log_likelihood(background: BackgroundRecord, x: np.ndarray) -> FloatArray:
    """log p_background(x) per image, nats [N]; each row on its own."""
    table = background.table  # [(B+1)^2, K]
    ctx = _contexts(x, background.levels, background.bins)
    values = np.asarray(x, dtype=np.int64)
    return table[ctx, values].reshape(len(values), -1).sum(axis=1)

"""Classical density estimators from the course notes, scored in the same units as the models.

- independent per-pixel categorical (a smoothed histogram per pixel), exact;
- class-conditional per-pixel categorical, exact, log p(x | y) (and the marginal over y);
- Gaussian mixture and Gaussian kernel density estimate on uniformly dequantized data,
  reported like the flows: the importance-weighted dequantization bound
  log (1/S) Σ_s p(x + u_s), u_s ~ U[0,1)^D, a lower bound on log P(x) in level units.

Every hyperparameter (smoothing, components, bandwidth) is chosen on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

from .data import ImageDataset, Splits

FloatArray = NDArray[np.float64]

SMOOTHING_GRID = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


@dataclass
class BaselineResult:
    """A baseline's test-set log-likelihoods (nats per example) and how it was chosen."""

    name: str
    log_likelihood: FloatArray  # [N_test]
    estimator: str
    conditional: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    def bits_per_dim(self, dims: int) -> float:
        """Mean test bits per dimension."""
        return float(-self.log_likelihood.mean() / (dims * math.log(2)))


def pixel_categorical_table(x: NDArray[np.int64], levels: int, alpha: float) -> FloatArray:
    """Log-probabilities [D, K] of a per-pixel categorical with add-alpha smoothing."""
    flat = x.reshape(len(x), -1)
    D = flat.shape[1]
    counts = np.zeros((D, levels))
    for d in range(D):
        counts[d] = np.bincount(flat[:, d], minlength=levels)[:levels]
    counts += alpha
    return np.log(counts / counts.sum(axis=1, keepdims=True))


def pixel_categorical_loglik(table: FloatArray, x: NDArray[np.int64]) -> FloatArray:
    """Σ_d log θ_d[x_d] for each row of x -> [N]."""
    flat = x.reshape(len(x), -1)
    return table[np.arange(flat.shape[1])[None, :], flat].sum(axis=1)


def _best_alpha(x_tr: NDArray[np.int64], x_va: NDArray[np.int64], levels: int) -> float:
    scores = [
        pixel_categorical_loglik(pixel_categorical_table(x_tr, levels, a), x_va).mean()
        for a in SMOOTHING_GRID
    ]
    return SMOOTHING_GRID[int(np.argmax(scores))]


def class_pixel_tables(
    x: NDArray[np.int64], y: NDArray[np.int64], n_classes: int, levels: int, alpha: float
) -> list[FloatArray]:
    """One per-pixel categorical table per class."""
    return [pixel_categorical_table(x[y == c], levels, alpha) for c in range(n_classes)]


def class_pixel_loglik(tables: list[FloatArray], x: NDArray[np.int64]) -> FloatArray:
    """log p(x | y = c) for every class -> [N, L]."""
    return np.stack([pixel_categorical_loglik(t, x) for t in tables], axis=1)


def dequantize(x: NDArray[np.int64], rng: np.random.Generator) -> FloatArray:
    """x + u, u ~ U[0, 1)^D, flattened to [N, D] (level units)."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    return flat + rng.random(flat.shape)


def dequantized_bound(score: Any, x: NDArray[np.int64], rng: np.random.Generator, draws: int) -> FloatArray:
    """log (1/S) Σ_s p(x + u_s) over S = `draws` draws, for a fitted sklearn density with
    score_samples -> [N]. The flows' estimator, so both are scored alike."""
    lp = np.stack([score(dequantize(x, rng)) for _ in range(draws)])  # [S, N]
    return np.asarray(logsumexp(lp, axis=0) - math.log(draws))


def evaluate_baselines(
    data: ImageDataset, splits: Splits, seed: int = 0, draws: int = 512
) -> list[BaselineResult]:
    """Fit every baseline on the training split, select on validation, score the test split."""
    K = data.spec.levels
    x_tr, x_va, x_te = data.x[splits.train], data.x[splits.validation], data.x[splits.test]
    results: list[BaselineResult] = []

    alpha = _best_alpha(x_tr, x_va, K)
    table = pixel_categorical_table(x_tr, K, alpha)
    results.append(
        BaselineResult(
            "pixel categorical", pixel_categorical_loglik(table, x_te), "exact", params={"alpha": alpha}
        )
    )

    if data.y is not None:
        y_tr, y_va, y_te = data.y[splits.train], data.y[splits.validation], data.y[splits.test]
        L = data.spec.num_classes
        grid_scores = []
        for a in SMOOTHING_GRID:
            t = class_pixel_tables(x_tr, y_tr, L, K, a)
            grid_scores.append(class_pixel_loglik(t, x_va)[np.arange(len(y_va)), y_va].mean())
        a_c = SMOOTHING_GRID[int(np.argmax(grid_scores))]
        tables = class_pixel_tables(x_tr, y_tr, L, K, a_c)
        per_class = class_pixel_loglik(tables, x_te)
        prior = np.log(np.bincount(y_tr, minlength=L) / len(y_tr))
        results.append(
            BaselineResult(
                "class-conditional pixel categorical",
                per_class[np.arange(len(y_te)), y_te],
                "exact, log p(x|y)",
                conditional=True,
                params={"alpha": a_c},
            )
        )
        results.append(
            BaselineResult(
                "class-conditional pixel categorical (marginal)",
                logsumexp(per_class + prior[None, :], axis=1),
                "exact, log Σ_y p(x|y)p(y)",
                params={"alpha": a_c},
            )
        )

    rng = np.random.default_rng(seed)
    deq_tr = dequantize(x_tr, rng)
    best_gmm: tuple[float, GaussianMixture | None, int] = (-math.inf, None, 0)
    for n in (1, 2, 4, 8, 16):
        if n * 4 > len(x_tr):
            break
        gmm = GaussianMixture(n, covariance_type="full", reg_covar=1e-3, random_state=seed, max_iter=200)
        gmm.fit(deq_tr)
        val = float(dequantized_bound(gmm.score_samples, x_va, rng, 2).mean())
        if val > best_gmm[0]:
            best_gmm = (val, gmm, n)
    assert best_gmm[1] is not None
    results.append(
        BaselineResult(
            "Gaussian mixture (dequantized)",
            dequantized_bound(best_gmm[1].score_samples, x_te, rng, draws),
            "importance-weighted uniform-dequantization bound",
            params={"components": best_gmm[2]},
        )
    )

    best_kde: tuple[float, KernelDensity | None, float] = (-math.inf, None, 0.0)
    for bw in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0):
        kde = KernelDensity(bandwidth=bw).fit(deq_tr)
        val = float(dequantized_bound(kde.score_samples, x_va, rng, 2).mean())
        if val > best_kde[0]:
            best_kde = (val, kde, bw)
    assert best_kde[1] is not None
    results.append(
        BaselineResult(
            "kernel density estimate (dequantized)",
            dequantized_bound(best_kde[1].score_samples, x_te, rng, draws),
            "importance-weighted uniform-dequantization bound",
            params={"bandwidth": best_kde[2]},
        )
    )
    return results

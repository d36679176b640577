"""Classical densities for vectors, in the same raw units as the flows' answers.

Without a context: a full-covariance Gaussian, a Gaussian mixture (components chosen by
validation likelihood) and a Gaussian KDE (bandwidth by validation likelihood). With a
context: the linear-Gaussian conditional p(x | c) = N(A c + b, Σ), least squares. None of
them knows a bounded support, so each puts some mass outside it: a handicap the flows,
which map the support to the real line, do not have.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

Float = NDArray[np.float64]


def _gaussian_logpdf(resid: Float, cov: Float) -> Float:
    D = resid.shape[1]
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(D))
    sol = np.linalg.solve(chol, resid.T)  # [D, N]
    return -0.5 * (sol**2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * D * math.log(2 * math.pi)


def gaussian(train: Float, test: Float) -> Float:
    """log N(test; mean, cov) per row, fitted on `train`."""
    return _gaussian_logpdf(test - train.mean(0), np.cov(train, rowvar=False).reshape(train.shape[1], -1))


def linear_gaussian(train: Float, c_train: Float, test: Float, c_test: Float) -> Float:
    """log N(test; A c + b, Σ) per row: the best linear-Gaussian conditional density."""
    design = np.hstack([c_train, np.ones((len(c_train), 1))])
    coef, *_ = np.linalg.lstsq(design, train, rcond=None)
    resid = train - design @ coef
    cov = np.cov(resid, rowvar=False).reshape(train.shape[1], -1)
    pred = np.hstack([c_test, np.ones((len(c_test), 1))]) @ coef
    return _gaussian_logpdf(test - pred, cov)


def mixture(train: Float, val: Float, test: Float, seed: int = 0) -> tuple[Float, int]:
    """A full-covariance Gaussian mixture, 1..8 components by validation likelihood."""
    best: tuple[float, GaussianMixture] | None = None
    for k in (1, 2, 3, 4, 6, 8):
        if k * (train.shape[1] + 1) >= len(train):
            break
        gm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-6).fit(train)
        v = float(gm.score(val))
        if best is None or v > best[0]:
            best = (v, gm)
    assert best is not None
    return best[1].score_samples(test), int(best[1].n_components)


def kde(train: Float, val: Float, test: Float) -> tuple[Float, float]:
    """A Gaussian KDE on standardised data (its log-det added back), bandwidth by validation."""
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-9)
    z = [(a - mean) / std for a in (train, val, test)]
    best = max(
        (float(KernelDensity(bandwidth=h).fit(z[0]).score(z[1])), h) for h in np.geomspace(0.05, 2.0, 12)
    )
    h = best[1]
    return KernelDensity(bandwidth=h).fit(z[0]).score_samples(z[2]) - np.log(std).sum(), float(h)


__all__ = ["gaussian", "kde", "linear_gaussian", "mixture"]

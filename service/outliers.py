"""Outlier scores from likelihoods, and conformal p-values against a calibration set.

Every score is "larger = more anomalous". A p-value compares a score with the scores of
the held-out in-distribution calibration split stored in the manifest:
    p = (1 + #{calibration scores >= s}) / (n + 1),
which is valid (P(p <= alpha) <= alpha for in-distribution inputs) whatever the score,
provided the request is scored exactly as the calibration split was: same estimator and
sample count, and the marginal likelihood unless labels are given.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .errors import InvalidInputError
from .manifest import CalibrationRecord, DatasetSpec, Manifest

if TYPE_CHECKING:
    from .engine import Engine, Likelihood

FloatArray = NDArray[np.float64]
ScoreFn = Callable[[FloatArray, np.ndarray, DatasetSpec, dict[str, float]], FloatArray]


def nll_bits_per_dim(log_likelihood: FloatArray, spec: DatasetSpec) -> FloatArray:
    """Raw negative log-likelihood in bits per dimension."""
    return -np.asarray(log_likelihood, dtype=np.float64) / (spec.dims * math.log(2))


def _nll(ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float]) -> FloatArray:
    return nll_bits_per_dim(ll, spec)


METHODS: dict[str, tuple[ScoreFn, str]] = {
    "nll": (_nll, "negative log-likelihood in bits/dim (the raw baseline)"),
}
DEFAULT_METHOD = "nll"


def method_stats(method: str, calibration_ll: FloatArray, spec: DatasetSpec) -> dict[str, float]:
    """Summary statistics a method needs from the calibration split (none for raw NLL)."""
    return {}


def score(
    method: str, ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float]
) -> FloatArray:
    """Scores of one method for rows with log-likelihoods `ll` (nats) and inputs `x`."""
    fn, _ = METHODS[method]
    return fn(np.asarray(ll, dtype=np.float64), x, spec, stats)


def calibration_scores(
    ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, dict[str, float]]
) -> dict[str, list[float]]:
    """Every method's scores for the calibration split (stored in the manifest)."""
    return {m: score(m, ll, x, spec, stats.get(m, {})).tolist() for m in METHODS}


def conformal_p_values(calibration: FloatArray, scores: FloatArray) -> FloatArray:
    """p = (1 + #{c >= s}) / (n + 1) for each score s; exact, O((n + m) log n)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(cal) - np.searchsorted(cal, s, side="left")
    return ((1.0 + at_least) / (len(cal) + 1.0)).astype(np.float64)


def _reference(cal: CalibrationRecord, given_labels: bool, method: str) -> list[float]:
    table = cal.scores_given_labels if (given_labels and cal.scores_given_labels) else cal.scores
    return table[method]


async def outlier_results(
    engine: Engine,
    manifest: Manifest,
    x: np.ndarray,
    labels: np.ndarray | None,
    ll: Likelihood,
    samples: int,
    alpha: float,
    method: str | None,
    all_methods: bool,
) -> list[dict[str, Any]]:
    """Per row, {"outlier": {...}} (and {"outliers": [...]} when all methods are asked for)."""
    cal = manifest.calibration
    if cal is None:
        return [{} for _ in range(len(x))]
    chosen = method or cal.default_method
    if chosen not in cal.scores:
        known = ", ".join(sorted(cal.scores))
        raise InvalidInputError.field(["outlier_method"], f"unknown method (this model has: {known})")
    given = labels is not None and engine.conditional
    values = ll.log_likelihood
    if samples != cal.samples:
        # Scored with another estimator size than the calibration split: score again the
        # calibrated way, or the p-values would compare unlike with unlike.
        values = (await engine.log_likelihood(x, labels, cal.samples, seed=0)).log_likelihood
    spec = manifest.dataset
    methods = sorted(cal.scores) if all_methods else [chosen]
    per_method: dict[str, tuple[FloatArray, FloatArray]] = {}
    for m in methods:
        s = score(m, values, x, spec, cal.stats.get(m, {}))
        per_method[m] = (s, conformal_p_values(np.asarray(_reference(cal, given, m)), s))
    out = []
    for i in range(len(x)):
        blocks = {
            m: {
                "method": m,
                "score": float(s[i]),
                "p_value": float(p[i]),
                "is_outlier": bool(p[i] <= alpha),
                "alpha": alpha,
            }
            for m, (s, p) in per_method.items()
        }
        row: dict[str, Any] = {"outlier": blocks[chosen]}
        if all_methods:
            row["outliers"] = [blocks[m] for m in methods]
        out.append(row)
    return out

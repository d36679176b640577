"""Outlier scores from likelihoods, and conformal p-values against a calibration set.

Raw likelihood is a poor outlier score on its own: deep generative models often give
*higher* likelihood to inputs simpler than their training data (Nalisnick et al. 2019),
because low-level statistics and input complexity dominate it. So besides the raw
negative log-likelihood the service offers scores that correct for that:

- `typicality`: how far an input's NLL lies from the in-distribution typical value,
  two-sided (Nalisnick et al. 2019b, the single-input typicality test);
- `complexity`: NLL minus the input's lossless compressed length, both in bits per
  dimension (Serrà et al. 2020, with raw DEFLATE as the compressor);
- `likelihood_ratio`: NLL minus the NLL of a local background model fitted on the
  training split (Ren et al. 2019's ratio, with Schirrmeister et al. 2020's local
  background; see background.py): a learned compressor in place of DEFLATE.

Every score is "larger = more anomalous". A p-value compares a score with the scores of
the held-out in-distribution calibration split stored in the manifest:
    p = (1 + #{calibration scores >= s}) / (n + 1),
which is valid (P(p <= alpha) <= alpha for in-distribution inputs) whatever the score,
provided the request is scored exactly as the calibration split was: same estimator and
sample count, and the marginal likelihood unless labels are given. The statistics a score
needs (the typical NLL) come from the validation split, never the calibration split, so
calibration and test scores stay exchangeable.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from .background import background_log_likelihood
from .errors import InvalidInputError
from .manifest import BackgroundRecord, CalibrationRecord, DatasetSpec, Manifest

if TYPE_CHECKING:
    from .engine import Engine, Likelihood

FloatArray = NDArray[np.float64]
ScoreFn = Callable[
    [FloatArray, np.ndarray, DatasetSpec, dict[str, float], BackgroundRecord | None], FloatArray
]


def nll_bits_per_dim(log_likelihood: FloatArray, spec: DatasetSpec) -> FloatArray:
    """Raw negative log-likelihood in bits per dimension."""
    return -np.asarray(log_likelihood, dtype=np.float64) / (spec.dims * math.log(2))


def compressed_bits(x: np.ndarray, spec: DatasetSpec) -> FloatArray:
    """Lossless compressed length of each image in bits [N]: raw DEFLATE at level 9.

    Raw DEFLATE (no zlib header or checksum) keeps the constant overhead small on tiny
    images; any constant left cancels in rankings and p-values. Each row is compressed on
    its own, so a row's length never depends on the rest of the batch.
    """
    dtype = np.uint8 if spec.levels <= 256 else np.uint16
    rows = np.ascontiguousarray(np.asarray(x).reshape(len(x), -1).astype(dtype))  # [N, D]
    out = np.empty(len(rows), dtype=np.float64)
    for i, row in enumerate(rows):
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        out[i] = 8 * len(c.compress(row.tobytes()) + c.flush())
    return out


def _nll(
    ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return nll_bits_per_dim(ll, spec)


def _typicality(
    ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return np.abs(nll_bits_per_dim(ll, spec) - stats["typical_bpd"])


def _complexity(
    ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    return nll_bits_per_dim(ll, spec) - compressed_bits(x, spec) / spec.dims


def _likelihood_ratio(
    ll: FloatArray, x: np.ndarray, spec: DatasetSpec, stats: dict[str, float], bg: BackgroundRecord | None
) -> FloatArray:
    if bg is None:
        raise ValueError("likelihood_ratio needs a background model")
    return nll_bits_per_dim(ll, spec) - nll_bits_per_dim(background_log_likelihood(bg, x), spec)


METHODS: dict[str, tuple[ScoreFn, str]] = {
    "nll": (_nll, "negative log-likelihood in bits/dim (the raw baseline; ranks simple inputs as typical)"),
    "typicality": (
        _typicality,
        "|NLL - typical NLL| in bits/dim, two-sided: flags inputs far more or far less likely "
        "than in-distribution data (Nalisnick et al. 2019b)",
    ),
    "complexity": (
        _complexity,
        "NLL minus the input's losslessly compressed length (raw DEFLATE), bits/dim: corrects "
        "likelihood for input complexity (Serrà et al. 2020)",
    ),
    "likelihood_ratio": (
        _likelihood_ratio,
        "NLL minus the NLL of a local background model (each pixel given its left and upper "
        "neighbours, fitted on the training split), bits/dim: the likelihood ratio of Ren et al. "
        "2019 with a local background (Schirrmeister et al. 2020)",
    ),
}
NEEDS_BACKGROUND = frozenset({"likelihood_ratio"})
DEFAULT_METHOD = "nll"  # only the fallback: each build picks its default on validation data


def method_stats(method: str, reference_ll: FloatArray, spec: DatasetSpec) -> dict[str, float]:
    """Statistics a method needs, from in-distribution log-likelihoods of the validation split."""
    if method == "typicality":
        return {"typical_bpd": float(np.mean(nll_bits_per_dim(reference_ll, spec)))}
    return {}


def available_methods(background: BackgroundRecord | None) -> list[str]:
    """The methods a model can be scored with (stores built without a background lack one)."""
    return [m for m in METHODS if background is not None or m not in NEEDS_BACKGROUND]


def score(
    method: str,
    ll: FloatArray,
    x: np.ndarray,
    spec: DatasetSpec,
    stats: dict[str, float],
    background: BackgroundRecord | None = None,
) -> FloatArray:
    """Scores of one method for rows with log-likelihoods `ll` (nats) and inputs `x`."""
    fn, _ = METHODS[method]
    return fn(np.asarray(ll, dtype=np.float64), x, spec, stats, background)


def all_stats(reference_ll: FloatArray, spec: DatasetSpec) -> dict[str, dict[str, float]]:
    """Every method's statistics from one set of reference log-likelihoods."""
    return {m: method_stats(m, reference_ll, spec) for m in METHODS}


def calibration_scores(
    ll: FloatArray,
    x: np.ndarray,
    spec: DatasetSpec,
    stats: dict[str, dict[str, float]],
    background: BackgroundRecord | None = None,
) -> dict[str, list[float]]:
    """Every available method's scores for the calibration split (stored in the manifest)."""
    return {
        m: score(m, ll, x, spec, stats.get(m, {}), background).tolist() for m in available_methods(background)
    }


def conformal_p_values(calibration: FloatArray, scores: FloatArray) -> FloatArray:
    """p = (1 + #{c >= s}) / (n + 1) for each score s; exact, O((n + m) log n)."""
    cal = np.sort(np.asarray(calibration, dtype=np.float64))
    s = np.asarray(scores, dtype=np.float64)
    at_least = len(cal) - np.searchsorted(cal, s, side="left")
    return ((1.0 + at_least) / (len(cal) + 1.0)).astype(np.float64)


def benjamini_hochberg(p_values: FloatArray, fdr: float) -> NDArray[np.bool_]:
    """Benjamini-Hochberg selection: the rows declared outliers at false-discovery rate `fdr`.

    Rejects the k smallest p-values, k the largest i with p_(i) <= i * fdr / m. Conformal
    p-values against one calibration set are positively dependent (PRDS), under which BH
    controls the FDR (Bates et al. 2023).
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, dtype=bool)
    order = np.argsort(p, kind="stable")
    passed = p[order] <= fdr * np.arange(1, m + 1) / m
    k = int(np.nonzero(passed)[0].max()) + 1 if passed.any() else 0
    selected = np.zeros(m, dtype=bool)
    selected[order[:k]] = True
    return selected


def _reference(cal: CalibrationRecord, given_labels: bool) -> tuple[dict[str, list[float]], dict[str, Any]]:
    if given_labels and cal.scores_given_labels:
        return cal.scores_given_labels, cal.stats_given_labels or cal.stats
    return cal.scores, cal.stats


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
    fdr: float | None = None,
) -> list[dict[str, Any]]:
    """Per row, {"outlier": {...}} (and {"outliers": [...]} when all methods are asked for).

    A row's score and p-value depend only on that row; with `fdr`, each verdict also
    carries the batch's Benjamini-Hochberg selection for that method.
    """
    cal = manifest.calibration
    if cal is None:
        return [{} for _ in range(len(x))]
    chosen = method or cal.default_method
    if chosen not in cal.scores or chosen not in METHODS:
        known = ", ".join(sorted(m for m in cal.scores if m in METHODS))
        raise InvalidInputError.field(["outlier_method"], f"unknown method (this model has: {known})")
    given = labels is not None and engine.conditional
    values = ll.log_likelihood
    if samples != cal.samples:
        # Scored with another estimator size than the calibration split: score again the
        # calibrated way, or the p-values would compare unlike with unlike.
        values = (await engine.log_likelihood(x, labels, cal.samples, seed=0)).log_likelihood
    spec = manifest.dataset
    table, stats = _reference(cal, given)
    methods = sorted(m for m in table if m in METHODS) if all_methods else [chosen]
    per_method: dict[str, tuple[FloatArray, FloatArray, NDArray[np.bool_] | None]] = {}
    for m in methods:
        s = score(m, values, x, spec, stats.get(m, {}), cal.background)
        p = conformal_p_values(np.asarray(table[m]), s)
        per_method[m] = (s, p, None if fdr is None else benjamini_hochberg(p, fdr))
    out = []
    for i in range(len(x)):
        blocks: dict[str, dict[str, Any]] = {}
        for m, (s, p, bh) in per_method.items():
            block: dict[str, Any] = {
                "method": m,
                "score": float(s[i]),
                "p_value": float(p[i]),
                "is_outlier": bool(p[i] <= alpha),
                "alpha": alpha,
            }
            if bh is not None:
                block["fdr"] = fdr
                block["bh_selected"] = bool(bh[i])
            blocks[m] = block
        row: dict[str, Any] = {"outlier": blocks[chosen]}
        if all_methods:
            row["outliers"] = [blocks[m] for m in methods]
        out.append(row)
    return out

"""Outlier detection on a table, the flow's calibrated scores beside scikit-learn's detectors.

A tabular outlier model trains on one class (breast_cancer's benign records); the other
classes are the outliers. On the same split: the flow's served scores (negative
log-density, and typicality) against IsolationForest, LocalOutlierFactor (novelty mode)
and a one-class SVM fitted on the same standardised training rows; and how often the
flow's conformal p-values flag held-out inliers, beside the interval an exact conformal
procedure gives at these sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import betabinom
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import LocalOutlierFactor
from sklearn.svm import OneClassSVM

from service.manifest import CalibrationRecord
from service.outliers import conformal_p_values

from ..ood_metrics import detection_metrics

Float = NDArray[np.float64]
ALPHA = 0.05


def classical_scores(
    train: Float, inliers: Float, outliers: Float, seed: int = 0
) -> dict[str, tuple[Float, Float]]:
    """Each detector's (inlier, outlier) scores, larger = more anomalous, fitted on `train`
    standardised. scikit-learn's default settings, none tuned: tuning them needs outliers,
    which an outlier model's training never sees."""
    mean, std = train.mean(0), np.maximum(train.std(0), 1e-9)
    z_train, z_in, z_out = ((a - mean) / std for a in (train, inliers, outliers))
    detectors = {
        "isolation-forest": IsolationForest(random_state=seed).fit(z_train),
        "lof": LocalOutlierFactor(novelty=True).fit(z_train),
        "one-class-svm": OneClassSVM().fit(z_train),
    }
    return {name: (-d.score_samples(z_in), -d.score_samples(z_out)) for name, d in detectors.items()}


def exact_flag_interval(n_calibration: int, n_test: int, alpha: float, coverage: float = 0.9) -> list[float]:
    """The central `coverage` interval of the fraction of n_test inliers an exact split-conformal
    procedure flags at `alpha` (beta-binomial over the draw of calibration and test data)."""
    k = int(np.floor(alpha * (n_calibration + 1)))
    if k < 1:
        return [0.0, 0.0]
    dist = betabinom(n_test, k, n_calibration + 1 - k)
    tail = (1 - coverage) / 2
    return [float(dist.ppf(tail) / n_test), float(dist.ppf(1 - tail) / n_test)]


def outlier_report(
    flow_scores: dict[str, tuple[Float, Float]],
    calibration: CalibrationRecord,
    train: Float,
    inliers: Float,
    outliers: Float,
) -> dict[str, Any]:
    """AUROC per score (the flow's served ones and the classical detectors), and the flow's
    default p-values on held-out inliers and on the outliers."""
    scores = {f"flow ({m})": pair for m, pair in flow_scores.items()} | classical_scores(
        train, inliers, outliers
    )
    auroc = {name: detection_metrics(a, b)["auroc"] for name, (a, b) in scores.items()}
    default = calibration.default_method
    cal = np.asarray(calibration.scores[default])
    p_in = conformal_p_values(cal, flow_scores[default][0])
    p_out = conformal_p_values(cal, flow_scores[default][1])
    classical_best = max(v for k, v in auroc.items() if not k.startswith("flow"))
    return {
        "inliers": len(inliers),
        "outliers": len(outliers),
        "auroc": auroc,
        "default_method": default,
        "default_beats_classical": auroc[f"flow ({default})"] >= classical_best,
        "alpha": ALPHA,
        "inliers_flagged": float((p_in <= ALPHA).mean()),
        "inliers_flagged_exact_interval_90": exact_flag_interval(len(cal), len(inliers), ALPHA),
        "outliers_flagged": float((p_out <= ALPHA).mean()),
    }


__all__ = ["classical_scores", "exact_flag_interval", "outlier_report"]

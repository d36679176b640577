"""Detection metrics with outliers as the positive class."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def detection_metrics(inlier_scores: np.ndarray, outlier_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR (outliers positive) and the false-positive rate at 95% true-positive rate.

    Scores are "larger = more anomalous".
    """
    s = np.concatenate([inlier_scores, outlier_scores]).astype(np.float64)
    t = np.concatenate([np.zeros(len(inlier_scores)), np.ones(len(outlier_scores))])
    fpr, tpr, _ = roc_curve(t, s)
    return {
        "auroc": float(roc_auc_score(t, s)),
        "aupr": float(average_precision_score(t, s)),
        "fpr95": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
    }

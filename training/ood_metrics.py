"""Detection metrics with outliers as the positive class."""

from __future__ import annotations

import numpy as np
from scipy.stats import betabinom
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from service.outliers import conformal_p_values


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


def resplit_flag_interval(
    calibration: np.ndarray,
    test: np.ndarray,
    alphas: tuple[float, ...] = (0.05, 0.01),
    draws: int = 2000,
    coverage: float = 0.9,
    seed: int = 0,
) -> dict[str, list[float]]:
    """How far the flagged fraction at each alpha moves with the draw of the held-out data.

    The calibration and test scores of in-distribution data are exchangeable, so every
    random re-split of their pool into sets of the same two sizes is as likely as the one
    observed. Per alpha: the central `coverage` interval of the fraction of test scores
    with conformal p <= alpha over `draws` re-splits. A fraction inside it is what an exact
    procedure gives at these sample sizes; one outside it points at a real shift.
    """
    cal = np.asarray(calibration, dtype=np.float64)
    pool = np.concatenate([cal, np.asarray(test, dtype=np.float64)])  # [n_cal + n_test]
    n = len(cal)
    rng = np.random.default_rng(seed)
    flagged = np.empty((draws, len(alphas)))  # [draws, alphas]
    for d in range(draws):
        perm = rng.permutation(len(pool))
        p = conformal_p_values(pool[perm[:n]], pool[perm[n:]])
        flagged[d] = [np.mean(p <= a) for a in alphas]
    tail = 100 * (1 - coverage) / 2
    lo, hi = np.percentile(flagged, [tail, 100 - tail], axis=0)
    return {str(a): [float(lo[i]), float(hi[i])] for i, a in enumerate(alphas)}


def band_probability(n_calibration: int, n_test: int, alpha: float, low: float, high: float) -> float:
    """The probability that an exact split-conformal procedure flags a fraction of
    `n_test` in-distribution inputs within [low, high] at `alpha`, over the draw of the
    calibration and test data (continuous scores, so no ties).

    p <= alpha exactly when a score exceeds the k-th largest of the n calibration scores,
    k = floor(alpha * (n + 1)). The in-distribution probability of exceeding it is
    Beta(k, n + 1 - k) over the calibration draw, so the flagged count is
    beta-binomial(n_test, k, n + 1 - k). `resplit_flag_interval` shows the same spread
    from the observed scores; this gives it in closed form, for any sizes.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    # k counted with the service's own arithmetic: floor(alpha * (n + 1)) is one short
    # where alpha * (n + 1) rounds just below a whole number (0.29 * 100 = 28.999...).
    at_least = np.arange(n_calibration + 1)  # [n + 1] possible #{calibration scores >= s}
    k = int(np.sum((1.0 + at_least) / (n_calibration + 1.0) <= alpha))
    counts = np.arange(n_test + 1)  # [n_test + 1]
    # Band ends such as 0.07 * n are inexact in binary; a count on the end is inside.
    inside = (counts >= low * n_test - 1e-9) & (counts <= high * n_test + 1e-9)
    if k == 0:  # alpha below 1 / (n + 1): nothing is ever flagged
        return float(inside[0])
    pmf = betabinom.pmf(counts, n_test, k, n_calibration + 1 - k)
    return float(pmf[inside].sum())

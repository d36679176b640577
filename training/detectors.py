"""Classical outlier detectors fitted on the same training images, for side-by-side evaluation."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KernelDensity, LocalOutlierFactor
from sklearn.svm import OneClassSVM

ScoreFn = Callable[[np.ndarray], np.ndarray]


def _flat(x: np.ndarray, levels: int) -> np.ndarray:
    return np.asarray(x, dtype=np.float64).reshape(len(x), -1) / (levels - 1)  # [N, D] in [0, 1]


def fit_detectors(x_train: np.ndarray, levels: int, seed: int = 0) -> dict[str, ScoreFn]:
    """IsolationForest, LOF (novelty mode), one-class SVM and a KDE, fitted on `x_train`.

    Each returned function maps integer images to scores, larger = more anomalous.
    """
    xt = _flat(x_train, levels)
    iforest = IsolationForest(n_estimators=200, random_state=seed).fit(xt)
    lof = LocalOutlierFactor(n_neighbors=20, novelty=True).fit(xt)
    ocsvm = OneClassSVM(kernel="rbf", gamma="scale", nu=0.1).fit(xt)
    # Bandwidth by 5-fold held-out likelihood on the training images.
    grid = GridSearchCV(KernelDensity(), {"bandwidth": np.logspace(-1.3, 0.3, 12)}, cv=5).fit(xt)
    kde: KernelDensity = grid.best_estimator_
    return {
        "isolation-forest": lambda x: -iforest.score_samples(_flat(x, levels)),
        "lof": lambda x: -lof.score_samples(_flat(x, levels)),
        "one-class-svm": lambda x: -ocsvm.score_samples(_flat(x, levels)),
        "kde": lambda x: -kde.score_samples(_flat(x, levels)),
    }

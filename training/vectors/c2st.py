"""Classifier two-sample test (C2ST), computed as sbibm computes it.

sbibm.metrics.c2st: both sample sets z-scored by the first (reference) set's mean and
standard deviation; scikit-learn's MLPClassifier (ReLU, two hidden layers of 10·dim units,
Adam, max_iter 10,000); 5-fold shuffled cross-validation; the mean accuracy. 0.5 means the
classifier cannot tell the sets apart, 1.0 that it always can.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from sklearn.model_selection import KFold, cross_val_score
from sklearn.neural_network import MLPClassifier


def c2st(reference: NDArray[np.float64], other: NDArray[np.float64], seed: int = 1, folds: int = 5) -> float:
    """Cross-validated accuracy of telling `other` [M, d] from `reference` [N, d]."""
    mean = reference.mean(0)
    std = reference.std(0, ddof=1)  # torch.std, as sbibm uses, is the unbiased estimate
    X, Y = (reference - mean) / std, (other - mean) / std
    dims = X.shape[1]
    clf = MLPClassifier(
        activation="relu",
        hidden_layer_sizes=(10 * dims, 10 * dims),
        max_iter=10_000,
        solver="adam",
        random_state=seed,
    )
    data = np.concatenate([X, Y])
    target = np.concatenate([np.zeros(len(X)), np.ones(len(Y))])
    shuffle = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(clf, data, target, cv=shuffle, scoring="accuracy")))


__all__ = ["c2st"]

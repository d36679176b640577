"""The classical density baselines reproduce hand-computed values on toy data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.manifest import DatasetSpec
from training.baselines import (
    class_pixel_loglik,
    class_pixel_tables,
    dequantized_bound,
    evaluate_baselines,
    pixel_categorical_loglik,
    pixel_categorical_table,
)
from training.data import ImageDataset, SplitFractions, make_splits

# Three 1×2 images with 2 levels.
TOY = np.array([[[0, 1]], [[0, 0]], [[1, 1]]], dtype=np.int64)


def test_pixel_categorical_matches_hand_computed_counts() -> None:
    # add-one smoothing: pixel 0 sees {0, 0, 1} -> (2+1, 1+1)/5; pixel 1 sees {1, 0, 1} -> (1+1, 2+1)/5
    table = pixel_categorical_table(TOY, levels=2, alpha=1.0)
    np.testing.assert_allclose(np.exp(table), [[3 / 5, 2 / 5], [2 / 5, 3 / 5]])
    ll = pixel_categorical_loglik(table, np.array([[[0, 1]], [[1, 0]]]))
    np.testing.assert_allclose(ll, [math.log(3 / 5 * 3 / 5), math.log(2 / 5 * 2 / 5)])


def test_class_conditional_tables_use_only_their_class() -> None:
    y = np.array([0, 0, 1])
    tables = class_pixel_tables(TOY, y, n_classes=2, levels=2, alpha=0.5)
    # class 1 holds only [1, 1]: each pixel (0 + 0.5, 1 + 0.5) / 2
    np.testing.assert_allclose(np.exp(tables[1]), [[0.25, 0.75], [0.25, 0.75]])
    # class 0 holds [0, 1] and [0, 0]: pixel 0 (2.5, 0.5)/3, pixel 1 (1.5, 1.5)/3
    ll = class_pixel_loglik(tables, np.array([[[0, 0]]]))
    np.testing.assert_allclose(ll, [[math.log(2.5 / 3 * 1.5 / 3), math.log(0.25 * 0.25)]])


def test_dequantized_bound_is_exact_for_a_flat_density() -> None:
    # Uniform density on [0, K)^D: every draw scores -D log K, which is log P(x) exactly.
    K, D = 4, 2
    x = np.array([[[0, 3]], [[2, 1]]], dtype=np.int64)
    flat = dequantized_bound(lambda v: np.full(len(v), -D * math.log(K)), x, np.random.default_rng(0), 16)
    np.testing.assert_allclose(flat, -D * math.log(K))


def test_dequantized_bound_tightens_towards_the_discrete_probability() -> None:
    # 1-D density p(v) = 2v / K² on [0, K): P(x) = ∫_x^{x+1} p = (2x + 1) / K².
    K = 4
    x = np.array([[[0]], [[1]], [[3]]], dtype=np.int64)

    def score(v: np.ndarray) -> np.ndarray:
        return np.log(2 * v[:, 0] / K**2)

    exact = np.log((2 * x[:, 0, 0] + 1) / K**2)
    loose = dequantized_bound(score, x, np.random.default_rng(0), 1)
    tight = dequantized_bound(score, x, np.random.default_rng(0), 20000)
    np.testing.assert_allclose(tight, exact, atol=0.02)
    # (a bound in expectation only, so a single estimate may land a little above)
    # averaged over draws, one draw is the plain bound E_u log p(x + u) < log P(x)
    plain = np.mean([dequantized_bound(score, x, np.random.default_rng(s), 1) for s in range(400)], axis=0)
    assert (plain <= exact + 1e-3).all()
    assert plain[0] < exact[0] - 0.1  # in bin [0, 1) the density varies most
    assert loose.shape == (3,)


def test_evaluate_baselines_scores_every_estimator_on_the_test_split() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2), 60)
    # class 0 is dark, class 1 bright: the class-conditional table must beat the pooled one
    x = np.where(
        y[:, None, None, None] == 0, rng.integers(0, 2, (120, 1, 2, 2)), rng.integers(2, 4, (120, 1, 2, 2))
    )
    spec = DatasetSpec(name="toy", shape=(1, 2, 2), levels=4, label_names=["dark", "bright"])
    data = ImageDataset(spec=spec, x=x, y=y)
    splits = make_splits(y, len(y), seed=0, fractions=SplitFractions())
    results = {r.name: r for r in evaluate_baselines(data, splits, seed=0, draws=8)}
    assert set(results) == {
        "pixel categorical",
        "class-conditional pixel categorical",
        "class-conditional pixel categorical (marginal)",
        "Gaussian mixture (dequantized)",
        "kernel density estimate (dequantized)",
    }
    n_test = len(splits.test)
    for r in results.values():
        assert r.log_likelihood.shape == (n_test,)
        assert np.isfinite(r.log_likelihood).all()
    # pooled: each pixel uniform-ish over 4 levels (2 bits/dim); per class: 1 bit/dim
    assert results["pixel categorical"].bits_per_dim(4) == pytest.approx(2.0, abs=0.1)
    assert results["class-conditional pixel categorical"].bits_per_dim(4) == pytest.approx(1.0, abs=0.1)

"""Outlier scores, conformal p-values and Benjamini-Hochberg, independent of any model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.background import background_log_likelihood, fit_background
from service.manifest import DatasetSpec
from service.outliers import (
    METHODS,
    all_stats,
    available_methods,
    benjamini_hochberg,
    compressed_bits,
    conformal_p_values,
    score,
)

SPEC = DatasetSpec(name="t", shape=(1, 8, 8), levels=17, label_names=None)


def test_p_values_match_the_definition_exactly() -> None:
    rng = np.random.default_rng(0)
    cal = rng.normal(size=101).round(1)  # ties on purpose
    s = np.concatenate([rng.normal(size=50).round(1), cal[:5], [-10.0, 10.0]])
    got = conformal_p_values(cal, s)
    want = np.array([(1 + np.sum(cal >= v)) / (len(cal) + 1) for v in s])
    np.testing.assert_array_equal(got, want)
    assert got[-2] == 1.0
    assert got[-1] == pytest.approx(1 / 102)


def test_p_values_of_exchangeable_scores_are_uniform_and_valid() -> None:
    # In-distribution scores are exchangeable with the calibration scores: p-values are
    # (super-)uniform, so P(p <= alpha) <= alpha; for continuous scores, ~ equal.
    rng = np.random.default_rng(1)
    n_cal, n_test, reps = 199, 50, 400
    flagged = {0.05: 0, 0.01: 0}
    pooled = []
    for _ in range(reps):
        data = rng.gamma(2.0, size=n_cal + n_test)
        p = conformal_p_values(data[:n_cal], data[n_cal:])
        pooled.append(p)
        for a in flagged:
            flagged[a] += int(np.sum(p <= a))
    total = reps * n_test
    for a, hits in flagged.items():
        exact = np.floor(a * (n_cal + 1)) / (n_cal + 1)  # the conformal guarantee, met with equality
        assert abs(hits / total - exact) < 4 * np.sqrt(exact * (1 - exact) / total) + 1e-3
    jitter = np.concatenate(pooled) - rng.random(total) / (n_cal + 1)  # continuous version
    assert stats.kstest(jitter, "uniform").pvalue > 0.001


def test_benjamini_hochberg_matches_its_definition() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = np.concatenate([rng.random(30), rng.random(10) * 1e-3])
        rng.shuffle(p)
        q = 0.1
        m = len(p)
        ranked = np.sort(p)
        ok = [i for i in range(1, m + 1) if ranked[i - 1] <= q * i / m]
        k = max(ok) if ok else 0
        want = p <= (ranked[k - 1] if k else -1.0)
        np.testing.assert_array_equal(benjamini_hochberg(p, q), want)
    assert not benjamini_hochberg(np.array([0.5, 0.9]), 0.05).any()
    assert benjamini_hochberg(np.array([]), 0.05).shape == (0,)


def test_compressed_length_tracks_complexity_and_is_per_row() -> None:
    rng = np.random.default_rng(3)
    blank = np.zeros((4, 1, 8, 8), dtype=np.int64)
    noise = rng.integers(0, 17, size=(4, 1, 8, 8))
    cb, cn = compressed_bits(blank, SPEC), compressed_bits(noise, SPEC)
    assert (cb < cn).all()
    both = compressed_bits(np.concatenate([noise, blank]), SPEC)
    np.testing.assert_array_equal(both, np.concatenate([cn, cb]))  # no batch dependence


def test_scores_are_larger_for_more_anomalous_inputs() -> None:
    x = np.zeros((3, 1, 8, 8), dtype=np.int64)
    ref = -np.full(100, 2.0 * 64 * np.log(2))  # reference NLL: 2 bits/dim
    st = all_stats(ref, SPEC)
    assert st["typicality"]["typical_bpd"] == pytest.approx(2.0)
    ll = -np.array([1.0, 2.0, 3.0]) * 64 * np.log(2)  # 1, 2, 3 bits/dim
    np.testing.assert_allclose(score("nll", ll, x, SPEC, {}), [1.0, 2.0, 3.0])
    # Two-sided: far too likely is as suspicious as far too unlikely.
    np.testing.assert_allclose(score("typicality", ll, x, SPEC, st["typicality"]), [1.0, 0.0, 1.0])
    comp = score("complexity", ll, x, SPEC, {})
    np.testing.assert_allclose(comp, [1.0, 2.0, 3.0] - compressed_bits(x, SPEC) / 64)
    bg = fit_background(np.zeros((5, 1, 8, 8), dtype=np.int64), SPEC.levels)
    ratio = score("likelihood_ratio", ll, x, SPEC, {}, bg)
    bg_bpd = -background_log_likelihood(bg, x) / (64 * np.log(2))
    np.testing.assert_allclose(ratio, [1.0, 2.0, 3.0] - bg_bpd)
    assert set(METHODS) == {"nll", "typicality", "complexity", "likelihood_ratio"}
    # a store built before the background model offers the others, never a broken ratio
    assert available_methods(None) == ["nll", "typicality", "complexity"]
    assert available_methods(bg) == list(METHODS)
    with pytest.raises(ValueError, match="background"):
        score("likelihood_ratio", ll, x, SPEC, {}, None)

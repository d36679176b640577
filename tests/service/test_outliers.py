"""Outlier scores, conformal p-values and Benjamini-Hochberg, independent of any model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.background import background_log_likelihood, fit_background
from service.manifest import DatasetSpec
from service.outliers import (
    METHODS,
    Evidence,
    all_stats,
    available_methods,
    benjamini_hochberg,
    compressed_bits,
    conformal_p_values,
    label_ambiguity,
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
    st = all_stats(Evidence(ref, np.zeros((100, 1, 8, 8), dtype=np.int64)), SPEC)
    assert st["typicality"]["typical_bpd"] == pytest.approx(2.0)
    ll = -np.array([1.0, 2.0, 3.0]) * 64 * np.log(2)  # 1, 2, 3 bits/dim
    e = Evidence(ll, x)
    np.testing.assert_allclose(score("nll", e, SPEC, {}), [1.0, 2.0, 3.0])
    # Two-sided: far too likely is as suspicious as far too unlikely.
    np.testing.assert_allclose(score("typicality", e, SPEC, st["typicality"]), [1.0, 0.0, 1.0])
    comp = score("complexity", e, SPEC, {})
    np.testing.assert_allclose(comp, [1.0, 2.0, 3.0] - compressed_bits(x, SPEC) / 64)
    bg = fit_background(np.zeros((5, 1, 8, 8), dtype=np.int64), SPEC.levels)
    ratio = score("likelihood_ratio", e, SPEC, {}, bg)
    bg_bpd = -background_log_likelihood(bg, x) / (64 * np.log(2))
    np.testing.assert_allclose(ratio, [1.0, 2.0, 3.0] - bg_bpd)
    assert list(METHODS) == [
        "nll",
        "typicality",
        "complexity",
        "likelihood_ratio",
        "label_ambiguity",
        "ratio_ambiguity",
        "combined",
    ]
    # a store built before the background model offers the others, never a broken ratio
    assert available_methods(None) == ["nll", "typicality", "complexity", "label_ambiguity"]
    assert available_methods(bg) == list(METHODS)
    # an unconditional model has no label posterior
    assert available_methods(bg, conditional=False) == ["nll", "typicality", "complexity", "likelihood_ratio"]
    with pytest.raises(ValueError, match="background"):
        score("likelihood_ratio", e, SPEC, {}, None)
    with pytest.raises(ValueError, match="posterior"):
        score("label_ambiguity", e, SPEC, {})


def test_label_ambiguity_is_the_gap_between_the_two_likeliest_labels() -> None:
    post = np.array([[0.98, 0.01, 0.01], [0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    log_post = np.log(post)
    log_post[0, 2] = -800.0  # beyond float64's exp: the gap is still exact in log space
    got = label_ambiguity(log_post)
    np.testing.assert_allclose(got, [np.log(0.01 / 0.98), np.log(0.3 / 0.5), 0.0], atol=1e-12)
    assert got[0] < got[1] < got[2]  # a confident row is the least anomalous


def test_standardised_sums_use_validation_medians_and_spreads() -> None:
    rng = np.random.default_rng(3)
    n = 200
    x = rng.integers(0, 17, size=(n, 1, 8, 8))
    ref = Evidence(-rng.normal(2.0, 0.2, n) * 64 * np.log(2), x, np.log(rng.dirichlet(np.ones(10), n)))
    bg = fit_background(x, SPEC.levels)
    st = all_stats(ref, SPEC, bg)
    parts = {"likelihood_ratio": bg, "complexity": None, "label_ambiguity": None}
    for name, b in parts.items():
        values = score(name, ref, SPEC, {}, bg if b is not None else None)
        q1, q3 = np.percentile(values, [25, 75])
        assert st["combined"][f"{name}_median"] == pytest.approx(np.median(values))
        assert st["combined"][f"{name}_scale"] == pytest.approx((q3 - q1) / 1.349)
    z = {
        name: (score(name, ref, SPEC, {}, bg) - st["combined"][f"{name}_median"])
        / st["combined"][f"{name}_scale"]
        for name in parts
    }
    np.testing.assert_allclose(score("combined", ref, SPEC, st["combined"], bg), sum(z.values()))
    np.testing.assert_allclose(
        score("ratio_ambiguity", ref, SPEC, st["ratio_ambiguity"], bg),
        z["likelihood_ratio"] + z["label_ambiguity"],
    )
    # Labelled scoring has no posterior: its statistics (and so the sum) leave that part out.
    given = all_stats(Evidence(ref.ll, x), SPEC, bg)
    assert "label_ambiguity_median" not in given["combined"]
    np.testing.assert_allclose(
        score("combined", Evidence(ref.ll, x), SPEC, given["combined"], bg),
        z["likelihood_ratio"] + z["complexity"],
    )

"""Synthetic outlier sets, detection metrics and the `ood-eval` protocols (tiny models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.outliers import METHODS, conformal_p_values
from training.data import load_dataset
from training.ood_eval import DetectorResult, OODReport, evaluate_novelty, evaluate_store, render_markdown
from training.ood_metrics import band_probability, detection_metrics, resplit_flag_interval
from training.ood_sets import ALL_SETS, build_sets


def test_sets_are_valid_images_and_deterministic() -> None:
    x = load_dataset("digits").x[:50]
    a, b = build_sets(x, 17, seed=4), build_sets(x, 17, seed=4)
    assert set(a) == set(ALL_SETS)
    for name, imgs in a.items():
        assert imgs.shape == x.shape, name
        assert imgs.dtype == np.int64
        assert imgs.min() >= 0 and imgs.max() <= 16, name
        np.testing.assert_array_equal(imgs, b[name])
        assert not np.array_equal(imgs, x), name
    np.testing.assert_array_equal(a["inverted"], 16 - x)
    assert (a["strokes-erased"] <= x).all()
    # Shuffling keeps each image's histogram.
    np.testing.assert_array_equal(np.sort(a["pixel-shuffled"].reshape(50, -1)), np.sort(x.reshape(50, -1)))


def test_non_square_images_keep_their_shape_in_every_set() -> None:
    # A quarter turn swaps H and W: the calibration of a 6x10 model crashed on it.
    x = np.random.default_rng(0).integers(0, 8, (20, 1, 6, 10))
    sets = build_sets(x, 8)
    assert "rotated180" in sets and "rotated90" not in sets
    assert all(imgs.shape == x.shape for imgs in sets.values())
    np.testing.assert_array_equal(sets["rotated180"], x[..., ::-1, ::-1])


def test_detection_metrics() -> None:
    inl, out = np.arange(100.0), np.arange(100.0) + 1000
    assert detection_metrics(inl, out) == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
    flipped = detection_metrics(out, inl)
    assert flipped["auroc"] == 0.0
    assert flipped["fpr95"] == 1.0
    same = detection_metrics(np.zeros(10), np.zeros(10))
    assert same["auroc"] == pytest.approx(0.5)


def test_resplit_interval_is_the_sampling_spread_of_an_exact_procedure() -> None:
    rng = np.random.default_rng(3)
    cal, test = rng.normal(size=270), rng.normal(size=269)
    band = resplit_flag_interval(cal, test, draws=1000)
    lo, hi = band["0.05"]
    # Binomial-like spread around floor(0.05 * 271) / 271 = 0.048 at these sizes:
    # sd ~ sqrt(0.05 * 0.95 * (1/270 + 1/269)) ~ 0.019, so the 90 % band is about +-0.03.
    assert 0.01 <= lo <= 0.035 and 0.065 <= hi <= 0.09
    assert band["0.01"][0] <= 0.01 <= band["0.01"][1]
    # Whatever the scores' scale: only ranks matter.
    assert resplit_flag_interval(np.exp(cal), np.exp(test), draws=1000) == band
    # With 10x the data the band narrows accordingly.
    wide = resplit_flag_interval(rng.normal(size=2700), rng.normal(size=2690), draws=300)["0.05"]
    assert wide[1] - wide[0] < (hi - lo) / 2


def test_band_probability_is_exact_for_the_service_conformal_p_values() -> None:
    # One test input against 19 calibration scores: p <= 0.05 only above all 19, which an
    # exchangeable input is with probability 1/20.
    assert band_probability(19, 1, 0.05, 1.0, 1.0) == pytest.approx(1 / 20)
    assert band_probability(19, 1, 0.05, 0.0, 0.0) == pytest.approx(19 / 20)
    assert band_probability(18, 5, 0.05, 0.0, 0.0) == 1.0  # floor(0.05 * 19) = 0: never flagged
    # Against a simulation of the service's own p-values on continuous in-distribution data.
    rng = np.random.default_rng(0)
    n_cal, n_test, alpha, low, high = 60, 40, 0.1, 0.05, 0.15
    draws = 4000
    inside = 0
    for _ in range(draws):
        p = conformal_p_values(rng.normal(size=n_cal), rng.normal(size=n_test))
        inside += low <= np.mean(p <= alpha) <= high
    exact = band_probability(n_cal, n_test, alpha, low, high)
    assert abs(inside / draws - exact) < 4 * np.sqrt(exact * (1 - exact) / draws)
    # The service's p = 0.29 flags at alpha 0.29 with 99 calibration scores (k = 29, where
    # floor(0.29 * 100) computes 28).
    assert band_probability(99, 1, 0.29, 1.0, 1.0) == pytest.approx(29 / 100)
    with pytest.raises(ValueError, match="alpha must lie in"):
        band_probability(99, 1, 1.0, 0.0, 1.0)
    # digits: 269 calibration and 269 test images. The band at 0.05 holds about two
    # times in three for an exact procedure; the one at 0.01 almost always.
    assert band_probability(269, 269, 0.05, 0.03, 0.07) == pytest.approx(0.68, abs=0.01)
    assert band_probability(269, 269, 0.01, 0.0, 0.025) > 0.95


def test_store_protocols_and_calibration_report(tiny_store: Path) -> None:
    report = evaluate_store(tiny_store, "digits")
    assert set(report.protocols) == {"transformed", "simpler"}
    detectors = {r.detector for r in report.protocols["simpler"]}
    for fam in ("flow", "vae", "pixelcnn", "diffusion"):
        assert {f"{fam}/nll", f"{fam}/typicality", f"{fam}/complexity"} <= detectors
        assert report.defaults[fam] in set(METHODS)
    assert {"isolation-forest", "lof", "one-class-svm", "kde"} <= detectors
    for rows in report.protocols.values():
        for r in rows:
            for m in r.sets.values():
                assert all(0.0 <= v <= 1.0 for v in m.values())
    kde = next(r for r in report.protocols["transformed"] if r.detector == "kde")
    assert kde.sets["uniform-noise"]["auroc"] > 0.95  # a fitted density tells noise from digits
    # Calibration rows: every likelihood model, marginal and labelled, every method (the
    # label posterior's own score only unlabelled).
    assert len(report.calibration) == 4 * (2 * len(METHODS) - 1)
    for c in report.calibration:
        assert c.n == report.calibration[0].n > 200  # the whole test split
        assert c.n_calibration > 200  # the whole calibration split
        assert 0.0 <= c.flagged["0.01"] <= c.flagged["0.05"] <= 0.2
        for a in ("0.05", "0.01"):
            lo, hi = c.resplit_90[a]
            assert 0.0 <= lo <= float(a) <= hi <= 0.2  # an exact procedure's spread contains alpha
    text = render_markdown(report)
    assert "| **flow/complexity** |" in text
    assert "alpha 0.05" in text
    c = report.calibration[0]
    assert f"| {c.flagged['0.05']:.3f} ({round(c.flagged['0.05'] * c.n)}) [" in text  # with its count
    odds = band_probability(c.n_calibration, c.n, 0.05, 0.03, 0.07)
    assert f"in [0.03, 0.07] at alpha 0.05 with probability {odds:.2f}" in text


def test_novelty_protocol_retrains_without_the_held_out_class() -> None:
    rows = evaluate_novelty(
        "digits", classes=[0], families=("pixelcnn",), train_overrides={"max_epochs": 2, "val_every": 1}
    )
    names = {r.detector for r in rows}
    assert {"pixelcnn/nll", "pixelcnn/typicality", "pixelcnn/complexity", "kde"} <= names
    for r in rows:
        assert list(r.sets) == ["class 0"]


def test_markdown_lists_every_held_out_class_when_there_are_many() -> None:
    sets = {f"class {c}": {"auroc": c / 10, "aupr": 0.5, "fpr95": 0.5} for c in range(10)}
    report = OODReport(
        dataset="digits",
        created="now",
        settings={},
        protocols={"novelty": [DetectorResult(detector="lof", kind="classical", sets=sets)]},
        calibration=[],
        mean_nll_bpd={},
        defaults={},
    )
    text = render_markdown(report)
    assert "| detector | mean AUROC | mean AUPR | mean FPR95 |" in text  # the means table
    assert "| lof | 0.00 | 0.10 | 0.20 | 0.30 | 0.40 | 0.50 | 0.60 | 0.70 | 0.80 | 0.90 | 0.450 |" in text

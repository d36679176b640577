"""The local background model behind the likelihood-ratio outlier score."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydantic import ValidationError

from service.background import background_log_likelihood, fit_background
from service.manifest import BackgroundRecord


def test_it_is_a_normalised_distribution_over_images() -> None:
    rng = np.random.default_rng(0)
    bg = fit_background(rng.integers(0, 3, size=(20, 1, 2, 3)), levels=3)
    every = np.array(list(itertools.product(range(3), repeat=6))).reshape(-1, 1, 2, 3)  # all 729 images
    assert np.exp(background_log_likelihood(bg, every)).sum() == pytest.approx(1.0, abs=1e-4)


def test_counts_match_a_hand_computation() -> None:
    # One 1x1x2 image [0, 1], 2 levels: pixel 0 has context (outside, outside), pixel 1
    # has (left=0, outside). With smoothing 1 each context row is (count + 1) / (n + 2).
    bg = fit_background(np.array([[[[0, 1]]]]), levels=2, smoothing=1.0)
    assert bg.bins == 2
    table = np.exp(np.asarray(bg.log_probs))
    outside = 2
    np.testing.assert_allclose(table[outside * 3 + outside], [2 / 3, 1 / 3], atol=1e-5)
    np.testing.assert_allclose(table[0 * 3 + outside], [1 / 3, 2 / 3], atol=1e-5)
    np.testing.assert_allclose(table[1 * 3 + 1], [1 / 2, 1 / 2], atol=1e-5)  # never seen
    ll = background_log_likelihood(bg, np.array([[[[0, 1]]]]))
    assert ll[0] == pytest.approx(np.log(2 / 3) + np.log(2 / 3), abs=1e-5)


def test_it_learns_local_statistics_and_scores_rows_alone() -> None:
    rng = np.random.default_rng(1)
    smooth = np.repeat(rng.integers(0, 17, size=(200, 1, 8, 1)), 8, axis=3)  # constant rows
    bg = fit_background(smooth, levels=17)
    assert bg.bins == 16  # 17 levels quantize to at most 16 bins
    noise = rng.integers(0, 17, size=(5, 1, 8, 8))
    held_out = np.repeat(rng.integers(0, 17, size=(5, 1, 8, 1)), 8, axis=3)
    assert background_log_likelihood(bg, held_out).min() > background_log_likelihood(bg, noise).max()
    both = background_log_likelihood(bg, np.concatenate([noise, held_out]))
    np.testing.assert_allclose(
        both, np.concatenate([background_log_likelihood(bg, noise), background_log_likelihood(bg, held_out)])
    )


def test_a_table_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValidationError, match="log_probs"):
        BackgroundRecord(levels=2, bins=1, smoothing=1.0, images=1, log_probs=[[0.0, 0.0]])

"""The engines' shared numerics (service/engine/base.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine.base import _LEVEL_MAJOR_DRAWS, categorical_from_uniform


def reference_draw(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The inverse-CDF rule written plainly: the first level whose CDF reaches u."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=-1, keepdims=True), axis=-1)
    return np.minimum((cdf < u[..., None]).sum(axis=-1), logits.shape[-1] - 1)


@pytest.mark.parametrize("shape", [(1,), (7,), (64,), (_LEVEL_MAJOR_DRAWS,), (64, 1, 8, 8), (3, 2, 5, 5)])
def test_categorical_draw_follows_the_inverse_cdf_rule_in_both_layouts(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    for scale in (0.1, 1.0, 10.0):
        logits = (scale * rng.standard_normal((*shape, 17))).astype(np.float32)
        u = rng.random(shape, dtype=np.float32)
        u.flat[0] = 0.0
        u.flat[-1] = np.nextafter(np.float32(1.0), np.float32(0.0))
        draw = categorical_from_uniform(logits, u)
        assert draw.dtype == np.int64 and draw.shape == shape
        np.testing.assert_array_equal(draw, reference_draw(logits, u))


@pytest.mark.parametrize("n", [200, 20_000])  # below and above the layout switch
def test_categorical_draws_have_the_softmax_frequencies(n: int) -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], dtype=np.float32))
    rng = np.random.default_rng(0)
    draws = np.concatenate(
        [
            categorical_from_uniform(np.broadcast_to(logits, (n, 4)), rng.random(n))
            for _ in range(200_000 // n)
        ]
    )
    freq = np.bincount(draws, minlength=4) / len(draws)
    # 200,000 draws: the standard error of each frequency is at most 0.0012
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.005)

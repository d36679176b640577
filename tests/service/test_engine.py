"""The engines' shared numerics (service/engine/base.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from service.engine import base as engine_base
from service.engine import build_engine
from service.engine.base import _LEVEL_MAJOR_DRAWS, Arrays, categorical_from_uniform, inline_caller
from service.runtime import load_backend
from service.store import ModelStore
from training.data import load_dataset


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


# --- large requests: bounded graph calls, the same answers ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flow", "vae", "pixelcnn", "diffusion"])
def test_large_requests_are_cut_into_bounded_calls_with_the_same_answers(
    family: str, tiny_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every graph call carries at most MAX_CALL_UNITS of work (rows x estimator samples),
    so one request can neither allocate without bound nor hold the shared runtime for its
    whole length; the answers equal one call's."""
    version = ModelStore(tiny_store).open(f"{family}-digits")
    backend = load_backend(version, "onnxruntime", "cpu", 1)
    sizes: list[int] = []
    inline = inline_caller(backend)

    async def counting(graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Arrays:
        sizes.append(units or len(next(iter(inputs.values()))))
        return await inline(graph, inputs)

    engine = build_engine(version.manifest, counting)
    x = load_dataset("digits").x[:7]
    labels = np.arange(7) % 10
    samples = 4 if family != "pixelcnn" else 1

    def answers() -> tuple[np.ndarray, ...]:
        marginal = asyncio.run(engine.log_likelihood(x, None, samples, seed=3))
        labelled = asyncio.run(engine.log_likelihood(x, labels, samples, seed=3))
        assert marginal.log_posterior is not None
        out = [marginal.log_likelihood, marginal.log_posterior, labelled.log_likelihood]
        if family != "pixelcnn":
            rec = asyncio.run(engine.reconstruct(x, labels, None, np.random.default_rng(0)))
            out += list(rec.arrays.values())
        return tuple(out)

    whole = answers()
    sizes.clear()
    monkeypatch.setattr(engine_base, "MAX_CALL_UNITS", 8)
    cut = answers()
    assert max(sizes) <= 8, sizes
    for a, b in zip(whole, cut, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-5)
    backend.close()

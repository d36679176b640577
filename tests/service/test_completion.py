"""PixelCNN completion conditioned on every known pixel (service/engine/completion.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

import numpy as np
import pytest

from service.engine import build_engine
from service.engine.base import Arrays
from service.engine.completion import needs_particles, pick_one, raster_flat, systematic_indices
from service.engine.pixelcnn import PixelCNNEngine
from service.manifest import Conditioning, DatasetSpec, Manifest

K = 3  # levels
P = 3  # pixels, one row of a 1x1x3 image


class TableModel:
    """A known autoregressive model over 3 pixels with strong dependencies, served as a
    `logits` graph: position i's logits depend only on the pixels before it."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.p0 = 2.0 * rng.standard_normal(K)
        self.p1 = 3.0 * rng.standard_normal((K, K))  # [x0, x1]
        self.p2 = 3.0 * rng.standard_normal((K, K, K))  # [x0, x1, x2]
        self.calls = 0

    def logits(self, x: np.ndarray) -> np.ndarray:
        flat = x.reshape(len(x), P).astype(np.int64)
        out = np.empty((len(x), P, K), dtype=np.float32)
        out[:, 0] = self.p0
        out[:, 1] = self.p1[flat[:, 0]]
        out[:, 2] = self.p2[flat[:, 0], flat[:, 1]]
        return out.reshape(len(x), 1, 1, P, K)

    def joint(self) -> dict[tuple[int, ...], float]:
        """Exact p(x) of every image, by enumeration."""

        def logp(row: np.ndarray) -> np.ndarray:
            return row - np.logaddexp.reduce(row)

        table = {}
        for x in itertools.product(range(K), repeat=P):
            lp = logp(self.p0)[x[0]] + logp(self.p1[x[0]])[x[1]] + logp(self.p2[x[0], x[1]])[x[2]]
            table[x] = float(np.exp(lp))
        return table

    async def __call__(
        self, graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None
    ) -> Arrays:
        assert graph == "logits"
        self.calls += 1
        return {"logits": self.logits(inputs["x"])}


def engine_for(model: TableModel) -> PixelCNNEngine:
    spec = DatasetSpec(name="toy", shape=(1, 1, P), levels=K, label_names=None, source="test")
    fields = {
        "family": "pixelcnn",
        "dataset": spec,
        "conditioning": Conditioning(conditional=False, class_prior=None),
        "family_info": {},
    }
    engine = build_engine(Manifest.model_construct(**fields), model)
    assert isinstance(engine, PixelCNNEngine)
    return engine


def exact_conditional(
    model: TableModel, x: tuple[int, ...], known: tuple[bool, ...]
) -> dict[tuple[int, ...], float]:
    """p(x_missing | x_known), over the full images that agree with x where known."""
    joint = model.joint()
    agree = {z: p for z, p in joint.items() if all(z[i] == x[i] for i in range(P) if known[i])}
    total = sum(agree.values())
    return {z: p / total for z, p in agree.items()}


def completions(
    engine: PixelCNNEngine, x: tuple[int, ...], known: tuple[bool, ...], rows: int, particles: int
) -> dict[tuple[int, ...], float]:
    images = np.tile(np.asarray(x, dtype=np.int64).reshape(1, 1, 1, P), (rows, 1, 1, 1))
    mask = np.tile(np.asarray(known).reshape(1, 1, 1, P), (rows, 1, 1, 1))
    out = asyncio.run(engine.reconstruct(images, None, mask, np.random.default_rng(0), particles))
    done = out.arrays["reconstruction"].reshape(rows, P)
    assert (done[:, np.asarray(known)] == np.asarray(x)[np.asarray(known)]).all()  # known kept
    keys, counts = np.unique(done, axis=0, return_counts=True)
    return {tuple(int(v) for v in k): c / rows for k, c in zip(keys, counts, strict=True)}


def total_variation(p: dict[tuple[int, ...], float], q: dict[tuple[int, ...], float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


@pytest.mark.parametrize(
    ("x", "known"),
    [
        ((0, 2, 1), (False, True, True)),  # the first pixel missing, the rest known
        ((1, 0, 2), (True, False, True)),  # a hole in the middle
        ((0, 1, 0), (False, True, False)),  # missing on both sides of a known pixel
    ],
)
def test_completion_samples_the_exact_conditional(x: tuple[int, ...], known: tuple[bool, ...]) -> None:
    model = TableModel()
    engine = engine_for(model)
    exact = exact_conditional(model, x, known)
    rows = 4000  # the standard error of each frequency is at most 0.008
    assert total_variation(completions(engine, x, known, rows, particles=32), exact) < 0.04
    # The plain proposal (one particle: later known pixels ignored) is far off, so the
    # check above can fail.
    assert total_variation(completions(engine, x, known, rows, particles=1), exact) > 0.15


def test_a_suffix_mask_is_filled_exactly_with_one_pass_per_missing_pixel() -> None:
    model = TableModel()
    engine = engine_for(model)
    x, known = (2, 0, 0), (True, False, False)
    got = completions(engine, x, known, 4000, particles=32)
    assert total_variation(got, exact_conditional(model, x, known)) < 0.04
    model.calls = 0
    out = asyncio.run(
        engine.reconstruct(
            np.zeros((2, 1, 1, P), np.int64),
            None,
            np.asarray(known).reshape(1, 1, 1, P).repeat(2, 0),
            np.random.default_rng(1),
        )
    )
    assert out.particles == 1 and model.calls == 2  # no particles, one call per missing pixel


def test_completion_is_seeded() -> None:
    engine = engine_for(TableModel())
    x = np.asarray([[[[1, 0, 2]]], [[[0, 0, 0]]]], dtype=np.int64)
    mask = np.asarray([[[[True, False, True]]], [[[False, True, False]]]])

    def run(seed: int) -> np.ndarray:
        out = asyncio.run(engine.reconstruct(x, None, mask, np.random.default_rng(seed), 8))
        assert out.particles == 8
        return out.arrays["reconstruction"]

    np.testing.assert_array_equal(run(3), run(3))
    assert any(not np.array_equal(run(3), run(s)) for s in range(4, 10))


def test_needs_particles_only_when_a_known_pixel_follows_a_missing_one() -> None:
    def mask(rows: list[list[int]]) -> np.ndarray:
        return np.asarray(rows, dtype=bool)[None, None]  # [1, 1, H, W]

    assert not needs_particles(mask([[1, 1], [0, 0]]))  # bottom row missing
    assert not needs_particles(mask([[1, 1], [1, 0]]))
    assert not needs_particles(mask([[0, 0], [0, 0]]))  # nothing known: plain sampling
    assert needs_particles(mask([[0, 1], [1, 1]]))  # top-left hole
    assert needs_particles(mask([[1, 0], [1, 1]]))  # right half of the first row
    # Channels come last in raster order: at one pixel, channel 0 missing and 1 known.
    rgb = np.ones((1, 2, 1, 2), dtype=bool)
    rgb[0, 0, 0, 1] = False
    assert needs_particles(rgb)
    assert raster_flat(rgb).tolist() == [[True, True, False, True]]


def test_systematic_resampling_keeps_each_particle_about_m_times_its_weight() -> None:
    w = np.array([[0.5, 0.25, 0.125, 0.125], [1.0, 0.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        log_w = np.log(w)
    for u in (0.0, 0.3, 0.99):
        idx = systematic_indices(log_w, np.array([u, u]))
        counts = np.stack([np.bincount(row, minlength=4) for row in idx])
        assert (np.abs(counts - 4 * w) < 1).all()  # systematic: within one of M·w
        assert (counts[1] == [4, 0, 0, 0]).all()
    picks = pick_one(np.log(np.array([[0.2, 0.8]] * 1000)), np.random.default_rng(0).random(1000))
    assert abs(picks.mean() - 0.8) < 0.05

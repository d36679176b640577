"""PixelCNN completion conditioned on every known pixel (service/engine/completion.py)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping

import numpy as np
import pytest

from service.engine import build_engine
from service.engine.base import Arrays
from service.engine.completion import (
    effective_size,
    needs_particles,
    pick_one,
    raster_flat,
    systematic_indices,
)
from service.engine.pixelcnn import PixelCNNEngine
from service.manifest import Conditioning, DatasetSpec, Manifest


class TableModel:
    """A known autoregressive model with strong dependencies, served as a `logits` graph:
    the logits at raster position p are a random table row indexed by the pixels before
    p, so p(x) can be enumerated exactly on tiny images."""

    def __init__(self, shape: tuple[int, int, int] = (1, 1, 3), levels: int = 3, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.shape, self.K = shape, levels
        self.P = shape[0] * shape[1] * shape[2]
        self.tables = [3.0 * rng.standard_normal((levels**p, levels)) for p in range(self.P)]
        self.calls = 0

    def _flat_logits(self, flat: np.ndarray) -> np.ndarray:
        """[N, P] raster-flat images -> [N, P, K] logits."""
        out = np.empty((len(flat), self.P, self.K))
        code = np.zeros(len(flat), dtype=np.int64)  # the prefix, as a base-K number
        for p in range(self.P):
            out[:, p] = self.tables[p][code]
            code = code * self.K + flat[:, p]
        return out

    def log_prob(self, flat: tuple[int, ...]) -> float:
        lp = self._flat_logits(np.asarray([flat]))[0]
        lp -= np.logaddexp.reduce(lp, axis=1, keepdims=True)
        return float(sum(lp[p, v] for p, v in enumerate(flat)))

    async def __call__(
        self, graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None
    ) -> Arrays:
        assert graph == "logits"
        self.calls += 1
        x = inputs["x"].astype(np.int64)
        C, H, W = self.shape
        out = self._flat_logits(raster_flat(x)).reshape(len(x), H, W, C, self.K)
        return {"logits": out.transpose(0, 3, 1, 2, 4).astype(np.float32)}  # [N, C, H, W, K]


def engine_for(model: TableModel) -> PixelCNNEngine:
    spec = DatasetSpec(name="toy", shape=model.shape, levels=model.K, label_names=None, source="test")
    fields = {
        "family": "pixelcnn",
        "dataset": spec,
        "conditioning": Conditioning(conditional=False, class_prior=None),
        "family_info": {},
        "graphs": [],  # the table model answers `logits` only: the full-pass loops
    }
    engine = build_engine(Manifest.model_construct(**fields), model)
    assert isinstance(engine, PixelCNNEngine)
    return engine


Dist = dict[tuple[int, ...], float]


def exact_conditional(model: TableModel, x: tuple[int, ...], known: tuple[bool, ...]) -> Dist:
    """p(x_missing | x_known) by enumeration, over raster-flat images agreeing with x where known."""
    agree = {
        z: np.exp(model.log_prob(z))
        for z in itertools.product(range(model.K), repeat=model.P)
        if all(z[p] == x[p] for p in range(model.P) if known[p])
    }
    total = sum(agree.values())
    return {z: p / total for z, p in agree.items()}


def image(model: TableModel, flat: tuple[int, ...], rows: int, dtype: type = np.int64) -> np.ndarray:
    """Raster-flat values -> `rows` copies of the [C, H, W] image."""
    C, H, W = model.shape
    one = np.asarray(flat, dtype=dtype).reshape(H, W, C).transpose(2, 0, 1)
    return np.repeat(one[None], rows, axis=0)


def frequencies(done: np.ndarray) -> Dist:
    keys, counts = np.unique(raster_flat(done), axis=0, return_counts=True)
    return {tuple(int(v) for v in k): c / len(done) for k, c in zip(keys, counts, strict=True)}


def completions(
    engine: PixelCNNEngine,
    model: TableModel,
    x: tuple[int, ...],
    known: tuple[bool, ...],
    rows: int,
    particles: int,
) -> Dist:
    images, mask = image(model, x, rows), image(model, known, rows, bool)
    out = asyncio.run(engine.reconstruct(images, None, mask, np.random.default_rng(0), particles))
    done = out.arrays["reconstruction"]
    np.testing.assert_array_equal(done[mask], images[mask])  # known pixels kept
    return frequencies(done)


def total_variation(p: Dist, q: Dist) -> float:
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
    assert total_variation(completions(engine, model, x, known, rows, particles=32), exact) < 0.04
    # The plain draw (particles=1: later known pixels ignored) is far off, so the check
    # above can fail.
    assert total_variation(completions(engine, model, x, known, rows, particles=1), exact) > 0.08


def test_rows_with_different_masks_and_channels_in_one_request() -> None:
    # Two channels (raster order: rows, columns, then channels), four rows with different
    # masks in one call: a hole, known on both sides, a suffix mask (no particles needed)
    # and nothing known. Each row's completions must follow its own exact conditional.
    model = TableModel(shape=(2, 1, 2), levels=2, seed=1)
    engine = engine_for(model)
    cases = [
        ((1, 0, 1, 1), (False, True, True, True)),
        ((0, 1, 1, 0), (True, False, False, True)),
        ((1, 1, 0, 0), (True, True, False, False)),
        ((0, 0, 1, 1), (False, False, False, False)),
    ]
    rows = 3000
    x = np.concatenate([image(model, flat, rows) for flat, _ in cases])
    mask = np.concatenate([image(model, kn, rows, bool) for _, kn in cases])
    out = asyncio.run(engine.reconstruct(x, None, mask, np.random.default_rng(0), 16))
    assert out.particles == 16
    done = out.arrays["reconstruction"]
    np.testing.assert_array_equal(done[mask], x[mask])
    for n, (flat, kn) in enumerate(cases):
        got = frequencies(done[n * rows : (n + 1) * rows])
        assert total_variation(got, exact_conditional(model, flat, kn)) < 0.05, n


def test_a_suffix_mask_is_filled_exactly_with_one_pass_per_missing_pixel() -> None:
    model = TableModel()
    engine = engine_for(model)
    x, known = (2, 0, 0), (True, False, False)
    got = completions(engine, model, x, known, 4000, particles=32)
    assert total_variation(got, exact_conditional(model, x, known)) < 0.04
    model.calls = 0
    mask = image(model, known, 2, bool)
    out = asyncio.run(engine.reconstruct(image(model, x, 2), None, mask, np.random.default_rng(1), 32))
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
    # A particle of zero weight is never picked, even at u = 0; a row whose particles all
    # have zero weight counts them alike instead of failing (NaN).
    assert (
        pick_one(np.log(np.array([[0.0, 1.0]]) + 1e-300) * 0 + np.array([[-np.inf, 0.0]]), np.zeros(1))[0]
        == 1
    )
    dead = np.full((1, 4), -np.inf)
    assert effective_size(dead)[0] == pytest.approx(4.0)
    assert (systematic_indices(dead, np.array([0.5])) == [[0, 1, 2, 3]]).all()

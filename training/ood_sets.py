"""Synthetic out-of-distribution sets built offline from in-distribution images.

Two kinds (see shared DATA.md): transformed inputs, and inputs *simpler* than the
training data, the case where raw likelihood is known to fail (Nalisnick et al. 2019).
Every set is built from the images it is given, so the build can select the default
outlier score on validation images and the evaluation can report on test images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

IntImages = np.ndarray  # [N, C, H, W], integer levels 0..K-1
Transform = Callable[[IntImages, int, np.random.Generator], IntImages]


def _inverted(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    return k - 1 - x


def _rotated(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    return np.rot90(x, 1, axes=(2, 3))


def _flipped(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    return x[..., ::-1]


def _shuffled(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    # One permutation per image: same histogram, no spatial structure.
    flat = x.reshape(len(x), -1)  # [N, D]
    idx = np.argsort(rng.random(flat.shape), axis=1)
    return np.take_along_axis(flat, idx, axis=1).reshape(x.shape)


def _noise(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    return rng.integers(0, k, size=x.shape)


def _constant(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    # Mostly blank images (the classic "simpler" input) plus a few flat grey ones.
    values = np.where(rng.random(len(x)) < 0.5, 0, rng.integers(0, k, size=len(x)))
    return np.broadcast_to(values[:, None, None, None], x.shape)


def _blurred(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    # Two passes of a 3x3 box blur: smooth, low-contrast blobs.
    out = x.astype(np.float64)
    H, W = x.shape[-2:]
    for _ in range(2):
        p = np.pad(out, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        out = np.mean([p[..., i : i + H, j : j + W] for i in range(3) for j in range(3)], axis=0)
    return np.clip(np.rint(out), 0, k - 1)


def _erased(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    # Most strokes removed: three quarters of the inked pixels set to background.
    keep = rng.random(x.shape) < 0.25
    return np.where((x > 0) & ~keep, 0, x)


def _faint(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    # A quarter of the contrast: the digit is there, with far fewer distinct levels.
    return x // 4


TRANSFORMED: dict[str, Transform] = {
    "inverted": _inverted,
    "rotated90": _rotated,
    "flipped": _flipped,
    "pixel-shuffled": _shuffled,
    "uniform-noise": _noise,
}
SIMPLER: dict[str, Transform] = {
    "constant": _constant,
    "blurred": _blurred,
    "strokes-erased": _erased,
    "faint": _faint,
}
ALL_SETS: dict[str, Transform] = {**TRANSFORMED, **SIMPLER}


def _half_turn(x: IntImages, k: int, rng: np.random.Generator) -> IntImages:
    return np.rot90(x, 2, axes=(2, 3))


def build_sets(
    x: IntImages, levels: int, seed: int = 0, kinds: dict[str, Transform] | None = None
) -> dict[str, IntImages]:
    """Each synthetic outlier set, one image per input image, as contiguous int64 arrays.

    Non-square images get a half turn ("rotated180") instead of the quarter turn, which
    would swap their sides and no longer fit the model.
    """
    x = np.asarray(x)
    square = x.shape[-2] == x.shape[-1]
    out = {}
    for i, (name, fn) in enumerate((kinds or ALL_SETS).items()):
        if fn is _rotated and not square:
            name, fn = "rotated180", _half_turn
        rng = np.random.default_rng([seed, i])
        out[name] = np.ascontiguousarray(fn(x, levels, rng), dtype=np.int64)
    return out

"""PixelCNN serving: exact likelihood in one pass; sampling and completion loop over pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from ..manifest import Manifest
from .base import (
    GraphCaller,
    ImageEngine,
    IntImages,
    Reconstruction,
    SamplerOptions,
    categorical_from_uniform,
    log_softmax,
    log_sum_exp,
    row_chunks,
)
from .completion import (
    DEFAULT_PARTICLES,
    effective_size,
    needs_particles,
    pick_one,
    raster_flat,
    raster_position,
    systematic_indices,
)
from .pixelcnn_cursor import Cursor, FullPassCursor, StepCursor


class PixelCNNEngine(ImageEngine):
    """Ancestral sampling in raster order (rows, columns, channels), one graph call per step."""

    family = "pixelcnn"
    sampled_estimator = False
    random_reconstruction = True  # completion samples the masked pixels
    uses_particles = True

    def __init__(self, manifest: Manifest, call: GraphCaller) -> None:
        super().__init__(manifest, call)
        names = {g.name for g in manifest.graphs}
        # Stores exported before the incremental graphs existed sample with the full pass.
        self.fast_steps = {"row_step", "pixel_step"} <= names

    def estimator(self, samples: int) -> str:
        return "exact"

    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        return {"reconstruction": (np.dtype(np.int64), self.shape)}

    async def conditional_log_likelihood(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """Σ_i log p(x_i | x_<i, y), exact."""
        return await self._pixel_sum(x, labels, None)

    async def _pixel_sum(
        self, x: IntImages, labels: np.ndarray | None, weights: np.ndarray | None
    ) -> NDArray[np.float64]:
        """Σ_i w_i log p(x_i | x_<i, y) per row; every w_i = 1 when `weights` is None."""
        out = np.empty(len(x), dtype=np.float64)
        for part in row_chunks(len(x)):
            xb = x[part]
            feeds = self.feeds({"x": xb.astype(np.float32)}, None if labels is None else labels[part])
            logp = log_softmax((await self.call("logits", feeds))["logits"])  # [B, C, H, W, K]
            picked = np.take_along_axis(logp, xb[..., None], axis=-1)[..., 0]  # [B, C, H, W]
            if weights is not None:
                picked = picked * weights[part]
            out[part] = picked.reshape(len(xb), -1).sum(axis=1)
        return out

    async def label_posterior(
        self,
        x: IntImages,
        mask: np.ndarray | None,
        samples: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log p(y | known pixels): each class weighs Σ log p(x_i | x_<i, y) over the known
        pixels i. Exact when every known pixel comes before every missing one (the missing
        pixels then never enter a known pixel's context); otherwise the known pixels after
        a missing one are weighed given the input's values there, an approximation."""
        if mask is None:
            return await super().label_posterior(x, mask, samples, context)
        assert self.log_prior is not None
        rows, labs = self.all_labels(len(x))
        weights = mask.astype(np.float64)[rows]
        joint = (await self._pixel_sum(x[rows], labs, weights)).reshape(len(x), -1) + self.log_prior
        return joint - log_sum_exp(joint)[:, None]

    def cursor(self, x: IntImages, labels: np.ndarray | None) -> Cursor:
        """Log-probabilities for a loop that fills x in place: the incremental graphs when
        the store has them (and `fast_steps` is on), else the full pass."""

        def feeds(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return self.feeds(data, labels)

        if not self.fast_steps:
            return FullPassCursor(x, self.call, feeds)
        row = {t.name: t.shape[1:] for t in self.manifest.graph("row_step").inputs}
        return StepCursor(x, self.call, feeds, _ints(row["v_cache"]), _ints(row["x_above"]))

    async def _fill(
        self,
        x: IntImages,
        known: np.ndarray | None,
        labels: np.ndarray | None,
        u: np.ndarray,
        temperature: float,
    ) -> IntImages:
        x = x.copy()
        cursor = self.cursor(x, labels)
        C, H, W = self.shape
        t = np.float32(max(temperature, 1e-6))
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    if known is not None and known[:, c, i, j].all():
                        continue
                    logits = (await cursor.at(i, j))[:, c] / t  # [N, K]
                    draw = categorical_from_uniform(logits, u[:, c, i, j])
                    if known is None:
                        x[:, c, i, j] = draw
                    else:
                        x[:, c, i, j] = np.where(known[:, c, i, j], x[:, c, i, j], draw)
                    cursor.wrote(c)
        return x

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> IntImages:
        """Ancestral sampling with softmax temperature T."""
        u = rng.random((n, *self.shape), dtype=np.float32)
        return await self._fill(np.zeros((n, *self.shape), dtype=np.int64), None, labels, u, temperature)

    async def reconstruct(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        mask: np.ndarray | None,
        rng: np.random.Generator,
        particles: int | None = None,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> Reconstruction:
        """Complete the pixels where `mask` is 0, conditioned on every known pixel.

        A mask whose missing pixels all come after its known ones (raster order) is filled
        exactly, pixel by pixel; any other mask by a particle filter (engine.completion),
        unless `particles` is 1: the plain draw, which ignores known pixels after missing ones.
        """
        if mask is None:
            raise InvalidInputError.field(
                ["mask"], "pixelcnn completes inputs: give a mask (1 = known pixel, 0 = fill in)"
            )
        known = mask.astype(bool)
        M = particles or DEFAULT_PARTICLES
        exact = not needs_particles(known)
        if exact or M == 1:
            u = rng.random(x.shape, dtype=np.float32)
            done = await self._fill(x, known, labels, u, 1.0)
            how = (
                "given the known pixels, all of which come before them in raster order (an exact draw)"
                if exact
                else "given the known pixels before them only (particles=1: the plain draw; known "
                "pixels after a missing one are kept but not conditioned on)"
            )
            return Reconstruction(
                {"reconstruction": done},
                f"pixels where mask is 0 sampled autoregressively {how}; known pixels unchanged",
                particles=1,
            )
        done = await self._particle_fill(x, known, labels, rng, M)
        return Reconstruction(
            {"reconstruction": done},
            f"pixels where mask is 0 sampled autoregressively, conditioned on the known pixels "
            f"after them too by a particle filter ({M} particles per row); known pixels unchanged",
            particles=M,
        )

    async def _particle_fill(
        self,
        x: IntImages,
        known: NDArray[np.bool_],
        labels: np.ndarray | None,
        rng: np.random.Generator,
        M: int,
    ) -> IntImages:
        """Sequential Monte Carlo along the raster order, M particles per row.

        Each step reads only the log-probabilities of one position, so the work per step
        beyond the graph calls stays proportional to the rows, not to [rows, C, H, W, K].
        """
        N = len(x)
        C, H, W = self.shape
        P = C * H * W
        # All noise drawn up front in a fixed order, so batching never changes a draw.
        u_draw = rng.random((N, M, C, H, W), dtype=np.float32)
        u_resample = rng.random((N, P))
        u_pick = rng.random(N)
        xs = np.repeat(x, M, axis=0)  # [N·M, C, H, W], row n's particles contiguous
        ys = None if labels is None else np.repeat(labels, M, axis=0)
        known_flat = raster_flat(known)  # [N, P]
        fills: NDArray[np.bool_] = np.logical_not(known_flat.all(axis=0))  # [P]: positions some row fills
        log_w = np.zeros((N, M), dtype=np.float64)
        cursor = self.cursor(xs, ys)
        rows = np.arange(N * M)
        # From the first position filled on, every position is visited: known pixels add
        # their log-probability to their particles' weights (each read when every pixel
        # before it was final); missing ones are drawn, after resampling rows whose
        # weights have degenerated. Known pixels before the first fill weigh every
        # particle of a row alike, so they are left out.
        for q in range(int(np.argmax(fills)) if fills.any() else P, P):
            (c,), (i,), (j,) = raster_position(np.array([q]), C, W)
            logp = (await cursor.at(int(i), int(j)))[:, c]  # [N·M, K]
            known_here: NDArray[np.bool_] = known_flat[:, q]  # [N]
            if known_here.any():
                picked = log_softmax(logp)[rows, xs[:, c, i, j]].reshape(N, M)
                # np.where, not a product: a masked-out -inf must not become NaN.
                log_w += np.where(known_here[:, None], picked, 0.0)
            if not fills[q]:
                continue
            step = logp.copy()
            low = np.flatnonzero(effective_size(log_w) < M / 2)
            if len(low):
                idx = systematic_indices(log_w[low], u_resample[low, q])  # [L, M]
                src = (low[:, None] * M + idx).reshape(-1)
                dest = (low[:, None] * M + np.arange(M)[None, :]).reshape(-1)
                xs[dest] = xs[src]
                step[dest] = step[src]
                cursor.reorder(src, dest)
                log_w[low] = 0.0
            draw = categorical_from_uniform(step, u_draw[:, :, c, i, j].reshape(-1))
            fill = ~np.repeat(known[:, c, i, j], M)
            xs[fill, c, i, j] = draw[fill]
            cursor.wrote(c)
        chosen = pick_one(log_w, u_pick)  # [N]
        out: IntImages = xs.reshape(N, M, C, H, W)[np.arange(N), chosen]
        return out


def _ints(shape: list[int | str]) -> tuple[int, ...]:
    """A graph input's fixed axes (everything after the batch axis)."""
    assert all(isinstance(d, int) for d in shape), f"non-fixed axes {shape}"
    return tuple(int(d) for d in shape)

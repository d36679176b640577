"""PixelCNN serving: exact likelihood in one pass; sampling and completion loop over pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from .base import (
    ImageEngine,
    IntImages,
    Reconstruction,
    categorical_from_uniform,
    log_softmax,
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


class PixelCNNEngine(ImageEngine):
    """Ancestral sampling in raster order (rows, columns, channels), one graph call per step."""

    family = "pixelcnn"
    sampled_estimator = False
    random_reconstruction = True  # completion samples the masked pixels

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
        out = np.empty(len(x), dtype=np.float64)
        for part in row_chunks(len(x)):
            xb = x[part]
            feeds = self.feeds({"x": xb.astype(np.float32)}, None if labels is None else labels[part])
            logp = log_softmax((await self.call("logits", feeds))["logits"])  # [B, C, H, W, K]
            picked = np.take_along_axis(logp, xb[..., None], axis=-1)[..., 0]
            out[part] = picked.reshape(len(xb), -1).sum(axis=1)
        return out

    async def _fill(
        self,
        x: IntImages,
        known: np.ndarray | None,
        labels: np.ndarray | None,
        u: np.ndarray,
        temperature: float,
    ) -> IntImages:
        x = x.copy()
        C, H, W = self.shape
        t = np.float32(max(temperature, 1e-6))
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    if known is not None and known[:, c, i, j].all():
                        continue
                    feeds = self.feeds({"x": x.astype(np.float32)}, labels)
                    logits = (await self.call("logits", feeds))["logits"][:, c, i, j] / t
                    draw = categorical_from_uniform(logits, u[:, c, i, j])
                    if known is None:
                        x[:, c, i, j] = draw
                    else:
                        x[:, c, i, j] = np.where(known[:, c, i, j], x[:, c, i, j], draw)
        return x

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
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

        Each step reads only the logits it needs (the known pixels just passed, and the
        pixel to draw), so the work per step beyond the graph call stays proportional to
        the rows, not to the whole [rows, C, H, W, K] output.
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
        log_w = np.zeros((N, M), dtype=np.float64)
        weighed = 0  # known pixels before this raster position are in log_w

        async def logits_now() -> np.ndarray:
            feeds = self.feeds({"x": xs.astype(np.float32)}, ys)
            out: np.ndarray = (await self.call("logits", feeds))["logits"]  # [N·M, C, H, W, K]
            return out

        def weigh(logits: np.ndarray, upto: int) -> None:
            """Add the known pixels at raster positions [weighed, upto] to the log-weights:
            each read from a call made when every pixel before it was final."""
            span = np.arange(weighed, upto + 1)
            span = span[known_flat[:, span].any(axis=0)]
            if not len(span):
                return
            c, i, j = raster_position(span, C, W)
            lp = log_softmax(logits[:, c, i, j])  # [N·M, L, K]
            picked = np.take_along_axis(lp, xs[:, c, i, j][..., None], axis=-1)[..., 0]
            # np.where, not a product: a masked-out -inf must not become NaN.
            log_w[:] += np.where(known_flat[:, None, span], picked.reshape(N, M, -1), 0.0).sum(axis=2)

        for q in np.flatnonzero(~known_flat.all(axis=0)):  # positions some row fills
            (c,), (i,), (j,) = raster_position(np.array([q]), C, W)
            logits = await logits_now()
            weigh(logits, int(q))
            weighed = int(q) + 1
            step = logits[:, c, i, j].copy()  # [N·M, K]
            low = np.flatnonzero(effective_size(log_w) < M / 2)
            if len(low):
                idx = systematic_indices(log_w[low], u_resample[low, q])  # [L, M]
                src = (low[:, None] * M + idx).reshape(-1)
                dest = (low[:, None] * M + np.arange(M)[None, :]).reshape(-1)
                xs[dest] = xs[src]
                step[dest] = step[src]
                log_w[low] = 0.0
            draw = categorical_from_uniform(step, u_draw[:, :, c, i, j].reshape(-1))
            fill = ~np.repeat(known[:, c, i, j], M)
            xs[fill, c, i, j] = draw[fill]
        if weighed < P and known_flat[:, weighed:].any():
            weigh(await logits_now(), P - 1)
        chosen = pick_one(log_w, u_pick)  # [N]
        out: IntImages = xs.reshape(N, M, C, H, W)[np.arange(N), chosen]
        return out

"""PixelCNN serving: exact likelihood in one pass; sampling and completion loop over pixels."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError
from .base import (
    Engine,
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
    systematic_indices,
)


class PixelCNNEngine(Engine):
    """Ancestral sampling in raster order (rows, columns, channels), one graph call per step."""

    family = "pixelcnn"
    sampled_estimator = False
    random_reconstruction = True  # completion samples the masked pixels

    def estimator(self, samples: int) -> str:
        return "exact"

    async def conditional_log_likelihood(
        self, x: IntImages, labels: np.ndarray | None, samples: int, seed: int
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
    ) -> Reconstruction:
        """Complete the pixels where `mask` is 0, conditioned on every known pixel.

        A mask whose missing pixels all come after its known ones (raster order) is filled
        exactly, pixel by pixel; any other mask by a particle filter (engine.completion).
        """
        if mask is None:
            raise InvalidInputError.field(
                ["mask"], "pixelcnn completes inputs: give a mask (1 = known pixel, 0 = fill in)"
            )
        known = mask.astype(bool)
        if not needs_particles(known):
            u = rng.random(x.shape, dtype=np.float32)
            done = await self._fill(x, known, labels, u, 1.0)
            return Reconstruction(
                {"reconstruction": done},
                "pixels where mask is 0 sampled autoregressively given the known pixels, all of "
                "which come before them in raster order (an exact draw); known pixels unchanged",
                particles=1,
            )
        M = particles or DEFAULT_PARTICLES
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
        """Sequential Monte Carlo along the raster order, M particles per row."""
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
        missing_any = ~known_flat.all(axis=0)  # [P]: positions some row fills
        log_w = np.zeros((N, M), dtype=np.float64)
        weighed = 0  # known pixels before this raster position are in log_w

        async def log_probs() -> tuple[np.ndarray, np.ndarray]:
            """log p(x_j | x_<j) of every particle's current pixels, raster-flat [N, M, P],
            and the normalised log-probabilities of every level [N·M, C, H, W, K]."""
            feeds = self.feeds({"x": xs.astype(np.float32)}, ys)
            logp = log_softmax((await self.call("logits", feeds))["logits"])  # [N·M, C, H, W, K]
            picked = np.take_along_axis(logp, xs[..., None], axis=-1)[..., 0]
            return raster_flat(picked).reshape(N, M, P), logp

        def weigh(lp: np.ndarray, upto: int) -> None:
            """Add known pixels [weighed, upto] of each row to its particles' log-weights."""
            span = known_flat[:, weighed : upto + 1]  # [N, span]
            log_w[:] += (lp[:, :, weighed : upto + 1] * span[:, None, :]).sum(axis=2)

        for q in np.flatnonzero(missing_any):
            i, rest = divmod(int(q), W * C)
            j, c = divmod(rest, C)
            lp, logp = await log_probs()
            # Known pixels up to q depend only on pixels before them, all final by now.
            weigh(lp, int(q))
            weighed = int(q) + 1
            ess = effective_size(log_w)
            low = np.flatnonzero(ess < M / 2)
            if len(low):
                idx = systematic_indices(log_w[low], u_resample[low, q])  # [L, M]
                rows = (low[:, None] * M + idx).reshape(-1)  # flat particle indices taken
                dest = (low[:, None] * M + np.arange(M)[None, :]).reshape(-1)
                xs[dest] = xs[rows]
                logp[dest] = logp[rows]
                log_w[low] = 0.0
            logits = logp[:, c, i, j]  # [N·M, K], normalised already
            draw = categorical_from_uniform(logits, u_draw[:, :, c, i, j].reshape(-1))
            fill = ~np.repeat(known[:, c, i, j], M)
            xs[fill, c, i, j] = draw[fill]
        if weighed < P and known_flat[:, weighed:].any():
            lp, _ = await log_probs()
            weigh(lp, P - 1)
        chosen = pick_one(log_w, u_pick)  # [N]
        out: IntImages = xs.reshape(N, M, C, H, W)[np.arange(N), chosen]
        return out

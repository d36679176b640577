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


class PixelCNNEngine(Engine):
    """Ancestral sampling in raster order (rows, columns, channels), one graph call per step."""

    family = "pixelcnn"
    sampled_estimator = False

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
    ) -> Reconstruction:
        """Complete the pixels where `mask` is 0, sampling each given everything before it."""
        if mask is None:
            raise InvalidInputError.field(
                ["mask"], "pixelcnn completes inputs: give a mask (1 = known pixel, 0 = fill in)"
            )
        known = mask.astype(bool)
        u = rng.random(x.shape, dtype=np.float32)
        done = await self._fill(x, known, labels, u, 1.0)
        return Reconstruction(
            {"reconstruction": done},
            "pixels where mask is 0 sampled autoregressively given the known pixels; known pixels unchanged",
        )

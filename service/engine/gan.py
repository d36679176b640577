"""GAN serving: sampling through `generate`. No likelihood, no encoder."""

from __future__ import annotations

import numpy as np

from .base import ImageEngine, IntImages, SamplerOptions, discretize


class GANEngine(ImageEngine):
    """Samples only; the base class answers likelihood and reconstruction with a clear 422."""

    family = "gan"
    can_score = False
    can_reconstruct = False

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> IntImages:
        """x = floor(G(T·z)), z ~ N(0, I)."""
        dz = int(self.manifest.family_info["latent_dim"])
        z = rng.standard_normal((n, dz), dtype=np.float32) * np.float32(temperature)
        out = await self.call("generate", self.feeds({"z": z}, labels))
        return discretize(out["x"], self.levels)

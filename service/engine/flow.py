"""Flow serving: sampling through `inverse`, likelihood through `log_prob`, latents through `forward`."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import ImageEngine, IntImages, Reconstruction, SamplerOptions, discretize, noise_rng, row_chunks


class FlowEngine(ImageEngine):
    """Uniform dequantization; standardised latents shaped like the data."""

    family = "flow"

    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        return {
            "reconstruction": (np.dtype(np.int64), self.shape),
            "latent": (np.dtype(np.float32), self.shape),
        }

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> IntImages:
        """x = floor(f^-1(T·z)), z ~ N(0, I)."""
        z = rng.standard_normal((n, *self.shape), dtype=np.float32) * np.float32(temperature)
        out = await self.call("inverse", self.feeds({"z": z}, labels))
        return discretize(out["x"], self.levels)

    def estimator(self, samples: int) -> str:
        if samples == 1:
            return "uniform-dequantization lower bound log p(x+u), 1 draw"
        return f"importance-weighted uniform-dequantization lower bound log mean_s p(x+u_s), S={samples}"

    async def conditional_log_likelihood(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log (1/S) Σ_s p(x + u_s): a lower bound on log P(x) that tightens as S grows
        (S = 1 is the plain bound E_u log p(x + u)). The S draws are shared by all rows."""
        u = noise_rng(seed).random((samples, *self.shape), dtype=np.float32)  # [S, C, H, W]
        out = np.empty(len(x), dtype=np.float64)
        for part in row_chunks(len(x), samples):  # S dequantized copies of each row
            xs = x[part].astype(np.float32)
            B = len(xs)
            rows = (xs[None] + u[:, None]).reshape(samples * B, *self.shape)  # s-major
            labs = None if labels is None else np.tile(labels[part], samples)
            lp = (await self.call("log_prob", self.feeds({"x": rows}, labs)))["log_prob"]
            lp = lp.astype(np.float64).reshape(samples, B)
            top = lp.max(axis=0)
            out[part] = top + np.log(np.exp(lp - top).mean(axis=0)) if samples > 1 else lp[0]
        return out

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
        """z = f(x + ½) (bin centres, deterministic) and its inverse f^-1(z)."""
        self.check_mask_unsupported(mask)
        centred = x.astype(np.float32) + np.float32(0.5)
        z = (await self.call_rows("forward", self.feeds({"x": centred}, labels)))["z"]
        back = (await self.call_rows("inverse", self.feeds({"z": z}, labels)))["x"]
        return Reconstruction(
            {"reconstruction": discretize(back, self.levels), "latent": z.astype(np.float32)},
            "latent z = f(x + 0.5), standard normal under the model; reconstruction = floor(f^-1(z))",
        )


__all__ = ["FlowEngine"]

"""VAE serving: decoder draws, importance-weighted likelihood, encode/decode reconstruction."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .base import (
    ImageEngine,
    IntImages,
    Reconstruction,
    SamplerOptions,
    categorical_from_uniform,
    log_softmax,
    noise_rng,
    row_chunks,
)


class VAEEngine(ImageEngine):
    """Categorical decoder over the K levels; IWAE estimate with K importance samples."""

    family = "vae"

    @property
    def latent_dim(self) -> int:
        return int(self.manifest.family_info["latent_dim"])

    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        f32, z = np.dtype(np.float32), (self.latent_dim,)
        return {
            "reconstruction": (np.dtype(np.int64), self.shape),
            "mean": (f32, self.shape),
            "latent": (f32, z),
            "latent_logvar": (f32, z),
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
        """z ~ N(0, T²I), then one inverse-CDF draw per pixel from p(x | z)."""
        z = rng.standard_normal((n, self.latent_dim), dtype=np.float32) * np.float32(temperature)
        u = rng.random((n, *self.shape), dtype=np.float32)
        logits = (await self.call("decode", self.feeds({"z": z}, labels)))["logits"]
        return categorical_from_uniform(logits, u)

    def estimator(self, samples: int) -> str:
        return f"importance-weighted bound (IWAE), K={samples}"

    async def conditional_log_likelihood(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log (1/K) Σ_k p(x, z_k) / q(z_k | x); the K noise draws are shared by all rows."""
        eps = noise_rng(seed).standard_normal((samples, self.latent_dim), dtype=np.float32)
        out = np.empty(len(x), dtype=np.float64)
        for part in row_chunks(len(x), samples):  # one decoder pass per row and sample
            xb = x[part].astype(np.float32)
            eb = np.broadcast_to(eps, (len(xb), samples, self.latent_dim)).copy()
            lb = None if labels is None else labels[part]
            feeds = self.feeds({"x": xb, "eps": eb}, lb)
            logw = (await self.call("log_weights", feeds, units=len(xb) * samples))["log_w"]
            logw = logw.astype(np.float64)
            top = logw.max(axis=1)
            out[part] = top + np.log(np.exp(logw - top[:, None]).sum(axis=1)) - math.log(samples)
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
        """decode(encode(x)) at the posterior mean: the most probable level per pixel."""
        self.check_mask_unsupported(mask)
        enc = await self.call_rows("encode", self.feeds({"x": x.astype(np.float32)}, labels))
        logits = (await self.call_rows("decode", self.feeds({"z": enc["mu"]}, labels)))["logits"]
        probs = np.exp(log_softmax(logits))
        mean = (probs * np.arange(self.levels)).sum(axis=-1)
        return Reconstruction(
            {
                "reconstruction": probs.argmax(axis=-1).astype(np.int64),
                "mean": mean.astype(np.float32),
                "latent": enc["mu"].astype(np.float32),
                "latent_logvar": enc["logvar"].astype(np.float32),
            },
            "latent = posterior mean of q(z|x); reconstruction = most probable level of p(x|z); "
            "mean = expected level",
        )

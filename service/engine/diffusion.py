"""Diffusion serving over the one `denoise` graph: the samplers, the bound, inpainting.

The manifest carries the noise schedule (a linear log-SNR schedule: γ(t) = -log SNR(t)
from γ_min at t = 0 to γ_max at t = 1, α_t² = σ(-γ), σ_t² = σ(γ)) and the null label of
classifier-free guidance; everything else is here. Each step of every loop is one
batched `denoise` call with the time as a per-row input, so concurrent requests, at
different steps and with different step counts, share the batcher's calls.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..manifest import Manifest
from .base import (
    GraphCaller,
    ImageEngine,
    IntImages,
    Reconstruction,
    SamplerOptions,
    categorical_from_uniform,
    log_sum_exp,
    noise_rng,
    row_chunks,
)

SAMPLERS = ("ddim", "ancestral")


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64))))


class DiffusionEngine(ImageEngine):
    """DDIM and ancestral sampling with guidance, the variational bound, and inpainting by
    replacement with resampling (RePaint) or noise-then-denoise (SDEdit) without a mask."""

    family = "diffusion"
    random_reconstruction = True  # both reconstructions draw noise
    sampler_fields = frozenset({"steps", "sampler", "guidance"})
    reconstruct_fields = frozenset({"steps", "strength"})

    def __init__(self, manifest: Manifest, call: GraphCaller) -> None:
        super().__init__(manifest, call)
        info = manifest.family_info
        schedule = info["schedule"]
        self.gamma_min = float(schedule["gamma_min"])
        self.gamma_max = float(schedule["gamma_max"])
        self.null_label = int(info["null_label"])
        # The build's choice on validation data (manifest `sampling`) overrides the config's.
        chosen = manifest.sampling
        steps = chosen.default_steps if chosen and chosen.default_steps else info["default_steps"]
        guidance = chosen.default_guidance if chosen and chosen.default_guidance is not None else None
        self.default_steps = int(steps)
        self.default_sampler = str(info.get("default_sampler", "ddim"))
        self.default_guidance = float(info.get("default_guidance", 0.0) if guidance is None else guidance)
        self.default_strength = 0.5
        C, H, W = self.shape
        self.dims = C * H * W
        self.centers = np.linspace(-1.0, 1.0, self.levels)  # each level's value in [-1, 1]

    # --- the schedule ---------------------------------------------------------------------
    def gamma(self, t: np.ndarray | float) -> np.ndarray:
        """-log SNR at time t."""
        return np.asarray(
            self.gamma_min + (self.gamma_max - self.gamma_min) * np.asarray(t, dtype=np.float64)
        )

    def alpha_sigma(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(α_t, σ_t), shaped like t."""
        g = self.gamma(t)
        return np.sqrt(_sigmoid(-g)), np.sqrt(_sigmoid(g))

    def scaled(self, x: IntImages) -> NDArray[np.float64]:
        """Levels -> [-1, 1]."""
        return x.astype(np.float64) * (2.0 / (self.levels - 1)) - 1.0

    def level_log_probs(self, z0: np.ndarray) -> NDArray[np.float64]:
        """The decoder p(level | z_0) per pixel, as log-probabilities: [...] -> [..., K]."""
        alpha0, sigma0 = self.alpha_sigma(0.0)
        logits = -0.5 * ((z0[..., None] / alpha0 - self.centers) / (sigma0 / alpha0)) ** 2
        logits -= logits.max(axis=-1, keepdims=True)
        out: NDArray[np.float64] = logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))
        return out

    def label_input(self, labels: np.ndarray | None, rows: int) -> NDArray[np.int64]:
        """The graph's y: the labels, or the null label (unused by an unconditional model's
        graph, which takes no y)."""
        if labels is None:
            return np.full(rows, self.null_label, dtype=np.int64)
        return labels.astype(np.int64)

    # --- the denoiser ---------------------------------------------------------------------
    async def eps(
        self, z: np.ndarray, t: np.ndarray, y: NDArray[np.int64], guidance: float
    ) -> NDArray[np.float64]:
        """ε̂ at (z [B, C, H, W], t [B]); with guidance w, (1 + w) ε̂(y) - w ε̂(∅) from one
        call over both halves."""
        rows = len(z)
        zf, tf = z.astype(np.float32), t.astype(np.float32)
        if not self.conditional:  # the graph takes no labels
            return (await self.call("denoise", {"z": zf, "t": tf}))["eps"].astype(np.float64)
        if guidance == 0.0:
            return (await self.call("denoise", {"z": zf, "t": tf, "y": y}))["eps"].astype(np.float64)
        null = np.full(rows, self.null_label, dtype=np.int64)
        feeds = {"z": np.concatenate([zf, zf]), "t": np.concatenate([tf, tf]), "y": np.concatenate([y, null])}
        both = (await self.call("denoise", feeds))["eps"].astype(np.float64)
        return (1.0 + guidance) * both[:rows] - guidance * both[rows:]

    def _x_hat(self, z: np.ndarray, eps: np.ndarray, at: np.ndarray, st: np.ndarray) -> NDArray[np.float64]:
        """The prediction of x from (z_t, ε̂) and (α_t, σ_t), clipped to the data's range [-1, 1]."""
        return np.asarray(np.clip((z - st * eps) / at, -1.0, 1.0))

    async def ddim_step(
        self, z: np.ndarray, t: np.ndarray, s: np.ndarray, y: NDArray[np.int64], guidance: float
    ) -> NDArray[np.float64]:
        """z_t -> z_s along the deterministic path (η = 0)."""
        eps = await self.eps(z, t, y, guidance)
        at, st = (v[:, None, None, None] for v in self.alpha_sigma(t))
        x = self._x_hat(z, eps, at, st)
        a_s, s_s = (v[:, None, None, None] for v in self.alpha_sigma(s))
        eps = (z - at * x) / st
        out: NDArray[np.float64] = a_s * x + s_s * eps
        return out

    async def ancestral_step(
        self,
        z: np.ndarray,
        t: np.ndarray,
        s: np.ndarray,
        y: NDArray[np.int64],
        guidance: float,
        noise: np.ndarray,
    ) -> NDArray[np.float64]:
        """z_s ~ q(z_s | z_t, x = x̂): the posterior of the forward process at the prediction."""
        eps = await self.eps(z, t, y, guidance)
        gt, gs = self.gamma(t)[:, None, None, None], self.gamma(s)[:, None, None, None]
        at, st = np.sqrt(_sigmoid(-gt)), np.sqrt(_sigmoid(gt))
        x = self._x_hat(z, eps, at, st)
        a_s, s2_s = np.sqrt(_sigmoid(-gs)), _sigmoid(gs)
        eps = (z - at * x) / st
        c = -np.expm1(gs - gt)  # σ²_{t|s} / σ²_t
        mean = (a_s / at) * (z - c * st * eps)
        out: NDArray[np.float64] = mean + np.sqrt(s2_s * c) * noise
        return out

    # --- sampling -------------------------------------------------------------------------
    def sampling_options(self, options: SamplerOptions) -> SamplerOptions:
        """Steps, sampler and guidance, the model's defaults where not given (no guidance
        without labels to guide towards)."""
        guidance = options.guidance if options.guidance is not None else self.default_guidance
        return SamplerOptions(
            steps=options.steps if options.steps is not None else self.default_steps,
            sampler=options.sampler if options.sampler is not None else self.default_sampler,
            guidance=guidance if self.conditional else 0.0,
        )

    def reconstruct_options(self, options: SamplerOptions, masked: bool) -> SamplerOptions:
        """Steps (and, without a mask, the strength), defaults filled in."""
        steps = options.steps if options.steps is not None else self.default_steps
        if masked:
            return SamplerOptions(steps=steps, sampler="ancestral")
        strength = options.strength if options.strength is not None else self.default_strength
        return SamplerOptions(steps=max(1, math.ceil(steps * strength)), sampler="ddim", strength=strength)

    def denoiser_passes(self, rows: int, options: SamplerOptions) -> int:
        """rows × steps, twice that with guidance (two passes a step)."""
        guided = 2 if options.guidance else 1
        return rows * (options.steps or 0) * guided

    def label_inference_passes(self, rows: int, masked: bool, options: SamplerOptions, samples: int) -> int:
        """With a mask, every class completes every row, then scores it at `samples` times."""
        classes = self.spec.num_classes if masked else 0
        return rows * classes * ((options.steps or 0) + samples)

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> IntImages:
        """z_1 ~ N(0, T²I), `steps` sampler steps from t = 1 to 0, then the decoder's draw."""
        used = self.sampling_options(options)
        assert used.steps is not None
        assert used.sampler is not None
        assert used.guidance is not None
        steps, sampler, guidance = used.steps, used.sampler, used.guidance
        z = rng.standard_normal((n, *self.shape)) * temperature
        u = rng.random((n, *self.shape))
        y = self.label_input(labels, n)
        z0 = await self.denoise_from(z, 1.0, y, steps, sampler, guidance, rng, temperature)
        return self.decode(z0, u)

    def decode(self, z0: np.ndarray, u: np.ndarray) -> IntImages:
        """The decoder's draw of levels from z_0, one uniform per pixel."""
        return categorical_from_uniform(self.level_log_probs(z0), u)

    async def denoise_from(
        self,
        z: np.ndarray,
        start: float,
        y: NDArray[np.int64],
        steps: int,
        sampler: str,
        guidance: float,
        rng: np.random.Generator,
        temperature: float = 1.0,
        known: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> NDArray[np.float64]:
        """z_start -> z_0 in `steps` equal steps of time. With `known` = (x scaled, mask), the
        known pixels of every z_s are replaced by a fresh draw of q(z_s | x) (inpainting)."""
        rows = len(z)
        for i in range(steps, 0, -1):
            t = np.full(rows, start * i / steps)
            s = np.full(rows, start * (i - 1) / steps)
            if sampler == "ancestral":
                noise = rng.standard_normal(z.shape) * temperature
                z = await self.ancestral_step(z, t, s, y, guidance, noise)
            else:
                z = await self.ddim_step(z, t, s, y, guidance)
            if known is not None:
                z = self.replace_known(z, s, known, rng)
        return np.asarray(z, dtype=np.float64)

    def replace_known(
        self, z: np.ndarray, s: np.ndarray, known: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
    ) -> NDArray[np.float64]:
        """Known pixels of z_s drawn from q(z_s | x); the others kept."""
        xs, mask = known
        a, sg = (v[:, None, None, None] for v in self.alpha_sigma(s))
        fresh = a * xs + sg * rng.standard_normal(z.shape)
        return np.asarray(np.where(mask, fresh, z))

    # --- the bound ------------------------------------------------------------------------
    def estimator(self, samples: int) -> str:
        return f"variational bound (continuous-time VDM), {samples} stratified time samples"

    async def conditional_log_likelihood(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """-(prior + reconstruction + diffusion) in nats per row, the diffusion term over
        `samples` stratified times; times and noise are drawn from `seed` and shared by all
        rows (so rows and labels are compared on the same draws)."""
        return await self.bound(x, labels, samples, seed)

    async def bound(
        self,
        x: IntImages,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        weights: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """The variational bound per row; with `weights` [B, C, H, W] (1: counted), only
        those pixels' terms (every term of the bound is a sum over pixels)."""
        rng = noise_rng(seed)
        offset = rng.random()
        t = np.mod(offset + np.arange(samples) / samples, 1.0)  # [S]
        eps = rng.standard_normal((samples, *self.shape))  # [S, C, H, W]
        eps0 = rng.standard_normal(self.shape)  # [C, H, W], the decoder term's
        xs = self.scaled(x)  # [B, C, H, W]
        w = np.ones(xs.shape) if weights is None else weights.astype(np.float64)
        flat = (len(x), -1)
        a1, s1 = self.alpha_sigma(1.0)
        prior = (w * 0.5 * (s1**2 + (a1 * xs) ** 2 - 1.0 - np.log(s1**2))).reshape(flat).sum(axis=1)
        a0, s0 = self.alpha_sigma(0.0)
        logp = self.level_log_probs(a0 * xs + s0 * eps0)  # [B, C, H, W, K]
        recon = -(w * np.take_along_axis(logp, x[..., None], axis=-1)[..., 0]).reshape(flat).sum(axis=1)
        a, sg = (v[:, None, None, None] for v in self.alpha_sigma(t))  # [S, 1, 1, 1]
        y = self.label_input(labels, len(x))
        err = np.empty(len(x))
        for part in row_chunks(len(x), samples):  # one denoiser pass per row and time
            xb = xs[part]
            B = len(xb)
            z = (a[None] * xb[:, None] + sg[None] * eps[None]).reshape(B * samples, *self.shape)
            feeds: dict[str, np.ndarray] = {"z": z.astype(np.float32), "t": np.tile(t, B).astype(np.float32)}
            if self.conditional:
                feeds["y"] = np.repeat(y[part], samples)
            out = (await self.call("denoise", feeds, units=B * samples))["eps"].astype(np.float64)
            sq = (out.reshape(B, samples, -1) - eps.reshape(1, samples, -1)) ** 2  # [B, S, D]
            err[part] = (sq * w[part].reshape(B, 1, -1)).sum(axis=2).mean(axis=1)
        diffusion = 0.5 * (self.gamma_max - self.gamma_min) * err
        out_ll: NDArray[np.float64] = -(prior + recon + diffusion)
        return out_ll

    async def label_posterior(
        self,
        x: IntImages,
        mask: np.ndarray | None,
        samples: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log p(y | known pixels) for an inpainting asked without labels.

        The pixels to fill are not evidence: for each class the denoiser sees that class's
        own completion there (seed 0), and the class's bound sums the known pixels' terms
        only. An approximation (the known pixels' bound given that fill; docs/results.md
        compares it with the alternatives tried), but no value of the input under the mask
        can sway the label."""
        if mask is None:
            return await super().label_posterior(x, mask, samples, context)
        assert self.log_prior is not None
        keep = mask.astype(np.float64)
        classes = len(self.log_prior)
        joint = np.empty((len(x), classes))
        for part in row_chunks(len(x), classes):
            rows, labs = self.all_labels(part.stop - part.start)
            xb, kb = x[part][rows], mask[part][rows]
            filled = (await self.reconstruct(xb, labs, kb, noise_rng(0))).arrays["reconstruction"]
            per = await self.bound(filled, labs, samples, 0, keep[part][rows])
            joint[part] = per.reshape(-1, classes) + self.log_prior[None, :]
        out: NDArray[np.float64] = joint - log_sum_exp(joint)[:, None]
        return out

    # --- reconstruction -------------------------------------------------------------------
    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        return {"reconstruction": (np.dtype(np.int64), self.shape)}

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
        """With a mask: the pixels where it is 0 inpainted, the known ones kept exactly
        (ancestral steps from pure noise, the known pixels re-noised to every step's time).
        Without: x noised to time `strength`, then DDIM back to 0 (SDEdit)."""
        used = self.reconstruct_options(options, mask is not None)
        assert used.steps is not None
        steps = used.steps
        y = self.label_input(labels, len(x))
        xs = self.scaled(x)
        if mask is not None:
            keep = mask.astype(bool)
            z = rng.standard_normal(x.shape)
            u = rng.random(x.shape)
            z0 = await self.denoise_from(z, 1.0, y, steps, "ancestral", 0.0, rng, known=(xs, keep))
            out = np.where(keep, x, self.decode(z0, u))
            how = (
                f"inpainting: {steps} ancestral steps from noise; the known pixels replaced at "
                "every step by a draw of q(z_t | x), and copied exactly into the result"
            )
        else:
            assert used.strength is not None
            strength = used.strength
            a, sg = self.alpha_sigma(strength)
            z = a * xs + sg * rng.standard_normal(x.shape)
            u = rng.random(x.shape)
            z0 = await self.denoise_from(z, strength, y, steps, "ddim", 0.0, rng)
            out = self.decode(z0, u)
            how = f"x noised to t = {strength:g}, then {steps} DDIM steps back to t = 0 (SDEdit)"
        return Reconstruction({"reconstruction": out.astype(np.int64)}, how)

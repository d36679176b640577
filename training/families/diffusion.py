"""Class-conditional variational diffusion model (continuous time) on discrete images.

Kingma et al. 2021 ("Variational Diffusion Models"), with a fixed linear log-SNR
schedule: γ(t) = γ_min + (γ_max - γ_min) t is -log SNR at time t ∈ [0, 1], α_t² = σ(-γ),
σ_t² = σ(γ), z_t = α_t x + σ_t ε with x the levels scaled to [-1, 1]. The negative
log-likelihood of the discrete data is bounded by three terms, in nats per image:

- prior: KL(q(z_1 | x) ‖ N(0, I)), in closed form;
- reconstruction: -log p(x | z_0), p a per-pixel categorical over the K levels whose
  logits are -(z_0/α_0 - v_k)² / (2 σ_0²/α_0²) (v_k the level's value in [-1, 1]);
- diffusion: ½ E_{t, ε} [γ'(t) ‖ε - ε̂(z_t, t, y)‖²], the continuous-time limit, estimated
  with stratified times.

The network ε̂ is a small U-Net with the time and the label as embeddings; the label has a
null index (L) that training uses for a share of the batch, so one network also gives the
unconditional ε̂ for classifier-free guidance (Ho & Salimans 2022). It is exported as the
one `denoise` graph; the samplers and the bound are written again, over that graph, in
service/engine/diffusion.py (and checked against these in the tests).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from service.manifest import DatasetSpec, TensorSpec

from ..graphdef import GraphDef, wrap
from .base import FamilyConfig, GenerativeModel
from .layers import categorical_from_uniform, sum_except_batch
from .vae import downsamples


class DiffusionConfig(FamilyConfig):
    """Architecture, noise schedule and default sampler of the diffusion model."""

    # 16 on digits: 0.16 M parameters, 55 ms a training step of 64 on one thread; 32 was
    # 0.6 M and 190 ms, too slow for the ten-minute budget (docs/results.md).
    channels: int = Field(16, ge=4)
    channel_mult: tuple[int, ...] = (1, 2)
    blocks: int = Field(1, ge=1)  # residual blocks per resolution on the way down
    embedding: int = Field(64, ge=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    # The schedule's ends, as γ = -log SNR. γ_min leaves σ_0/α_0 a small fraction of the
    # levels' spacing (2/(K-1)), so the decoder is almost certain: None derives it from the
    # data's levels (level_gamma_min): -8 at digits' 17 levels, -13.5 at 256 (VDM used -13.3
    # on 8-bit images). The first 28×28 run kept -8 at 256 levels, where σ_0/α_0 is 2.3
    # level spacings: the decoder alone then costs about 2 bits/dim and the bound stalled
    # at 2.84 (docs/results.md). γ_max makes z_1 ≈ noise.
    gamma_min: float | None = None
    gamma_max: float = 6.0
    label_dropout: float = Field(0.1, ge=0.0, lt=1.0)  # share of labels trained as "null"
    augment_transforms: bool = True  # condition on a data transform (distribution augmentation)
    # "levels": the network scores each pixel's K levels, the scores are added to the exact
    # log-likelihood of z_t under each level, and ε̂ follows from the expected level: at low
    # noise the exact term decides (the data are discrete), so the network's capacity goes
    # where the noise is. "eps": the network's output is ε̂ itself.
    output: Literal["levels", "eps"] = "levels"
    # The served defaults (the API's `steps`, `sampler` and `guidance` when not given).
    sample_steps: int = Field(25, ge=1)
    guidance: float = Field(0.0, ge=0.0)
    sampler: Literal["ddim", "ancestral"] = "ddim"


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ResBlock(nn.Module):
    """Two 3×3 convolutions with the time/label embedding added between them."""

    def __init__(self, cin: int, cout: int, emb: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [B, cin, H, W], emb [B, E] -> [B, cout, H, W]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class UNet(nn.Module):
    """ε̂(z_t, t, y): a U-Net over the image with skip connections at every block."""

    def __init__(self, spec: DatasetSpec, cfg: DiffusionConfig, n_labels: int, n_transforms: int) -> None:
        super().__init__()
        C, H, W = spec.shape
        E = cfg.embedding
        self.E = E
        self.time = nn.Sequential(nn.Linear(E, E), nn.SiLU(), nn.Linear(E, E))
        # Labels 0..L-1 and the null label L (unconditional models have only the null one).
        self.label = nn.Embedding(n_labels + 1, E)
        # The data transform of distribution augmentation (0: the identity, what is served).
        self.transform = nn.Embedding(n_transforms, E) if n_transforms else None
        levels = min(len(cfg.channel_mult), downsamples(H, W, len(cfg.channel_mult) - 1) + 1)
        mults = cfg.channel_mult[:levels]
        ch = cfg.channels
        self.inp = nn.Conv2d(C, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips = [ch]
        cur = ch
        for i, m in enumerate(mults):
            for _ in range(cfg.blocks):
                self.down.append(ResBlock(cur, ch * m, E, cfg.dropout))
                cur = ch * m
                skips.append(cur)
            if i < levels - 1:
                self.downsample.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid = nn.ModuleList([ResBlock(cur, cur, E, cfg.dropout), ResBlock(cur, cur, E, cfg.dropout)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            for _ in range(cfg.blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), ch * m, E, cfg.dropout))
                cur = ch * m
            if i > 0:
                self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(cur), cur)
        self.out = nn.Conv2d(cur, C * (spec.levels if cfg.output == "levels" else 1), 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as ε̂ = 0: the bound of a model that knows nothing
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]
        self.levels, self.blocks = levels, cfg.blocks

    def embed_time(self, t: Tensor) -> Tensor:
        """Sinusoidal features of 1000·t: t [B] -> [B, E]."""
        half = self.E // 2
        freqs = torch.exp(
            -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half
        )
        args = 1000.0 * t[:, None].to(torch.float32) * freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def forward(self, z: Tensor, t: Tensor, y: Tensor, aug: Tensor | None = None) -> Tensor:
        """z [B, C, H, W], t [B] in [0, 1], y [B] int (L = null), aug [B] transform index
        (None: the identity) -> ε̂ [B, C, H, W]."""
        emb = self.time(self.embed_time(t)) + self.label(y)
        if self.transform is not None:
            # The identity's embedding is added in the served graph too (a constant there).
            index = torch.zeros_like(y) if aug is None else aug
            emb = emb + self.transform(index)
        h = self.inp(z)
        hs = [h]
        blocks = iter(self.down)
        for i in range(self.levels):
            for _ in range(self.blocks):
                h = next(blocks)(h, emb)
                hs.append(h)
            if i < self.levels - 1:
                h = self.downsample[i](h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        ups = iter(self.up)
        for j, i in enumerate(reversed(range(self.levels))):
            for _ in range(self.blocks + 1):
                h = next(ups)(torch.cat([h, hs.pop()], dim=1), emb)
            if i > 0:
                h = self.upsample[j](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


def exact_sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + e^-x), exact in relative terms also near 0. The exported graph's σ² at low
    noise is 1e-6 at 256 levels, and ONNX Runtime's Sigmoid kernel errs in absolute terms:
    ε̂, which divides by σ, differed from torch's by 0.9 % at t = 0.03 (|γ| stays under 14
    here, so e^-x cannot overflow)."""
    return 1.0 / (1.0 + torch.exp(-x))


def level_gamma_min(levels: int) -> float:
    """γ_min for K levels: σ_0/α_0 the same share (about 0.15) of the spacing 2/(K-1) as
    γ_min = -8 gives at 17 levels."""
    return -8.0 + 2.0 * math.log(16.0 / (levels - 1))


class DiffusionModel(GenerativeModel):
    """(Conditional) variational diffusion model; likelihood by its variational bound."""

    family = "diffusion"
    estimator = "variational bound (continuous-time VDM)"

    def __init__(self, spec: DatasetSpec, conditional: bool, config: DiffusionConfig) -> None:
        super().__init__(spec, conditional, config)
        self.gamma_min = level_gamma_min(spec.levels) if config.gamma_min is None else config.gamma_min
        self.cfg = config
        self.net = UNet(spec, config, self.num_classes, self.transform_count)

    # --- the schedule -----------------------------------------------------------------
    def gamma(self, t: Tensor) -> Tensor:
        """-log SNR at time t (any shape)."""
        return self.gamma_min + (self.cfg.gamma_max - self.gamma_min) * t

    @property
    def null_label(self) -> int:
        """The label index that means "no label" (classifier-free guidance's other pass)."""
        return self.num_classes

    def labels_or_null(self, y: Tensor | None, batch: int, device: torch.device) -> Tensor:
        """The network's label input: y, or the null label for unconditional models."""
        if self.conditional:
            if y is None:
                raise ValueError("this model is class-conditional: labels are required")
            return y.to(torch.long)
        return torch.full((batch,), self.null_label, dtype=torch.long, device=device)

    def denoise(self, z: Tensor, t: Tensor, y: Tensor | None, aug: Tensor | None = None) -> Tensor:
        """ε̂(z_t, t, y) [B, C, H, W]; y may hold the null label L."""
        return self.predict(z, t, self.labels_or_null(y, z.shape[0], z.device), aug)

    def predict(self, z: Tensor, t: Tensor, y: Tensor, aug: Tensor | None = None) -> Tensor:
        """The network's ε̂ at (z [B, C, H, W], t [B], y [B] with the null label allowed)."""
        raw = self.net(z, t, y, aug)
        if self.cfg.output == "eps":
            return raw
        B, C, H, W = z.shape
        K = self.spec.levels
        g = self.gamma(t)[:, None, None, None, None]
        alpha, sigma2 = torch.sqrt(exact_sigmoid(-g)), exact_sigmoid(g)
        centers = torch.linspace(-1.0, 1.0, K, device=z.device)
        residual = z[..., None] - alpha * centers  # z - α·level, [B,C,H,W,K]
        exact = -(residual**2) / (2.0 * sigma2)  # log q(z | level)
        scores = raw.reshape(B, C, K, H, W).permute(0, 1, 3, 4, 2)
        # ε̂ = (z - α·E[level]) / σ, written as E[z - α·level] / σ: at low noise z - α·x̂ is
        # a difference of two numbers near 1 that leaves ~σ, and dividing float32 rounding
        # by σ (1e-3 at 256 levels) made ONNX Runtime and torch differ by 0.2 % of ε̂.
        weights = torch.softmax(scores + exact, dim=-1)
        return (weights * residual).sum(-1) / torch.sqrt(sigma2[..., 0])

    # --- the bound --------------------------------------------------------------------
    def bound_terms(
        self, x: Tensor, y: Tensor | None, t: Tensor, eps: Tensor, eps0: Tensor, aug: Tensor | None = None
    ) -> Tensor:
        """-log P(x) bound in nats per row, one time per row: x int [B, C, H, W], t [B],
        eps and eps0 [B, C, H, W] (the diffusion's and the decoder's noise) -> [B]."""
        xs = self.scaled(x)
        g_max = torch.tensor(self.cfg.gamma_max)
        prior = sum_except_batch(
            0.5 * (torch.sigmoid(g_max) + torch.sigmoid(-g_max) * xs * xs - 1.0 - F.logsigmoid(g_max))
        )
        recon = -self.decoder_log_prob(x, xs, eps0)
        g = self.gamma(t)[:, None, None, None]
        z = torch.sqrt(torch.sigmoid(-g)) * xs + torch.sqrt(torch.sigmoid(g)) * eps
        err = sum_except_batch((eps - self.denoise(z, t, y, aug)) ** 2)
        diffusion = 0.5 * (self.cfg.gamma_max - self.gamma_min) * err
        return prior + recon + diffusion

    def decoder_log_prob(self, x: Tensor, xs: Tensor, eps0: Tensor) -> Tensor:
        """log p(x | z_0) for z_0 = α_0 x + σ_0 ε_0: [B]."""
        g0 = torch.tensor(self.gamma_min)
        alpha0, sigma0 = torch.sqrt(torch.sigmoid(-g0)), torch.sqrt(torch.sigmoid(g0))
        z0 = alpha0 * xs + sigma0 * eps0
        logp = self.level_log_probs(z0)  # [B, C, H, W, K]
        return sum_except_batch(logp.gather(-1, x.to(torch.long)[..., None])[..., 0])

    def level_log_probs(self, z0: Tensor) -> Tensor:
        """The decoder's log p(level | z_0) per pixel: [B, C, H, W] -> [B, C, H, W, K]."""
        g0 = self.gamma_min
        scale = math.sqrt(math.exp(g0))  # σ_0 / α_0
        centers = torch.linspace(-1.0, 1.0, self.spec.levels, device=z0.device)
        alpha0 = math.sqrt(1.0 / (1.0 + math.exp(g0)))
        logits = -0.5 * ((z0[..., None] / alpha0 - centers) / scale) ** 2
        return torch.log_softmax(logits, dim=-1)

    def training_loss(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The bound in bits per dimension, one stratified time per row; labels are
        replaced by the null label for a `label_dropout` share of rows."""
        B = x.shape[0]
        u = torch.rand(())
        t = torch.remainder(u + torch.arange(B, dtype=torch.float32) / B, 1.0).to(x.device)
        eps = torch.randn(x.shape, device=x.device)
        eps0 = torch.randn(x.shape, device=x.device)
        yy = y
        if self.conditional and y is not None and self.cfg.label_dropout > 0:
            drop = torch.rand(B, device=x.device) < self.cfg.label_dropout
            yy = torch.where(drop, torch.full_like(y, self.null_label), y)
        nats = self.bound_terms(x, yy, t, eps, eps0, aug)
        loss = nats.mean() / (self.dims * math.log(2))
        return loss, {"bound_bpd": float(loss.detach())}

    def log_likelihood(self, x: Tensor, y: Tensor | None, samples: int = 16) -> Tensor:
        """The bound's estimate: `samples` stratified times per row, the noise fresh."""
        total = torch.zeros(x.shape[0], device=x.device)
        u = torch.rand(())
        for s in range(samples):
            t = torch.full((x.shape[0],), float((u + s / samples) % 1.0), device=x.device)
            eps = torch.randn(x.shape, device=x.device)
            eps0 = torch.randn(x.shape, device=x.device)
            total = total + self.bound_terms(x, y, t, eps, eps0)
        return -total / samples

    def marginal_log_likelihood(
        self, x: Tensor, log_prior: Tensor, samples: int = 1
    ) -> tuple[Tensor, Tensor]:
        """log p(x) and p(y|x) [B, L], every class's bound on the same times and noise
        (common random numbers: the classes differ by the model, not by the draws)."""
        B = x.shape[0]
        u = torch.rand(())
        draws = [
            (
                torch.full((B,), float((u + s / samples) % 1.0), device=x.device),
                torch.randn(x.shape, device=x.device),
                torch.randn(x.shape, device=x.device),
            )
            for s in range(samples)
        ]
        per_class = []
        for c in range(self.num_classes):
            y = torch.full((B,), c, dtype=torch.long, device=x.device)
            nats = torch.stack([self.bound_terms(x, y, t, e, e0) for t, e, e0 in draws]).mean(dim=0)
            per_class.append(-nats)
        joint = torch.stack(per_class, dim=1) + log_prior[None, :]  # [B, L]
        marginal = torch.logsumexp(joint, dim=1)
        return marginal, torch.exp(joint - marginal[:, None])

    # --- sampling ---------------------------------------------------------------------
    def guided_eps(self, z: Tensor, t: Tensor, y: Tensor | None, guidance: float) -> Tensor:
        """(1 + w) ε̂(z, t, y) - w ε̂(z, t, ∅), one network pass over both halves."""
        if not self.conditional or guidance == 0.0:
            return self.denoise(z, t, y)
        assert y is not None
        null = torch.full_like(y, self.null_label)
        both = self.predict(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y.to(torch.long), null]))
        cond, uncond = both.chunk(2)
        return (1.0 + guidance) * cond - guidance * uncond

    def draw_noise(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """z_1 ~ N(0, I) and one uniform per pixel for the decoder's final draw."""
        return {
            "z": torch.randn((n, *self.spec.shape), generator=generator),
            "u": torch.rand((n, *self.spec.shape), generator=generator),
        }

    def sample_with_noise(
        self, noise: dict[str, Tensor], y: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """The default deterministic sampler (DDIM, `sample_steps` steps, `guidance`) from
        z_1 = T·z, then the decoder's draw from z_0."""
        z = noise["z"] * temperature
        steps = self.cfg.sample_steps
        for i in range(steps, 0, -1):
            t = torch.full((z.shape[0],), i / steps, device=z.device)
            s = torch.full((z.shape[0],), (i - 1) / steps, device=z.device)
            z = self.ddim_step(z, t, s, y, self.cfg.guidance)
        return categorical_from_uniform(self.level_log_probs(z), noise["u"])

    def ddim_step(self, z: Tensor, t: Tensor, s: Tensor, y: Tensor | None, guidance: float) -> Tensor:
        """z_t -> z_s (s < t) along the deterministic path, the prediction of x clipped to [-1, 1]."""
        gt, gs = self.gamma(t)[:, None, None, None], self.gamma(s)[:, None, None, None]
        at, st = torch.sqrt(torch.sigmoid(-gt)), torch.sqrt(torch.sigmoid(gt))
        as_, ss = torch.sqrt(torch.sigmoid(-gs)), torch.sqrt(torch.sigmoid(gs))
        eps = self.guided_eps(z, t, y, guidance)
        x = ((z - st * eps) / at).clamp(-1.0, 1.0)
        eps = (z - at * x) / st
        return as_ * x + ss * eps

    def export_info(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "schedule": {"kind": "linear-log-snr", "gamma_min": self.gamma_min, "gamma_max": c.gamma_max},
            "parametrization": (
                "eps"
                if c.output == "eps"
                else "eps from the expected level: network scores per level + log q(z_t | level)"
            ),
            "null_label": self.null_label,
            "default_steps": c.sample_steps,
            "default_sampler": c.sampler,
            "default_guidance": c.guidance,
        }

    def graph_defs(self) -> list[GraphDef]:
        """The one `denoise` graph: (z, t[, y]) -> ε̂. A conditional model's y may be the
        null label (guidance's unlabelled pass); an unconditional one takes no y."""
        C, H, W = self.spec.shape
        img = ["batch", C, H, W]
        inputs = [
            TensorSpec(name="z", dtype="float32", shape=img),
            TensorSpec(name="t", dtype="float32", shape=["batch"]),
        ]
        if self.conditional:
            inputs.append(TensorSpec(name="y", dtype="int64", shape=["batch"]))
            module = wrap(self, lambda m, z, t, y: m.predict(z, t, y), 3)
        else:
            module = wrap(self, lambda m, z, t: m.denoise(z, t, None), 2)
        return [
            GraphDef(
                "denoise",
                "noise prediction eps_hat(z_t, t, y) (t in [0, 1]; y = null_label for no label)",
                module,
                inputs,
                [TensorSpec(name="eps", dtype="float32", shape=img)],
                example=self._example,
            )
        ]

    def _example(self, batch: int, x: Tensor, y: Tensor | None, gen: torch.Generator) -> tuple[Tensor, ...]:
        """Held-out images noised to random times, with their labels (and some null ones)."""
        t = torch.rand((batch,), generator=gen)
        g = self.gamma(t)[:, None, None, None]
        eps = torch.randn((batch, *self.spec.shape), generator=gen)
        z = torch.sqrt(torch.sigmoid(-g)) * self.scaled(x[:batch]) + torch.sqrt(torch.sigmoid(g)) * eps
        if not self.conditional:
            return z, t
        assert y is not None
        labels = y[:batch].to(torch.long).clone()
        labels[::3] = self.null_label
        return z, t, labels

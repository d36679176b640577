"""Convolutional (conditional) VAE with a categorical decoder over the discrete levels.

Trained on the (β-weighted) ELBO with a short KL warm-up, or optionally on the
importance-weighted bound; evaluated with the unweighted importance bound
log P(x) ≥ E[log (1/K) Σ_k p(x, z_k) / q(z_k | x)], which tightens as K grows.
With `augment_transforms`, encoder and decoder are also conditioned on a dihedral
transform (distribution augmentation, see `augment.py`); exported graphs fix the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.nn import functional as F

from service.manifest import DatasetSpec

from .base import FamilyConfig, GenerativeModel
from .layers import categorical_from_uniform, label_planes, std_normal_logpdf, sum_except_batch


class VAEConfig(FamilyConfig):
    """Architecture of the VAE."""

    latent: int = Field(16, ge=1)
    channels: int = Field(32, ge=1)
    hidden: int = Field(256, ge=1)
    kl_warmup_steps: int = Field(500, ge=0)
    # β > 1: the latent carries less, so the label steers conditional samples (0.89 -> 0.96
    # of them recognised on digits) at a cost of ~0.04 bpd, well inside the likelihood target.
    kl_weight: float = Field(2.0, gt=0.0)
    max_downsamples: int = Field(2, ge=0)
    # > 1: train on the importance-weighted bound with this many samples (IWAE training),
    # β weighting log p(z) - log q(z|x) as it weights the KL term of the ELBO.
    train_samples: int = Field(1, ge=1)
    # > 0: a hybrid generative-discriminative objective, adding λ · -log p(y|x) with p(y|x)
    # from Bayes' rule over the model's own per-class bounds, on a share of each batch. Both
    # were tried for the Bayes-rule accuracy on digits (docs/results.md) and left off.
    discriminative_weight: float = Field(0.0, ge=0.0)
    discriminative_share: float = Field(0.25, gt=0.0, le=1.0)
    augment_transforms: bool = True  # condition on a data transform (distribution augmentation)


def downsamples(h: int, w: int, limit: int) -> int:
    """How many stride-2 stages fit: sides stay even and at least 2."""
    n = 0
    while n < limit and h % 2 ** (n + 1) == 0 and w % 2 ** (n + 1) == 0 and h // 2 ** (n + 1) >= 2:
        n += 1
    return n


class Encoder(nn.Module):
    """x (scaled) [+ label planes] -> (mu, logvar)."""

    def __init__(self, spec: DatasetSpec, cfg: VAEConfig, n_classes: int) -> None:
        super().__init__()
        C, H, W = spec.shape
        n = downsamples(H, W, cfg.max_downsamples)
        layers: list[nn.Module] = [nn.Conv2d(C + n_classes, cfg.channels, 3, padding=1), nn.ELU()]
        ch = cfg.channels
        for _ in range(n):
            layers += [nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1), nn.ELU()]
            ch *= 2
        self.convs = nn.Sequential(*layers)
        flat = ch * (H // 2**n) * (W // 2**n)
        self.fc = nn.Sequential(
            nn.Linear(flat + n_classes, cfg.hidden), nn.ELU(), nn.Linear(cfg.hidden, 2 * cfg.latent)
        )
        self.latent = cfg.latent

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """x [B,C,H,W] in [-1, 1] -> (mu, logvar) [B, Dz]."""
        if cond is not None:
            x = torch.cat([x, label_planes(cond, x.shape[2], x.shape[3])], dim=1)
        h = self.convs(x).flatten(1)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        out = self.fc(h)
        return out[:, : self.latent], out[:, self.latent :]


class Decoder(nn.Module):
    """z [+ label] -> per-pixel logits over the K levels [B, C, H, W, K]."""

    def __init__(self, spec: DatasetSpec, cfg: VAEConfig, n_classes: int) -> None:
        super().__init__()
        C, H, W = spec.shape
        n = downsamples(H, W, cfg.max_downsamples)
        ch = cfg.channels * 2**n
        self.start = (ch, H // 2**n, W // 2**n)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent + n_classes, cfg.hidden),
            nn.ELU(),
            nn.Linear(cfg.hidden, ch * self.start[1] * self.start[2]),
            nn.ELU(),
        )
        ups: list[nn.Module] = []
        for _ in range(n):
            ups += [nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1), nn.ELU()]
            ch //= 2
        self.ups = nn.Sequential(*ups)
        self.out = nn.Conv2d(ch + n_classes, C * spec.levels, 3, padding=1)
        self.C, self.K = C, spec.levels

    def forward(self, z: Tensor, cond: Tensor | None) -> Tensor:
        """z [B, Dz] -> logits [B, C, H, W, K]."""
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        h = self.fc(z).reshape(z.shape[0], *self.start)
        h = self.ups(h)
        if cond is not None:
            h = torch.cat([h, label_planes(cond, h.shape[2], h.shape[3])], dim=1)
        logits = self.out(h)  # [B, C*K, H, W]
        B, _, H, W = logits.shape
        return logits.reshape(B, self.C, self.K, H, W).permute(0, 1, 3, 4, 2)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row, in nats: [B, Dz] -> [B]."""
    return 0.5 * (mu * mu + torch.exp(logvar) - 1.0 - logvar).sum(-1)


def categorical_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """Σ over pixels of log softmax(logits)[x]: logits [B,C,H,W,K], x int [B,C,H,W] -> [B]."""
    logp = torch.log_softmax(logits, dim=-1).gather(-1, x[..., None])[..., 0]
    return sum_except_batch(logp)


class VAEModel(GenerativeModel):
    """(Conditional) VAE; likelihood by importance sampling."""

    family = "vae"
    estimator = "importance-weighted bound (IWAE)"
    steps_seen: Tensor

    def __init__(self, spec: DatasetSpec, conditional: bool, config: VAEConfig) -> None:
        super().__init__(spec, conditional, config)
        self.cfg = config
        cond = self.num_classes + self.transform_count
        self.encoder = Encoder(spec, config, cond)
        self.decoder = Decoder(spec, config, cond)
        self.register_buffer("steps_seen", torch.tensor(0, dtype=torch.long))

    def encode(self, x: Tensor, y: Tensor | None, aug: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Integer-valued x (any numeric dtype) [B,C,H,W] -> (mu, logvar) [B, Dz]."""
        return self.encoder(self.scaled(x), self.conditioning(y, aug, x.shape[0], x.device))

    def decode(self, z: Tensor, y: Tensor | None, aug: Tensor | None = None) -> Tensor:
        """z [B, Dz] -> logits over levels [B, C, H, W, K]."""
        return self.decoder(z, self.conditioning(y, aug, z.shape[0], z.device))

    def log_weights(self, x: Tensor, y: Tensor | None, eps: Tensor) -> Tensor:
        """log p(x, z_k) - log q(z_k | x) for z_k = mu + σ·eps_k: eps [B, S, Dz] -> [B, S]."""
        mu, logvar = self.encode(x, y)
        log_px_z, log_pz, log_qz = self.weight_terms(x, y, None, mu, logvar, eps)
        return log_px_z + log_pz - log_qz

    def weight_terms(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None, mu: Tensor, logvar: Tensor, eps: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """log p(x | z_k), log p(z_k) and log q(z_k | x) for z_k = mu + σ·eps_k: eps [B, S, Dz]
        -> three [B, S]."""
        B, S, Dz = eps.shape
        std = torch.exp(0.5 * logvar)
        z = mu[:, None, :] + std[:, None, :] * eps  # [B, S, Dz]
        yy = None if y is None else y[:, None].expand(B, S).reshape(-1)
        aa = None if aug is None else aug[:, None].expand(B, S).reshape(-1)
        logits = self.decode(z.reshape(-1, Dz), yy, aa)  # [B*S, C, H, W, K]
        xx = x.to(torch.long)[:, None].expand(B, S, *x.shape[1:]).reshape(-1, *x.shape[1:])
        log_px_z = categorical_log_prob(logits, xx).reshape(B, S)
        log_pz = std_normal_logpdf(z).sum(-1)
        log_qz = (std_normal_logpdf(eps) - 0.5 * logvar[:, None, :]).sum(-1)
        return log_px_z, log_pz, log_qz

    def training_loss(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Negative β-ELBO (β warming up to `kl_weight`) in bits per dimension, or the
        β-weighted importance bound with `train_samples` > 1; plus the optional hybrid term."""
        mu, logvar = self.encode(x, y, aug)
        if self.training:
            self.steps_seen += 1
        beta = self.cfg.kl_weight * min(1.0, float(self.steps_seen) / max(1, self.cfg.kl_warmup_steps))
        scale = self.dims * math.log(2)
        # (The one-sample path builds its graph in the order it always had: autograd's
        # summation order, and with it the default store's weights, stay bit for bit.)
        if self.cfg.train_samples == 1:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            recon = -categorical_log_prob(self.decode(z, y, aug), x)  # [B]
            kl = gaussian_kl(mu, logvar)  # [B]
            loss_nats = recon + beta * kl
        else:
            k = self.cfg.train_samples
            eps = torch.randn(mu.shape[0], k, mu.shape[1], device=x.device)
            log_px_k, log_pz, log_qz = self.weight_terms(x, y, aug, mu, logvar, eps)  # [B, k] each
            bound = torch.logsumexp(log_px_k + beta * (log_pz - log_qz), dim=1) - math.log(k)
            loss_nats, recon = -bound, -log_px_k[:, 0]
            kl = gaussian_kl(mu, logvar)  # [B], for the metrics
        loss = loss_nats.mean() / scale
        metrics = {
            "elbo_bpd": float((recon + kl).mean().detach()) / scale,
            "kl_bits": float(kl.mean().detach()) / math.log(2),
        }
        if self.training and self.cfg.discriminative_weight > 0 and y is not None:
            ce = self.posterior_cross_entropy(x, y, aug)
            loss = loss + self.cfg.discriminative_weight * ce / scale
            metrics["posterior_ce"] = float(ce.detach())
        return loss, metrics

    def posterior_cross_entropy(self, x: Tensor, y: Tensor, aug: Tensor | None) -> Tensor:
        """Mean -log p(y|x) in nats over the first `discriminative_share` of the batch, by
        Bayes' rule (uniform prior) over one-sample ELBOs of every class.

        The encoder is held fixed for this term: it should shape the decoder's p(x|z,y), not
        teach q(z|x,y) to be a poor proposal for wrong labels, which would move the served
        posterior by loosening the bound rather than by changing the model.
        """
        n = max(1, round(self.cfg.discriminative_share * x.shape[0]))
        L = self.num_classes
        xs = x[:n].repeat_interleave(L, dim=0)  # [n*L, C, H, W]
        ys = torch.arange(L, device=x.device).repeat(n)  # [n*L]: every class for each image
        augs = None if aug is None else aug[:n].repeat_interleave(L, dim=0)
        with torch.no_grad():
            mu, logvar = self.encode(xs, ys, augs)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        kl = gaussian_kl(mu, logvar)  # [n*L]
        elbo = categorical_log_prob(self.decode(z, ys, augs), xs) - kl  # [n*L]
        return F.cross_entropy(elbo.reshape(n, L), y[:n])

    def log_likelihood(self, x: Tensor, y: Tensor | None, samples: int = 256) -> Tensor:
        """IWAE estimate log (1/S) Σ_s w_s with S = `samples`, chunked to bound memory."""
        chunk = max(1, 4096 // max(1, x.shape[0]))
        parts = []
        for start in range(0, samples, chunk):
            s = min(chunk, samples - start)
            eps = torch.randn(x.shape[0], s, self.cfg.latent, device=x.device)
            parts.append(self.log_weights(x, y, eps))
        logw = torch.cat(parts, dim=1)
        return torch.logsumexp(logw, dim=1) - math.log(samples)

    def draw_noise(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """z ~ N(0, I) [n, Dz] and one uniform per pixel [n, C, H, W] for the decoder draw."""
        return {
            "z": torch.randn((n, self.cfg.latent), generator=generator),
            "u": torch.rand((n, *self.spec.shape), generator=generator),
        }

    def sample_with_noise(
        self, noise: dict[str, Tensor], y: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """x ~ p(x | z = T·z)."""
        logits = self.decode(noise["z"] * temperature, y)
        return categorical_from_uniform(logits, noise["u"])

    def export_info(self) -> dict[str, Any]:
        return {"latent_dim": self.cfg.latent, "decoder": "categorical"}

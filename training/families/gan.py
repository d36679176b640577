"""Conditional DCGAN-style GAN: hinge loss, spectral-norm projection discriminator, EMA generator.

The recipe that makes small GANs train reliably: spectral normalisation in the
discriminator (Miyato et al. 2018), a projection discriminator for the labels (Miyato &
Koyama 2018), the hinge loss, Adam with β1 = 0, and an exponential moving average of the
generator's weights, which is what gets evaluated and exported.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from service.manifest import DatasetSpec

from .base import FamilyConfig, GenerativeModel
from .layers import discretize, label_planes
from .vae import downsamples


class GANConfig(FamilyConfig):
    """Architecture and optimiser settings of the GAN."""

    latent: int = Field(32, ge=1)
    g_channels: int = Field(48, ge=1)
    d_channels: int = Field(48, ge=1)
    lr_d: float = Field(2e-4, gt=0.0)
    lr_g: float = Field(2e-4, gt=0.0)
    ema_decay: float = Field(0.995, ge=0.0, lt=1.0)
    max_upsamples: int = Field(2, ge=0)


class Generator(nn.Module):
    """z [+ label] -> continuous images in level units [0, K)."""

    def __init__(self, spec: DatasetSpec, cfg: GANConfig, n_classes: int) -> None:
        super().__init__()
        C, H, W = spec.shape
        n = downsamples(H, W, cfg.max_upsamples)
        ch = cfg.g_channels * 2**n
        self.start = (ch, H // 2**n, W // 2**n)
        self.fc = nn.Sequential(
            nn.Linear(cfg.latent + n_classes, ch * self.start[1] * self.start[2]),
            nn.BatchNorm1d(ch * self.start[1] * self.start[2]),
            nn.ReLU(),
        )
        self.blocks = nn.ModuleList()
        for _ in range(n):
            self.blocks.append(
                nn.Sequential(
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(ch + n_classes, ch // 2, 3, padding=1),
                    nn.BatchNorm2d(ch // 2),
                    nn.ReLU(),
                )
            )
            ch //= 2
        self.out = nn.Conv2d(ch + n_classes, C, 3, padding=1)
        self.levels = spec.levels

    def forward(self, z: Tensor, cond: Tensor | None) -> Tensor:
        """z [B, Dz] -> x [B, C, H, W] in [0, K)."""
        h = z if cond is None else torch.cat([z, cond], dim=1)
        h = self.fc(h).reshape(z.shape[0], *self.start)
        for block in self.blocks:
            if cond is not None:
                h = torch.cat([h, label_planes(cond, h.shape[2], h.shape[3])], dim=1)
            h = block(h)
        if cond is not None:
            h = torch.cat([h, label_planes(cond, h.shape[2], h.shape[3])], dim=1)
        return torch.sigmoid(self.out(h)) * self.levels


class Discriminator(nn.Module):
    """Spectral-norm conv net with a projection head for the label."""

    def __init__(self, spec: DatasetSpec, cfg: GANConfig, n_classes: int) -> None:
        super().__init__()
        C, H, W = spec.shape
        n = downsamples(H, W, cfg.max_upsamples)
        ch = cfg.d_channels
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(C, ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        for _ in range(n):
            layers += [
                spectral_norm(nn.Conv2d(ch, ch * 2, 4, stride=2, padding=1)),
                nn.LeakyReLU(0.2),
            ]
            ch *= 2
        layers += [spectral_norm(nn.Conv2d(ch, ch, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers)
        self.head = spectral_norm(nn.Linear(ch, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, ch)) if n_classes else None

    def forward(self, x: Tensor, y: Tensor | None) -> Tensor:
        """x [B, C, H, W] in [-1, 1] -> critic score [B]."""
        phi = self.features(x).sum(dim=(2, 3))  # [B, F]
        out = self.head(phi)[:, 0]
        if self.embed is not None and y is not None:
            out = out + (self.embed(y) * phi).sum(dim=1)
        return out


class GANModel(GenerativeModel):
    """Conditional GAN; no likelihood."""

    family = "gan"
    has_likelihood = False
    estimator = "none"

    def __init__(self, spec: DatasetSpec, conditional: bool, config: GANConfig) -> None:
        super().__init__(spec, conditional, config)
        self.cfg = config
        self.generator = Generator(spec, config, self.num_classes)
        self.discriminator = Discriminator(spec, config, self.num_classes)
        self.ema = copy.deepcopy(self.generator)
        self.ema.requires_grad_(False)

    def to_unit(self, x: Tensor) -> Tensor:
        """Continuous level units [0, K) -> [-1, 1], the discriminator's input scale."""
        return x * (2.0 / self.spec.levels) - 1.0

    def generate(self, z: Tensor, y: Tensor | None) -> Tensor:
        """The exported graph: z [B, Dz] -> continuous x [B, C, H, W] in [0, K) (EMA weights)."""
        return self.ema(z, self.onehot(y))

    def make_optimizers(self, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
        """Adam with β1 = 0 for each player (lr from the config)."""
        return [
            torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g, betas=(0.0, 0.9)),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=(0.0, 0.9)),
        ]

    def train_step(
        self,
        x: Tensor,
        y: Tensor | None,
        optimizers: list[torch.optim.Optimizer],
        step: int,
        aug: Tensor | None = None,
    ) -> dict[str, float]:
        """One discriminator and one generator update with the hinge loss, then EMA."""
        opt_g, opt_d = optimizers
        B = x.shape[0]
        cond = self.onehot(y)
        # Real images are dequantized so that "is it on the integer grid" is no tell.
        real = self.to_unit(x.to(torch.float32) + torch.rand(x.shape, device=x.device))

        opt_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = self.generator(torch.randn(B, self.cfg.latent, device=x.device), cond)
        loss_d = (
            F.relu(1.0 - self.discriminator(real, y)).mean()
            + F.relu(1.0 + self.discriminator(self.to_unit(fake), y)).mean()
        )
        loss_d.backward()  # type: ignore[no-untyped-call]
        opt_d.step()

        opt_g.zero_grad(set_to_none=True)
        fake = self.generator(torch.randn(B, self.cfg.latent, device=x.device), cond)
        loss_g = -self.discriminator(self.to_unit(fake), y).mean()
        loss_g.backward()
        opt_g.step()
        self._update_ema()
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}

    @torch.no_grad()
    def _update_ema(self) -> None:
        d = self.cfg.ema_decay
        for p_ema, p in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            p_ema.lerp_(p, 1.0 - d)
        for b_ema, b in zip(self.ema.buffers(), self.generator.buffers(), strict=True):
            b_ema.copy_(b)

    def draw_noise(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """z ~ N(0, I) [n, Dz]."""
        return {"z": torch.randn((n, self.cfg.latent), generator=generator)}

    def sample_with_noise(
        self, noise: dict[str, Tensor], y: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """x = floor(G(T·z))."""
        return discretize(self.generate(noise["z"] * temperature, y), self.spec.levels)

    def export_info(self) -> dict[str, Any]:
        return {"latent_dim": self.cfg.latent}

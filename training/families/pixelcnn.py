"""Gated PixelCNN (van den Oord et al. 2016) with class-conditional biases.

Two stacks remove the blind spot: a vertical stack that sees only rows above, and a
horizontal stack that sees the pixels to the left in the current row. The first layer
is type A (the centre pixel is hidden), later layers type B. With C > 1 channels the
centre taps and 1×1 convolutions of the horizontal stack are also masked by channel
group, so channel c of a pixel depends only on channels < c of that pixel. The output
is a categorical over the K levels for every pixel and channel, so log p(x) is exact and
needs one pass.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt
from torch import Tensor, nn

from service.manifest import DatasetSpec

from .augment import transform_count
from .base import FamilyConfig, GenerativeModel
from .layers import MaskedConv2d, categorical_from_uniform, channel_groups, logistic_mixture_logprobs
from .vae import categorical_log_prob


class PixelCNNConfig(FamilyConfig):
    """Architecture of the gated PixelCNN."""

    channels: int = Field(48, ge=1)
    layers: int = Field(8, ge=1)
    kernel: int = Field(3, ge=1)
    dilations: tuple[PositiveInt, ...] = Field((1,), min_length=1)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    onehot_input: bool = False
    output: Literal["categorical", "logistic_mixture"] = "categorical"
    mixtures: int = Field(5, ge=1)
    position_bias: bool = False
    members: int = Field(1, ge=1)
    augment_transforms: bool = True  # condition on a data transform (distribution augmentation)


def _group_mask(out_groups: Tensor, in_groups: Tensor, include_same: bool) -> Tensor:
    """[out, in] 0/1 matrix: output group g may see input groups < g (or ≤ g)."""
    o, i = out_groups[:, None], in_groups[None, :]
    return (i <= o if include_same else i < o).float()


def vertical_mask(out_ch: int, in_ch: int, k: int, first: bool) -> Tensor:
    """Rows below the centre are hidden; in the first layer the centre row too.

    After layer 1 the centre row may be included: every vertical feature then depends
    only on rows strictly above its own, since layer 1 saw nothing of its own row.
    """
    mask = torch.ones(out_ch, in_ch, k, k)
    mask[:, :, k // 2 + 1 :, :] = 0
    if first:
        mask[:, :, k // 2, :] = 0
    return mask


def horizontal_mask(out_ch: int, in_ch: int, k: int, c: int, first: bool) -> Tensor:
    """1×k kernel: pixels right of the centre hidden; the centre tap masked by channel group.

    Inputs are laid out as c contiguous groups (image channels, or their one-hot codes).
    """
    mask = torch.ones(out_ch, in_ch, 1, k)
    mask[:, :, :, k // 2 + 1 :] = 0
    mask[:, :, 0, k // 2] = _group_mask(
        channel_groups(out_ch, c), channel_groups(in_ch, c), include_same=not first
    )
    return mask


def pointwise_mask(out_ch: int, in_ch: int, c: int, out_per_value: int = 0) -> Tensor:
    """1×1 conv within the horizontal stack: type-B channel-group mask.

    `out_per_value` > 0 lays the outputs out as c groups of that many (the K logits).
    """
    out_g = torch.arange(out_ch) // out_per_value if out_per_value else channel_groups(out_ch, c)
    return _group_mask(out_g, channel_groups(in_ch, c), include_same=True)[:, :, None, None]


class GatedLayer(nn.Module):
    """One gated layer over (vertical, horizontal) feature maps, with label biases."""

    def __init__(
        self,
        ch: int,
        c_img: int,
        k: int,
        dilation: int,
        n_classes: int,
        dropout: float,
        hw: tuple[int, int] | None = None,
        n_aug: int = 0,
    ) -> None:
        super().__init__()
        # Bias for the data transform being modelled (distribution augmentation); export
        # and evaluation use transform 0, the identity.
        self.aug = nn.Embedding(n_aug, 4 * ch) if n_aug else None
        # Position-dependent biases: on small images pixel statistics depend strongly on
        # where a pixel is, which padding alone conveys only weakly. They carry no data,
        # so they cannot break causality.
        self.pos = nn.Parameter(torch.zeros(1, 4 * ch, *hw)) if hw is not None else None
        self.v_conv = MaskedConv2d(ch, 2 * ch, (k, k), vertical_mask(2 * ch, ch, k, False), dilation)
        # The 2ch outputs are [value | gate]; both halves share the ch-channel group layout.
        half = horizontal_mask(ch, ch, k, c_img, first=False)
        self.h_conv = MaskedConv2d(ch, 2 * ch, (1, k), torch.cat([half, half]), dilation)
        # v -> h carries only rows above, so it needs no channel mask.
        self.v_to_h = nn.Conv2d(2 * ch, 2 * ch, 1)
        self.h_out = MaskedConv2d(ch, ch, (1, 1), pointwise_mask(ch, ch, c_img))
        self.cond = nn.Embedding(n_classes, 4 * ch) if n_classes else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.ch = ch

    def forward(
        self, v: Tensor, h: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(v, h) [B, ch, H, W] each -> (v', h')."""
        v_feat = self.v_conv(v)  # [B, 2ch, H, W]
        h_feat = self.h_conv(h) + self.v_to_h(v_feat)
        if self.aug is not None:
            a = self.aug.weight[0][None] if aug is None else self.aug(aug)  # [B or 1, 4ch]
            v_feat = v_feat + a[:, : 2 * self.ch, None, None]
            h_feat = h_feat + a[:, 2 * self.ch :, None, None]
        if self.cond is not None and y is not None:
            bias = self.cond(y)[:, :, None, None]  # [B, 4ch, 1, 1]
            v_feat = v_feat + bias[:, : 2 * self.ch]
            h_feat = h_feat + bias[:, 2 * self.ch :]
        if self.pos is not None:
            v_feat = v_feat + self.pos[:, : 2 * self.ch]
            h_feat = h_feat + self.pos[:, 2 * self.ch :]
        v_out = _gate(v_feat, self.ch)
        h_out = self.h_out(self.dropout(_gate(h_feat, self.ch))) + h
        return v_out, h_out


def _gate(t: Tensor, ch: int) -> Tensor:
    """tanh(value) * sigmoid(gate)."""
    return torch.tanh(t[:, :ch]) * torch.sigmoid(t[:, ch:])


class PixelCNNTrunk(nn.Module):
    """One gated PixelCNN: input convs (type A), gated layers (type B), output head."""

    def __init__(self, spec: DatasetSpec, config: PixelCNNConfig, n_classes: int) -> None:
        super().__init__()
        C = spec.shape[0]
        ch, k = config.channels, config.kernel
        c_in = C * spec.levels if config.onehot_input else C
        self.v_in = MaskedConv2d(c_in, ch, (k, k), vertical_mask(ch, c_in, k, True))
        self.h_in = MaskedConv2d(c_in, ch, (1, k), horizontal_mask(ch, c_in, k, C, True))
        hw = (spec.shape[1], spec.shape[2]) if config.position_bias else None
        n_aug = transform_count(spec.shape[1], spec.shape[2]) if config.augment_transforms else 0
        self.layers = nn.ModuleList(
            GatedLayer(
                ch, C, k, config.dilations[i % len(config.dilations)], n_classes, config.dropout, hw, n_aug
            )
            for i in range(config.layers)
        )
        per_value = spec.levels if config.output == "categorical" else 3 * config.mixtures
        self.per_value = per_value
        self.head = nn.Sequential(
            nn.ELU(),
            MaskedConv2d(ch, ch, (1, 1), pointwise_mask(ch, ch, C)),
            nn.ELU(),
            MaskedConv2d(
                ch, C * per_value, (1, 1), pointwise_mask(C * per_value, ch, C, out_per_value=per_value)
            ),
        )
        self.C = C

    def forward(self, xs: Tensor, y: Tensor | None, aug: Tensor | None = None) -> Tensor:
        """Encoded input [B, C', H, W] -> per-value outputs [B, C, H, W, P]."""
        v = self.v_in(xs)
        h = self.h_in(xs)
        for layer in self.layers:
            v, h = layer(v, h, y, aug)
        out = self.head(h)  # [B, C*P, H, W], channel-major groups of P values
        B, _, H, W = out.shape
        return out.reshape(B, self.C, self.per_value, H, W).permute(0, 1, 3, 4, 2)


class PixelCNNModel(GenerativeModel):
    """Class-conditional gated PixelCNN with a categorical output over the K levels.

    With `members` > 1 it is an ensemble whose conditionals are the average of its
    members' conditionals, p(x_i | x_<i) = (1/M) Σ_m p_m(x_i | x_<i): still an exact,
    normalised autoregressive model with one `logits` graph, and on small data sets a
    better one than any member (averaging cuts the variance of overfitted members).
    """

    family = "pixelcnn"
    estimator = "exact"

    def __init__(self, spec: DatasetSpec, conditional: bool, config: PixelCNNConfig) -> None:
        super().__init__(spec, conditional, config)
        self.cfg = config
        if config.channels % spec.shape[0]:
            raise ValueError(
                f"PixelCNN channels ({config.channels}) must be a multiple of the image channels"
            )
        self.members = nn.ModuleList(
            PixelCNNTrunk(spec, config, self.num_classes) for _ in range(config.members)
        )

    def _encode(self, x: Tensor) -> Tensor:
        if self.cfg.onehot_input:
            # [B,C,H,W] -> [B, C*K, H, W], channel-major so each channel's code is a group.
            codes = F.one_hot(x.to(torch.long), self.spec.levels).to(torch.float32)
            B, C, H, W, K = codes.shape
            return codes.permute(0, 1, 4, 2, 3).reshape(B, C * K, H, W)
        return self.scaled(x)

    def member_log_probs(self, x: Tensor, y: Tensor | None, aug: Tensor | None = None) -> list[Tensor]:
        """Each member's normalised log-probabilities over the levels [B, C, H, W, K]."""
        xs = self._encode(x)
        yy = y if self.conditional else None
        outs = []
        for trunk in self.members:
            out = trunk(xs, yy, aug)
            if self.cfg.output == "logistic_mixture":
                outs.append(logistic_mixture_logprobs(out, self.spec.levels))
            else:
                outs.append(torch.log_softmax(out, dim=-1))
        return outs

    def logits(self, x: Tensor, y: Tensor | None) -> Tensor:
        """Integer-valued x [B,C,H,W] (any numeric dtype) -> log-probabilities [B, C, H, W, K]."""
        outs = self.member_log_probs(x, y)
        if len(outs) == 1:
            return outs[0]
        return torch.logsumexp(torch.stack(outs), dim=0) - math.log(len(outs))

    def training_loss(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Exact negative log-likelihood in bits per dimension (of the transform `aug`)."""
        if self.conditional and y is None:
            raise ValueError("this model is class-conditional: labels are required")
        # Members learn independently (each on its own likelihood); the ensemble is
        # what validation, evaluation and export see.
        nll = torch.stack([-categorical_log_prob(lp, x) for lp in self.member_log_probs(x, y, aug)])
        bpd = nll.mean() / (self.dims * math.log(2))
        return bpd, {"bpd": float(bpd.detach())}

    def log_likelihood(self, x: Tensor, y: Tensor | None, samples: int = 1) -> Tensor:
        """Exact log p(x | y) in nats [B]."""
        if self.conditional and y is None:
            raise ValueError("this model is class-conditional: labels are required")
        return categorical_log_prob(self.logits(x, y), x)

    def draw_noise(self, n: int, generator: torch.Generator) -> dict[str, Tensor]:
        """One uniform per pixel and channel, for inverse-CDF draws."""
        return {"u": torch.rand((n, *self.spec.shape), generator=generator)}

    def sample_with_noise(
        self, noise: dict[str, Tensor], y: Tensor | None, temperature: float = 1.0
    ) -> Tensor:
        """Ancestral sampling in raster order (rows, columns, then channels)."""
        return self.complete(torch.zeros_like(noise["u"], dtype=torch.long), None, noise, y, temperature)

    def complete(
        self,
        x: Tensor,
        known: Tensor | None,
        noise: dict[str, Tensor],
        y: Tensor | None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Fill the entries of x where `known` is 0 by sampling, conditioned on the rest."""
        x = x.clone()
        u = noise["u"]
        C, H, W = self.spec.shape
        for i in range(H):
            for j in range(W):
                for c in range(C):
                    draw = categorical_from_uniform(
                        self.logits(x, y)[:, c, i, j] / temperature, u[:, c, i, j]
                    )
                    if known is None:
                        x[:, c, i, j] = draw
                    else:
                        x[:, c, i, j] = torch.where(known[:, c, i, j] > 0, x[:, c, i, j], draw)
        return x

    def export_info(self) -> dict[str, Any]:
        return {"order": "raster (row, column, channel)"}

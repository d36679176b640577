"""Building blocks shared by the families.

Everything here is written to export to ONNX and TorchScript: no `torch.distributions`,
no `slogdet`/`inverse` in a forward pass, no data-dependent Python control flow outside
what TorchScript handles, and numerically safe forms of log-sigmoid terms.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)


def std_normal_logpdf(z: Tensor) -> Tensor:
    """Elementwise log N(z; 0, 1)."""
    return -0.5 * (z * z + LOG_2PI)


def sum_except_batch(t: Tensor) -> Tensor:
    """[B, ...] -> [B]."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def squeeze2x2(x: Tensor) -> Tensor:
    """Space-to-depth: [B, C, H, W] -> [B, 4C, H/2, W/2]."""
    B, C, H, W = x.shape
    x = x.reshape(B, C, H // 2, 2, W // 2, 2)
    x = x.permute(0, 1, 3, 5, 2, 4)
    return x.reshape(B, C * 4, H // 2, W // 2)


def unsqueeze2x2(x: Tensor) -> Tensor:
    """Depth-to-space: [B, 4C, H, W] -> [B, C, 2H, 2W]."""
    B, C4, H, W = x.shape
    C = C4 // 4
    x = x.reshape(B, C, 2, 2, H, W)
    x = x.permute(0, 1, 4, 2, 5, 3)
    return x.reshape(B, C, H * 2, W * 2)


def log_sigmoid(x: Tensor) -> Tensor:
    """log σ(x) as -softplus(-x): `F.logsigmoid` exports as Log(Sigmoid), which underflows."""
    return -F.softplus(-x)


def label_planes(onehot: Tensor, h: int, w: int) -> Tensor:
    """One-hot labels [B, L] broadcast to constant planes [B, L, h, w]."""
    return onehot[:, :, None, None].expand(-1, -1, h, w)


class ActNorm(nn.Module):
    """Per-channel affine map, initialised from the first batch to zero mean, unit variance."""

    initialized: Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    def _data_init(self, x: Tensor) -> None:
        with torch.no_grad():
            mean = x.mean(dim=(0, 2, 3), keepdim=True)
            std = x.std(dim=(0, 2, 3), keepdim=True)
            self.bias.copy_(-mean)
            self.log_scale.copy_(-torch.log(std + 1e-6))
            self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (y, log|det| [B])."""
        if self.training and not bool(self.initialized):
            self._data_init(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """y -> x."""
        return y * torch.exp(-self.log_scale) - self.bias


class InvConv1x1(nn.Module):
    """Glow's invertible 1×1 convolution in LU form.

    W = P L (U + diag(sign · exp(log_s))). The log-determinant is H·W·Σ log_s, so no
    `slogdet` is needed. The inverse weight is a cached buffer (ONNX has no matrix
    inverse); it is refreshed whenever the module enters eval mode, and the inverse pass
    recomputes it exactly in training mode, so a stale cache cannot reach an export.
    """

    perm: Tensor
    sign_s: Tensor
    lower_mask: Tensor
    eye: Tensor
    weight_inv: Tensor

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.register_buffer("eye", torch.eye(channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))
        self.register_buffer("weight_inv", torch.eye(channels), persistent=False)
        self.refresh_inverse()

    def weight(self) -> Tensor:
        """The [C, C] matrix W."""
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def refresh_inverse(self) -> None:
        """Recompute the cached inverse weight from the current parameters."""
        with torch.no_grad():
            w = self.weight().double()
            self.weight_inv.copy_(torch.linalg.inv(w).float())

    def train(self, mode: bool = True) -> InvConv1x1:
        super().train(mode)
        if not mode:
            self.refresh_inverse()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,C,H,W] -> (W x, log|det| [B])."""
        w = self.weight()
        y = F.conv2d(x, w[:, :, None, None])
        logdet = self.log_s.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """y -> W^-1 y."""
        w_inv = torch.linalg.inv(self.weight()) if self.training else self.weight_inv
        return F.conv2d(y, w_inv[:, :, None, None])


class CouplingNet(nn.Module):
    """Small conv net for coupling parameters; last layer zero-initialised (identity start)."""

    def __init__(
        self, in_channels: int, out_channels: int, hidden: int, cond_channels: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels + cond_channels, hidden, 3, padding=1),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, hidden, 1),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, out_channels, 3, padding=1),
        )
        last = self.net[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        assert last.bias is not None
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """x [B,Cin,H,W], cond one-hot [B,L] or None -> [B,Cout,H,W]."""
        if cond is not None:
            x = torch.cat([x, label_planes(cond, x.shape[2], x.shape[3])], dim=1)
        out: Tensor = self.net(x)
        return out


class Coupling(nn.Module):
    """Channel-split coupling layer: 'affine' (RealNVP/Glow), 'additive' (NICE) or 'spline'.

    The first half of the channels conditions an elementwise bijection of the second.
    """

    def __init__(
        self,
        channels: int,
        kind: str,
        hidden: int,
        cond_channels: int,
        spline_bins: int = 8,
        spline_bound: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kind not in ("affine", "additive", "spline"):
            raise ValueError(f"unknown coupling {kind!r}")
        self.kind = kind
        self.c1 = channels // 2
        self.c2 = channels - self.c1
        self.bins = spline_bins
        self.bound = spline_bound
        per_dim = {"affine": 2, "additive": 1, "spline": 3 * spline_bins - 1}[kind]
        self.per_dim = per_dim
        self.net = CouplingNet(self.c1, self.c2 * per_dim, hidden, cond_channels, dropout)

    def _params(self, x1: Tensor, cond: Tensor | None) -> Tensor:
        """-> [B, c2, per_dim, H, W]."""
        p = self.net(x1, cond)
        return p.reshape(p.shape[0], self.c2, self.per_dim, p.shape[2], p.shape[3])

    def forward(self, x: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        """x -> (y, log|det| [B])."""
        x1, x2 = x[:, : self.c1], x[:, self.c1 :]
        p = self._params(x1, cond)
        if self.kind == "additive":
            y2 = x2 + p[:, :, 0]
            logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        elif self.kind == "affine":
            log_scale = log_sigmoid(p[:, :, 1] + 2.0)
            y2 = (x2 + p[:, :, 0]) * torch.exp(log_scale)
            logdet = sum_except_batch(log_scale)
        else:
            y2, ld = rq_spline(x2, p.permute(0, 1, 3, 4, 2), self.bins, self.bound, False)
            logdet = sum_except_batch(ld)
        return torch.cat([x1, y2], dim=1), logdet

    def inverse(self, y: Tensor, cond: Tensor | None) -> Tensor:
        """y -> x."""
        y1, y2 = y[:, : self.c1], y[:, self.c1 :]
        p = self._params(y1, cond)
        if self.kind == "additive":
            x2 = y2 - p[:, :, 0]
        elif self.kind == "affine":
            log_scale = log_sigmoid(p[:, :, 1] + 2.0)
            x2 = y2 * torch.exp(-log_scale) - p[:, :, 0]
        else:
            x2, _ = rq_spline(y2, p.permute(0, 1, 3, 4, 2), self.bins, self.bound, True)
        return torch.cat([y1, x2], dim=1)


def rq_spline(x: Tensor, params: Tensor, bins: int, bound: float, inverse: bool) -> tuple[Tensor, Tensor]:
    """Monotonic rational-quadratic spline on [-bound, bound], identity outside.

    Durkan et al. 2019, "Neural Spline Flows". `params` is [..., 3*bins-1]: unnormalised
    widths, heights and interior knot derivatives. Returns (y, log|dy/dx|), elementwise.
    Bin lookup is a sum of comparisons rather than `searchsorted`, which ONNX lacks.
    """
    min_size = 1e-3
    w_raw, h_raw, d_raw = params[..., :bins], params[..., bins : 2 * bins], params[..., 2 * bins :]
    widths = min_size + (1 - min_size * bins) * torch.softmax(w_raw, dim=-1)
    heights = min_size + (1 - min_size * bins) * torch.softmax(h_raw, dim=-1)
    # Boundary derivatives are 1 so that the spline joins the identity tails smoothly;
    # softplus(d + c) with c = log(e - 1) makes a zero-initialised net start at slope 1.
    ones = torch.ones_like(d_raw[..., :1])
    derivs = torch.cat([ones, min_size + F.softplus(d_raw + math.log(math.e - 1)), ones], dim=-1)
    zeros = torch.zeros_like(widths[..., :1])
    # The last knot is pinned to exactly +bound so rounding cannot open a gap at the edge.
    cum_w = torch.cat([zeros, torch.cumsum(widths, dim=-1)[..., :-1], ones], dim=-1)
    cum_h = torch.cat([zeros, torch.cumsum(heights, dim=-1)[..., :-1], ones], dim=-1)
    cum_w = 2 * bound * cum_w - bound
    cum_h = 2 * bound * cum_h - bound

    inside = (x > -bound) & (x < bound)
    xc = x.clamp(-bound + 1e-6, bound - 1e-6)
    knots = cum_h if inverse else cum_w
    # Index of the bin each value falls in: how many interior knots lie below it.
    idx = (xc[..., None] >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)

    x_lo = cum_w.gather(-1, idx)[..., 0]
    x_hi = cum_w.gather(-1, idx + 1)[..., 0]
    y_lo = cum_h.gather(-1, idx)[..., 0]
    y_hi = cum_h.gather(-1, idx + 1)[..., 0]
    d_lo = derivs.gather(-1, idx)[..., 0]
    d_hi = derivs.gather(-1, idx + 1)[..., 0]
    bw = x_hi - x_lo
    bh = y_hi - y_lo
    delta = bh / bw

    if not inverse:
        theta = (xc - x_lo) / bw
        t1m = theta * (1 - theta)
        denom = delta + (d_hi + d_lo - 2 * delta) * t1m
        y = y_lo + bh * (delta * theta * theta + d_lo * t1m) / denom
        deriv_num = delta * delta * (d_hi * theta**2 + 2 * delta * t1m + d_lo * (1 - theta) ** 2)
        logdet = torch.log(deriv_num) - 2 * torch.log(denom)
    else:
        yy = xc - y_lo
        a = bh * (delta - d_lo) + yy * (d_hi + d_lo - 2 * delta)
        b = bh * d_lo - yy * (d_hi + d_lo - 2 * delta)
        c = -delta * yy
        disc = (b * b - 4 * a * c).clamp_min(0.0)
        # In float32 a value can round into a neighbouring (tiny) bin; clamping keeps the
        # root at that bin's edge instead of off in the quadratic's other branch.
        theta = ((2 * c) / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
        y = theta * bw + x_lo
        t1m = theta * (1 - theta)
        denom = delta + (d_hi + d_lo - 2 * delta) * t1m
        deriv_num = delta * delta * (d_hi * theta**2 + 2 * delta * t1m + d_lo * (1 - theta) ** 2)
        logdet = -(torch.log(deriv_num) - 2 * torch.log(denom))
    y = torch.where(inside, y, x)
    logdet = torch.where(inside, logdet, torch.zeros_like(logdet))
    return y, logdet


def channel_groups(channels: int, groups: int) -> Tensor:
    """Group index of each of `channels` channels split into `groups` contiguous blocks."""
    return torch.arange(channels) * groups // channels


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel is multiplied by a fixed 0/1 mask (PixelCNN).

    The mask is a buffer so that it moves with the module; `to_plain_conv` bakes it into
    the weight for export, so the exported graph holds one weight tensor and no mask.
    """

    mask: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        mask: Tensor,
        dilation: int = 1,
    ) -> None:
        pad = (dilation * (kernel_size[0] // 2), dilation * (kernel_size[1] // 2))
        super().__init__(in_channels, out_channels, kernel_size, padding=pad, dilation=dilation)
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask shape {tuple(mask.shape)} != weight {tuple(self.weight.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x: Tensor) -> Tensor:
        """Masked convolution."""
        return self._conv_forward(x, self.weight * self.mask, self.bias)

    def to_plain_conv(self) -> nn.Conv2d:
        """An ordinary Conv2d with the mask baked into its weight."""
        conv = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,  # type: ignore[arg-type]
            padding=self.padding,  # type: ignore[arg-type]
            dilation=self.dilation,  # type: ignore[arg-type]
        )
        with torch.no_grad():
            conv.weight.copy_(self.weight * self.mask)
            assert conv.bias is not None
            assert self.bias is not None
            conv.bias.copy_(self.bias)
        return conv.to(self.weight.device)


def bake_masks(module: nn.Module) -> nn.Module:
    """Replace every MaskedConv2d below `module` (in place) by a plain conv with baked weights."""
    for name, child in module.named_children():
        if isinstance(child, MaskedConv2d):
            setattr(module, name, child.to_plain_conv())
        else:
            bake_masks(child)
    return module


def categorical_from_uniform(logits: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw from softmax(logits) over the last axis, one uniform per draw.

    logits [..., K], u [...] in [0, 1) -> int64 [...]. Deterministic given u, so the same
    noise gives the same draw in eager torch and in the service.
    """
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    idx = (cdf < u[..., None]).sum(dim=-1)
    return idx.clamp_max(logits.shape[-1] - 1)


def discretize(x: Tensor, levels: int) -> Tensor:
    """Continuous values in level units [0, K) -> integer levels 0..K-1."""
    return torch.floor(x).clamp(0, levels - 1).to(torch.long)


def logistic_mixture_logprobs(params: Tensor, levels: int) -> Tensor:
    """Discretized mixture of logistics (PixelCNN++) as log-probabilities over the K levels.

    params [..., 3M] = (mixture logits, means, log-scales) on the [-1, 1] scale where
    level k sits at 2k/(K-1) - 1 -> log P(k) [..., K]. Neighbouring levels share
    probability mass smoothly, which generalises better than K free logits on small
    data. Written with softplus instead of log(sigmoid) so it stays finite in ONNX Runtime.
    """
    M = params.shape[-1] // 3
    log_mix = torch.log_softmax(params[..., :M], dim=-1)[..., None]  # [..., M, 1]
    means = params[..., M : 2 * M][..., None]
    inv_s = torch.exp(-params[..., 2 * M :].clamp(min=-7.0))[..., None]
    centers = torch.linspace(-1.0, 1.0, levels, device=params.device, dtype=params.dtype)
    half = 1.0 / (levels - 1)
    plus = (centers + half - means) * inv_s  # [..., M, K]
    minus = (centers - half - means) * inv_s
    log_cdf_plus = -F.softplus(-plus)  # log σ(plus), for the lowest level
    log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - σ(minus)), for the highest
    delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    mid = (centers - means) * inv_s
    # Where the bin's mass underflows, fall back to density at the centre times bin width.
    log_mid = mid - 2 * F.softplus(mid) + torch.log(inv_s) + math.log(2 * half)
    log_delta = torch.where(delta > 1e-5, torch.log(delta.clamp(min=1e-12)), log_mid)
    k = torch.arange(levels, device=params.device)
    log_p = torch.where(
        k == 0, log_cdf_plus, torch.where(k == levels - 1, log_one_minus_cdf_minus, log_delta)
    )
    return torch.logsumexp(log_mix + log_p, dim=-2)

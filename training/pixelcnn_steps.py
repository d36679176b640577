"""Incremental graphs for fast PixelCNN sampling (Ramachandran et al. 2017).

The full-pass sampler runs the whole network once per pixel. But the vertical stack at
row r depends only on rows above r, and the horizontal stack at (r, j) only on row r's
columns ≤ j and on the vertical stack at row r; each layer's receptive field reaches
(k//2)·d rows up or columns left. So the state a step needs is small and can be cached:

- `row_step`, once per row: every layer's vertical input at row r, from the x rows just
  above and a cache of each layer's vertical inputs on the rows above; it returns those
  new rows (pushed onto the cache) and each layer's vertical-to-horizontal term at row r.
- `pixel_step`, once per pixel (and channel): every layer's horizontal input at (r, j),
  from the x columns just left, a cache of each layer's horizontal inputs on the columns
  to the left, and row r's vertical terms at column j; it returns the pixel's
  log-probabilities over the levels and the new column (pushed onto the cache).

Both use the full model's weights, sliced to the taps the masks keep, and add the same
biases in the same order, so their outputs equal the `logits` graph's at that position up
to float rounding. Caches start at zeros: the zero padding of the full pass's convolutions.
Position (row, column) is a per-row input, so calls from requests at different positions
batch together. Layout: layer index m·L + l for member m, layer l.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.manifest import TensorSpec

from .families.layers import logistic_mixture_logprobs
from .families.pixelcnn import GatedLayer, PixelCNNModel, PixelCNNTrunk
from .graphdef import GraphDef


class _Bound(nn.Module):
    """A step module taking exactly the graph's inputs: without y for an unconditional
    model (the step gets None in its place)."""

    def __init__(self, step: nn.Module, conditional: bool) -> None:
        super().__init__()
        self.step, self.conditional = step, conditional

    def forward(self, *inputs: Tensor) -> Any:
        if self.conditional:
            return self.step(*inputs)
        return self.step(inputs[0], None, *inputs[1:])


def _weight(conv: nn.Conv2d) -> Tensor:
    """The kernel as the full pass applies it (mask applied, if not baked in yet)."""
    mask = getattr(conv, "mask", None)
    return conv.weight if mask is None else conv.weight * mask


def _linear(conv: nn.Conv2d, taps: Tensor) -> Tensor:
    """A 1×k convolution at one output column, as a matrix product (at one pixel a Conv
    node costs ORT several times a MatMul): taps [B, in, t] are the kernel's t leftmost
    taps' inputs (the rest are masked) -> [B, out]."""
    t = taps.shape[2]
    w = _weight(conv)[:, :, 0, :t].reshape(conv.out_channels, -1)  # [out, in·t], in-major
    return F.linear(taps.flatten(1), w, conv.bias)


def _trunks(model: PixelCNNModel) -> list[tuple[PixelCNNTrunk, list[GatedLayer]]]:
    """The ensemble's members with their gated layers, typed."""
    out = []
    for trunk in model.members:
        assert isinstance(trunk, PixelCNNTrunk)
        out.append((trunk, [layer for layer in trunk.layers if isinstance(layer, GatedLayer)]))
    return out


def _conv(module: nn.Module) -> nn.Conv2d:
    assert isinstance(module, nn.Conv2d)
    return module


def _dilation(conv: nn.Conv2d) -> int:
    return int(conv.dilation[0])


def cache_rows(model: PixelCNNModel) -> int:
    """Rows of vertical inputs each layer keeps: the deepest reach up, (k//2)·d (≥ 1)."""
    k = model.cfg.kernel
    return max(1, *((k // 2) * d for d in model.cfg.dilations))


def x_rows(model: PixelCNNModel) -> int:
    """Rows of x above row r that the first vertical convolution sees (≥ 1)."""
    return max(1, model.cfg.kernel // 2)


def layer_count(model: PixelCNNModel) -> int:
    """Cached layers across the ensemble: members × layers."""
    return len(model.members) * model.cfg.layers


def _biased(layer: GatedLayer, feat: Tensor, half: slice, y: Tensor | None, pos: Tensor | None) -> Tensor:
    """feat [B, 2ch, ...] plus the layer's transform-0, label and position biases for one
    half of its 4ch bias vector, added in GatedLayer.forward's order (same rounding)."""
    tail = (None,) * (feat.dim() - 2)
    if layer.aug is not None:
        feat = feat + layer.aug.weight[0][None, half][(..., *tail)]
    if layer.cond is not None and y is not None:
        feat = feat + layer.cond(y)[:, half][(..., *tail)]
    if pos is not None:
        feat = feat + pos
    return feat


class _Encoder(nn.Module):
    def __init__(self, model: PixelCNNModel) -> None:
        super().__init__()
        self.onehot = model.cfg.onehot_input
        self.levels = model.spec.levels

    def forward(self, x: Tensor) -> Tensor:
        """Levels [B, C, h, w] -> the trunk's input [B, C', h, w], as PixelCNNModel._encode."""
        if self.onehot:
            codes = F.one_hot(x.to(torch.long), self.levels).to(torch.float32)
            B, C, h, w, K = codes.shape
            return codes.permute(0, 1, 4, 2, 3).reshape(B, C * K, h, w)
        return x.to(torch.float32) * (2.0 / (self.levels - 1)) - 1.0


class RowStep(nn.Module):
    """(x_above, y, v_cache, row) -> (v_rows, vh): the vertical stack at row r."""

    def __init__(self, model: PixelCNNModel) -> None:
        super().__init__()
        self.model = model
        self.encode = _Encoder(model)
        self.conditional = model.conditional
        self.A = x_rows(model)
        self.R = cache_rows(model)
        self.H = model.spec.shape[1]

    def forward(
        self, x_above: Tensor, y: Tensor | None, v_cache: Tensor, row: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x_above [B, C, A, W] (rows r-A..r-1), v_cache [B, ML, ch, R, W], row [B] ->
        v_rows [B, ML, ch, W] (each layer's vertical input at r), vh [B, ML, 2ch, W]."""
        A = x_above.shape[2]
        # Rows above the image are the full pass's zero padding, in encoded space.
        above = row[:, None] - A + torch.arange(A)[None, :]  # [B, A]
        xs = self.encode(x_above) * (above >= 0).to(torch.float32)[:, None, :, None]
        yy = y if self.conditional else None
        v_rows: list[Tensor] = []
        vh: list[Tensor] = []
        index = 0
        for trunk, layers in _trunks(self.model):
            v = self._first(trunk, xs)  # [B, ch, 1, W]
            for layer in layers:
                v_rows.append(v[:, :, 0])
                cached = v_cache[:, index]  # [B, ch, R, W]
                v, h_term = self._layer(layer, cached, v, yy, row)
                vh.append(h_term)
                index += 1
        return torch.stack(v_rows, dim=1), torch.stack(vh, dim=1)

    def _first(self, trunk: PixelCNNTrunk, xs: Tensor) -> Tensor:
        """v_in at row r: its kernel sees only rows above (type A), so the centre row is 0."""
        conv = _conv(trunk.v_in)
        k = conv.kernel_size[0]
        window = torch.cat([xs[:, :, xs.shape[2] - k // 2 :], torch.zeros_like(xs[:, :, :1])], dim=2)
        w = _weight(conv)[:, :, : k // 2 + 1]
        return F.conv2d(window, w, conv.bias, padding=(0, k // 2))

    def _layer(
        self, layer: GatedLayer, cached: Tensor, v: Tensor, y: Tensor | None, row: Tensor
    ) -> tuple[Tensor, Tensor]:
        conv = _conv(layer.v_conv)
        k, d = conv.kernel_size[0], _dilation(conv)
        reach = (k // 2) * d
        window = torch.cat([cached[:, :, self.R - reach :], v], dim=2)  # [B, ch, reach+1, W]
        w = _weight(conv)[:, :, : k // 2 + 1]
        v_feat = F.conv2d(window, w, conv.bias, padding=(0, reach), dilation=d)  # [B, 2ch, 1, W]
        h_term = layer.v_to_h(v_feat)[:, :, 0]  # [B, 2ch, W]
        ch = layer.ch
        pos = None if layer.pos is None else layer.pos[0, : 2 * ch].permute(1, 0, 2)[row][:, :, None]
        v_feat = _biased(layer, v_feat, slice(0, 2 * ch), y, pos)  # [B, 2ch, 1, W]
        return torch.tanh(v_feat[:, :ch]) * torch.sigmoid(v_feat[:, ch:]), h_term


class PixelStep(nn.Module):
    """(x_left, y, h_cache, vh, pos) -> (logp, h_col): the horizontal stack at (r, j)."""

    def __init__(self, model: PixelCNNModel) -> None:
        super().__init__()
        self.model = model
        self.encode = _Encoder(model)
        self.conditional = model.conditional
        self.R = cache_rows(model)
        self.C, self.W = model.spec.shape[0], model.spec.shape[2]

    def forward(
        self, x_left: Tensor, y: Tensor | None, h_cache: Tensor, vh: Tensor, pos: Tensor
    ) -> tuple[Tensor, Tensor]:
        """x_left [B, C, 1, A+1] (columns j-A..j), h_cache [B, ML, ch, R], vh [B, ML, 2ch],
        pos [B, 2] (row, column) -> logp [B, C, K], h_col [B, ML, ch] (each layer's
        horizontal input at column j)."""
        B, _, _, A1 = x_left.shape
        cols = pos[:, 1:2] - (A1 - 1) + torch.arange(A1)[None, :]  # [B, A+1]
        xs = self.encode(x_left) * (cols >= 0).to(torch.float32)[:, None, None, :]
        yy = y if self.conditional else None
        flat = pos[:, 0] * self.W + pos[:, 1]  # [B]
        h_cols: list[Tensor] = []
        outs: list[Tensor] = []
        index = 0
        for trunk, layers in _trunks(self.model):
            conv = _conv(trunk.h_in)
            taps = conv.kernel_size[1] // 2 + 1
            h = _linear(conv, xs[:, :, 0, A1 - taps :])  # [B, ch]
            for layer in layers:
                h_cols.append(h)
                h = self._layer(layer, h_cache[:, index], h, vh[:, index], yy, flat)
                index += 1
            out = h  # the head: ELU, 1×1, ELU, 1×1
            for module in trunk.head:
                out = F.elu(out) if isinstance(module, nn.ELU) else _linear(_conv(module), out[:, :, None])
            # out [B, C*P]
            outs.append(self._log_probs(out.reshape(B, self.C, -1)))
        logp = outs[0] if len(outs) == 1 else torch.logsumexp(torch.stack(outs), 0) - math.log(len(outs))
        return logp, torch.stack(h_cols, dim=1)

    def _layer(
        self, layer: GatedLayer, cached: Tensor, h: Tensor, vh: Tensor, y: Tensor | None, flat: Tensor
    ) -> Tensor:
        conv = _conv(layer.h_conv)
        k, d = conv.kernel_size[1], _dilation(conv)
        reach = (k // 2) * d
        window = torch.cat([cached[:, :, self.R - reach :], h[:, :, None]], dim=2)  # [B, ch, reach+1]
        h_feat = _linear(conv, window[:, :, ::d]) + vh  # [B, 2ch]
        ch = layer.ch
        pos = None if layer.pos is None else layer.pos[0, 2 * ch :].flatten(1)[:, flat].T  # [B, 2ch]
        h_feat = _biased(layer, h_feat, slice(2 * ch, 4 * ch), y, pos)
        gated = torch.tanh(h_feat[:, :ch]) * torch.sigmoid(h_feat[:, ch:])
        return _linear(_conv(layer.h_out), gated[:, :, None]) + h

    def _log_probs(self, out: Tensor) -> Tensor:
        if self.model.cfg.output == "logistic_mixture":
            return logistic_mixture_logprobs(out, self.model.spec.levels)
        return torch.log_softmax(out, dim=-1)


def pixelcnn_step_graphs(model: PixelCNNModel) -> list[GraphDef]:
    """The `row_step` and `pixel_step` graphs of the fast sampler (contract: DESIGN.md)."""
    C, H, W = model.spec.shape
    K = model.spec.levels
    A, R, L, ch = x_rows(model), cache_rows(model), layer_count(model), model.cfg.channels
    cond = model.conditional
    y = [TensorSpec(name="y", dtype="int64", shape=["batch"])] if cond else []

    def f32(name: str, *shape: int | str) -> TensorSpec:
        return TensorSpec(name=name, dtype="float32", shape=list(shape))

    def levels(gen: torch.Generator, *shape: int) -> Tensor:
        return torch.randint(0, K, shape, generator=gen).to(torch.float32)

    def labels(batch: int, yy: Tensor | None) -> tuple[Tensor, ...]:
        return (yy[:batch].to(torch.long),) if cond and yy is not None else ()

    def row_example(batch: int, x: Tensor, yy: Tensor | None, gen: torch.Generator) -> tuple[Tensor, ...]:
        row = torch.randint(0, H, (batch,), generator=gen)
        return (
            levels(gen, batch, C, A, W),
            *labels(batch, yy),
            torch.randn((batch, L, ch, R, W), generator=gen),
            row,
        )

    def pixel_example(batch: int, x: Tensor, yy: Tensor | None, gen: torch.Generator) -> tuple[Tensor, ...]:
        pos = torch.stack(
            [torch.randint(0, H, (batch,), generator=gen), torch.randint(0, W, (batch,), generator=gen)], 1
        )
        return (
            levels(gen, batch, C, 1, A + 1),
            *labels(batch, yy),
            torch.randn((batch, L, ch, R), generator=gen),
            torch.randn((batch, L, 2 * ch), generator=gen),
            pos,
        )

    row, pixel = RowStep(model), PixelStep(model)
    return [
        GraphDef(
            "row_step",
            "fast sampling, once per row r: each layer's vertical input at r and its term for "
            "the horizontal stack, from x rows r-A..r-1 and a cache of the R rows above",
            _Bound(row, cond),
            [
                f32("x_above", "batch", C, A, W),
                *y,
                f32("v_cache", "batch", L, ch, R, W),
                TensorSpec(name="row", dtype="int64", shape=["batch"]),
            ],
            [f32("v_rows", "batch", L, ch, W), f32("vh", "batch", L, 2 * ch, W)],
            example=row_example,
        ),
        GraphDef(
            "pixel_step",
            "fast sampling, once per pixel (r, j): log-probabilities over the K levels at "
            "(r, j) and each layer's horizontal input at j, from x columns j-A..j, a cache of "
            "the R columns to the left and row r's vertical terms at j",
            _Bound(pixel, cond),
            [
                f32("x_left", "batch", C, 1, A + 1),
                *y,
                f32("h_cache", "batch", L, ch, R),
                f32("vh", "batch", L, 2 * ch),
                TensorSpec(name="pos", dtype="int64", shape=["batch", 2]),
            ],
            [f32("logp", "batch", C, K), f32("h_col", "batch", L, ch)],
            example=pixel_example,
        ),
    ]

"""Distribution augmentation (Jun et al. 2020, "Distribution Augmentation for Generative Modeling").

Train on transformed images *conditioned on the transform*, evaluate and export
conditioned on the identity. The identity-conditional model is an exact model of the
original data, and the transformed copies share what the data have in common (strokes,
edges, textures), which on small data sets generalises far better than more epochs.
The transforms here are the symmetries of the square: flips, rotations, transposes.
"""

from __future__ import annotations

import torch
from torch import Tensor


def transform_count(height: int, width: int) -> int:
    """8 dihedral transforms for square images, 4 (flips and 180° turn) otherwise."""
    return 8 if height == width else 4


def dihedral(x: Tensor, t: Tensor) -> Tensor:
    """Apply transform t[i] in [0, 8) to image x[i] ([B, C, H, W]); t = 0 is the identity.

    Bit 0 flips columns, bit 1 flips rows, bit 2 transposes (square images only).
    """
    out = x.clone()
    for k in torch.unique(t).tolist():
        if k == 0:
            continue
        idx = (t == k).nonzero(as_tuple=True)[0]
        img = x[idx]
        if k & 1:
            img = img.flip(-1)
        if k & 2:
            img = img.flip(-2)
        if k & 4:
            img = img.transpose(-1, -2)
        out[idx] = img
    return out


def draw_transforms(batch: int, count: int, probability: float, generator: torch.Generator) -> Tensor:
    """Per example: the identity with probability 1 - p, else a uniformly chosen other transform."""
    other = torch.randint(1, count, (batch,), generator=generator)
    use = torch.rand(batch, generator=generator) < probability
    return torch.where(use, other, torch.zeros_like(other))

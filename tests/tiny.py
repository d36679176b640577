"""Tiny models and data shared by the tests (they train in well under a second)."""

from __future__ import annotations

from typing import Any

import torch

from service.manifest import DatasetSpec
from training.families import GenerativeModel, build_model

SPEC = DatasetSpec(name="toy", shape=(1, 4, 4), levels=5, label_names=["a", "b", "c"])
TINY: dict[str, dict[str, Any]] = {
    "flow": {"levels": 2, "steps_per_level": 2, "hidden": 8},
    "vae": {"latent": 3, "channels": 4, "hidden": 16, "kl_warmup_steps": 2},
    "gan": {"latent": 4, "g_channels": 4, "d_channels": 4},
    "pixelcnn": {"channels": 6, "layers": 2},
    "diffusion": {"channels": 8, "embedding": 8, "sample_steps": 3},
}
CASES = [(f, c) for f in TINY for c in (True, False)]


def make(
    family: str, conditional: bool, seed: int = 0, spec: DatasetSpec = SPEC, **cfg: Any
) -> GenerativeModel:
    torch.manual_seed(seed)
    return build_model(family, spec, conditional, {**TINY[family], **cfg})


def batch(n: int = 8, seed: int = 0, spec: DatasetSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, spec.levels, (n, *spec.shape), generator=g)
    y = torch.randint(0, max(1, spec.num_classes), (n,), generator=g)
    return x, y


def steps(model: GenerativeModel, n: int, seed: int = 0) -> None:
    """A few optimisation steps (initialises ActNorm, moves zero-initialised layers)."""
    opts = model.make_optimizers(1e-2, 0.0)
    torch.manual_seed(seed)
    model.train()
    for i in range(n):
        x, y = batch(seed=i)
        model.train_step(x, y if model.conditional else None, opts, i)
    model.eval()

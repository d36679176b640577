"""The independent classifier that judges samples: label accuracy and a feature space for FID.

It is trained on the training split only, never sees generated data, and is cached per
(dataset, split seed) so that every family is judged by the same network.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from service.manifest import DatasetSpec

from .data import DataError, ImageDataset, Splits
from .runtime import TRAINING_THREADS, configure_threads, seed_everything


class Classifier(nn.Module):
    """Small CNN: two conv blocks with max-pooling, a 128-unit feature layer, a linear head."""

    def __init__(self, spec: DatasetSpec, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.spec = spec
        C, H, W = spec.shape
        self.body = nn.Sequential(
            nn.Conv2d(C, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (H // 4) * (W // 4), feature_dim),
            nn.ReLU(),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, spec.num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Integer images [B,C,H,W] -> features [B, 128] (the space Fréchet distances use)."""
        xs = x.to(torch.float32) / (self.spec.levels - 1)
        return self.body(xs)

    def forward(self, x: Tensor) -> Tensor:
        """Integer images -> class logits [B, L]."""
        return self.head(self.dropout(self.features(x)))

    @torch.no_grad()
    def predict(self, x: Tensor, batch: int = 512) -> Tensor:
        """Predicted labels [B]."""
        self.eval()
        return torch.cat([self(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])

    @torch.no_grad()
    def embed(self, x: Tensor, batch: int = 512) -> np.ndarray:
        """Features as a float64 array [B, F] (for Fréchet distances)."""
        self.eval()
        feats = [self.features(x[i : i + batch]) for i in range(0, len(x), batch)]
        return torch.cat(feats).double().cpu().numpy()


def _shifted(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random ±1-pixel translation of a batch, filling the uncovered edge with zeros."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    out = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if dy:
        out[:, :, 0 if dy > 0 else -1] = 0
    if dx:
        out[:, :, :, 0 if dx > 0 else -1] = 0
    return out


def _noisy(x: Tensor, gen: torch.Generator, levels: int) -> Tensor:
    """Half the batch gets rounded Gaussian level noise (σ = 1.5 levels per 16): the judge
    should recognise a digit through the pixel noise that likelihood models' samples carry."""
    sigma = 1.5 * (levels - 1) / 16
    noise = torch.round(torch.randn(x.shape, generator=gen) * sigma).to(x.dtype)
    pick = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.dtype)[:, None, None, None]
    return (x + pick * noise).clamp(0, levels - 1)


def train_classifier(
    data: ImageDataset, splits: Splits, seed: int = 0, epochs: int = 60, device: str = "cpu"
) -> tuple[Classifier, dict[str, float]]:
    """Train on the training split, select the epoch by validation accuracy."""
    if data.y is None:
        raise DataError(
            f"{data.spec.name!r} has no labels: the sample-quality judge (a classifier of the "
            "labels) cannot be trained, and GANs are selected by it"
        )
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(data.spec).to(device)
    x = torch.as_tensor(data.x, device=device)
    y = torch.as_tensor(data.y, device=device)
    tr, va = torch.as_tensor(splits.train), torch.as_tensor(splits.validation)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    best_acc, best_state = -1.0, {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), 64):
            idx = order[i : i + 64]
            xb = _noisy(_shifted(x[idx], gen), gen, data.spec.levels)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        acc = float((model.predict(x[va]) == y[va]).float().mean())
        if acc > best_acc:
            best_acc, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    te = torch.as_tensor(splits.test)
    test_acc = float((model.predict(x[te]) == y[te]).float().mean())
    return model, {"validation_accuracy": best_acc, "test_accuracy": test_acc}


def _cache_key(data: ImageDataset, splits: Splits, seed: int, epochs: int) -> str:
    h = hashlib.sha256()
    h.update(data.spec.model_dump_json().encode())
    h.update(np.ascontiguousarray(data.x).tobytes())
    h.update(splits.train.tobytes())
    h.update(f"{seed}/{epochs}/threads={TRAINING_THREADS}".encode())  # threads change the weights
    h.update(Path(__file__).read_bytes())  # a changed judge is a different judge
    return h.hexdigest()[:16]


def load_or_train_classifier(
    data: ImageDataset,
    splits: Splits,
    cache_dir: Path | None,
    seed: int = 0,
    device: str = "cpu",
    epochs: int = 60,
) -> tuple[Classifier, dict[str, float]]:
    """The judge for this dataset and split, from `cache_dir` when it was trained before.

    Training it sets torch to TRAINING_THREADS (part of the cache key): the judge is the
    same on every machine, and so are the figures it gives."""
    key = _cache_key(data, splits, seed, epochs)
    if cache_dir is not None:
        weights = cache_dir / f"classifier-{data.spec.name}-{key}.pt"
        info = weights.with_suffix(".json")
        if weights.exists() and info.exists():
            model = Classifier(data.spec).to(device)
            try:
                model.load_state_dict(torch.load(weights, map_location=device, weights_only=True))
                cached: dict[str, float] = json.loads(info.read_text())
                model.eval()
                return model, cached
            except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError):
                pass  # a damaged cache entry (e.g. a killed write): train it again
    configure_threads()
    model, metrics = train_classifier(data, splits, seed=seed, epochs=epochs, device=device)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        # Written aside and renamed into place, weights before the info that marks them valid.
        info.unlink(missing_ok=True)
        tmp = cache_dir / f".{weights.name}.{uuid.uuid4().hex}"
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, weights)
        tmp = cache_dir / f".{info.name}.{uuid.uuid4().hex}"
        tmp.write_text(json.dumps(metrics))
        os.replace(tmp, info)
    return model, metrics

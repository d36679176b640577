"""Sample quality as judged by the independent classifier: label accuracy and Fréchet distance."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from .classifier import Classifier
from .families import GenerativeModel


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, F] and [M, F]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # near-singular products are handled just below
        warnings.simplefilter("ignore")
        root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():
        # Near-singular product: regularise both covariances slightly and retry.
        eps = 1e-6 * np.eye(len(cov_a))
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def balanced_labels(n_classes: int, per_class: int) -> Tensor:
    """[0,0,...,1,1,...]: `per_class` of each label."""
    return torch.arange(n_classes).repeat_interleave(per_class)


Sampler = Callable[[int, Tensor | None, int, float], Tensor]
"""(n, labels [n] or None, seed, temperature) -> integer samples [n, C, H, W]; e.g. the served graphs."""

# Families whose sampler scales Gaussian latent noise, where a temperature below 1 is the
# usual fidelity/diversity knob (Glow; the truncation trick in GANs). PixelCNN's softmax
# temperature is left at 1: its samples are already the exact model's, and trying a grid
# would cost the build five more autoregressive sampling passes.
LATENT_TEMPERATURE_FAMILIES = ("flow", "vae", "gan")
TEMPERATURE_GRID = (1.0, 0.95, 0.9, 0.85, 0.8)


@torch.no_grad()
def draw_samples(
    model: GenerativeModel,
    labels: Tensor | None,
    n: int,
    seed: int,
    temperature: float = 1.0,
    batch: int = 500,
    sampler: Sampler | None = None,
) -> Tensor:
    """`n` samples (with `labels` [n] for a conditional model), in batches, seeded.

    With a `sampler` (for example the exported graphs behind the service's engine) the
    samples come from it instead of the eager model.
    """
    if sampler is not None:
        return torch.cat(
            [
                sampler(
                    min(batch, n - start),
                    None if labels is None else labels[start : start + batch],
                    seed + start,
                    temperature,
                )
                for start in range(0, n, batch)
            ]
        )
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        y = None if labels is None else labels[start : start + m].to(device)
        out.append(model.sample(m, y, gen, temperature).cpu())
    return torch.cat(out)


def sample_quality(
    model: GenerativeModel,
    classifier: Classifier,
    real: Tensor,
    per_class: int = 100,
    n_unconditional: int = 1000,
    seed: int = 1234,
    temperature: float = 1.0,
    sampler: Sampler | None = None,
) -> dict[str, float]:
    """Accuracy of the classifier on conditional samples (the requested label) and the
    Fréchet distance between real and generated images in the classifier's feature space."""
    if model.conditional:
        labels = balanced_labels(model.num_classes, per_class)
        samples = draw_samples(model, labels, len(labels), seed, temperature, sampler=sampler)
    else:
        labels = None
        samples = draw_samples(model, None, n_unconditional, seed, temperature, sampler=sampler)
    device = next(classifier.parameters()).device
    feats_fake = classifier.embed(samples.to(device))
    feats_real = classifier.embed(real.to(device))
    result = {"fid": frechet_distance(feats_real, feats_fake), "samples": float(len(samples))}
    if labels is not None:
        pred = classifier.predict(samples.to(device)).cpu()
        result["label_accuracy"] = float((pred == labels).float().mean())
    return result


def select_temperature(
    model: GenerativeModel,
    classifier: Classifier,
    validation: Tensor,
    grid: tuple[float, ...] = TEMPERATURE_GRID,
    per_class: int = 100,
    n_unconditional: int = 1000,
    seed: int = 777,
    sampler: Sampler | None = None,
) -> tuple[float, dict[str, float]]:
    """The grid temperature whose samples lie closest to the validation images.

    Closeness is the Fréchet distance in the judge's feature space, so the choice uses
    held-out data and never the test split. Every temperature scales the same noise
    (common random numbers), so the comparison is not swamped by sampling noise.
    Returns (temperature, {temperature: distance}).
    """
    device = next(classifier.parameters()).device
    feats_real = classifier.embed(validation.to(device))
    labels = balanced_labels(model.num_classes, per_class) if model.conditional else None
    n = n_unconditional if labels is None else len(labels)
    distances: dict[str, float] = {}
    for t in grid:
        samples = draw_samples(model, labels, n, seed, t, sampler=sampler)
        distances[f"{t:g}"] = frechet_distance(feats_real, classifier.embed(samples.to(device)))
    best = min(grid, key=lambda t: distances[f"{t:g}"])
    return best, distances

"""Sample quality as judged by the independent classifier: label accuracy and Fréchet distance."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SamplingChoice:
    """A sampler setting that a request may leave out, so the build picks its default:
    the temperature, and for a diffusion model the steps and the guidance weight."""

    temperature: float = 1.0
    steps: int | None = None
    guidance: float | None = None

    def key(self) -> str:
        """How reports name it: "0.9", or "steps 25, guidance 1" for a diffusion model."""
        if self.steps is None and self.guidance is None:
            return f"{self.temperature:g}"
        parts = [] if self.temperature == 1.0 else [f"temperature {self.temperature:g}"]
        if self.steps is not None:
            parts.append(f"steps {self.steps}")
        if self.guidance is not None:
            parts.append(f"guidance {self.guidance:g}")
        return ", ".join(parts)


DEFAULT_CHOICE = SamplingChoice()

Sampler = Callable[[int, Tensor | None, int, SamplingChoice], Tensor]
"""(n, labels [n] or None, seed, choice) -> integer samples [n, C, H, W]; e.g. the served graphs."""

# Families whose sampler scales Gaussian latent noise, where a temperature below 1 is the
# usual fidelity/diversity knob (Glow; the truncation trick in GANs). PixelCNN's softmax
# temperature is left at 1: its samples are already the exact model's, and trying a grid
# would cost the build five more autoregressive sampling passes.
LATENT_TEMPERATURE_FAMILIES = ("flow", "vae", "gan")
TEMPERATURE_GRID = (1.0, 0.95, 0.9, 0.85, 0.8)

# Diffusion: classifier-free guidance trades diversity for fidelity like a temperature;
# its weight is chosen at a fixed step count, then the fewest steps whose samples are
# within STEPS_TOLERANCE of the best step count's Fréchet distance (more steps cost
# proportionally more, and past a few tens the deterministic sampler barely changes).
GUIDANCE_GRID = (0.0, 0.5, 1.0, 2.0)
GUIDANCE_STEPS = 25
STEPS_GRID = (10, 25, 50, 100)
STEPS_TOLERANCE = 1.05
# Samples per class for the diffusion choice: each candidate is a whole sampling run of
# up to 100 denoiser passes (two with guidance), so the grid uses half the report's count.
DIFFUSION_SELECTION_PER_CLASS = 50


@torch.no_grad()
def draw_samples(
    model: GenerativeModel,
    labels: Tensor | None,
    n: int,
    seed: int,
    choice: SamplingChoice = DEFAULT_CHOICE,
    batch: int = 500,
    sampler: Sampler | None = None,
) -> Tensor:
    """`n` samples (with `labels` [n] for a conditional model), in batches, seeded.

    With a `sampler` (for example the exported graphs behind the service's engine) the
    samples come from it instead of the eager model, which knows only the temperature.
    """
    if sampler is not None:
        return torch.cat(
            [
                sampler(
                    min(batch, n - start),
                    None if labels is None else labels[start : start + batch],
                    seed + start,
                    choice,
                )
                for start in range(0, n, batch)
            ]
        )
    if choice.steps is not None or choice.guidance is not None:
        raise ValueError("steps and guidance are the served sampler's settings: pass a sampler")
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        m = min(batch, n - start)
        y = None if labels is None else labels[start : start + m].to(device)
        out.append(model.sample(m, y, gen, choice.temperature).cpu())
    return torch.cat(out)


def sample_quality(
    model: GenerativeModel,
    classifier: Classifier,
    real: Tensor,
    per_class: int = 100,
    n_unconditional: int = 1000,
    seed: int = 1234,
    choice: SamplingChoice = DEFAULT_CHOICE,
    sampler: Sampler | None = None,
) -> dict[str, float]:
    """Accuracy of the classifier on conditional samples (the requested label) and the
    Fréchet distance between real and generated images in the classifier's feature space."""
    if model.conditional:
        labels = balanced_labels(model.num_classes, per_class)
        samples = draw_samples(model, labels, len(labels), seed, choice, sampler=sampler)
    else:
        labels = None
        samples = draw_samples(model, None, n_unconditional, seed, choice, sampler=sampler)
    device = next(classifier.parameters()).device
    feats_fake = classifier.embed(samples.to(device))
    feats_real = classifier.embed(real.to(device))
    result = {"fid": frechet_distance(feats_real, feats_fake), "samples": float(len(samples))}
    if labels is not None:
        pred = classifier.predict(samples.to(device)).cpu()
        result["label_accuracy"] = float((pred == labels).float().mean())
    return result


def validation_distances(
    model: GenerativeModel,
    classifier: Classifier,
    validation: Tensor,
    choices: Sequence[SamplingChoice],
    per_class: int = 100,
    n_unconditional: int = 1000,
    seed: int = 777,
    sampler: Sampler | None = None,
) -> dict[SamplingChoice, float]:
    """The Fréchet distance to the validation images of each choice's samples.

    Every choice transforms the same noise (common random numbers: the same seed), so the
    comparison is not swamped by sampling noise. Only held-out data is used, never the
    test split.
    """
    device = next(classifier.parameters()).device
    feats_real = classifier.embed(validation.to(device))
    labels = balanced_labels(model.num_classes, per_class) if model.conditional else None
    n = n_unconditional if labels is None else len(labels)
    distances: dict[SamplingChoice, float] = {}
    for choice in choices:
        samples = draw_samples(model, labels, n, seed, choice, sampler=sampler)
        distances[choice] = frechet_distance(feats_real, classifier.embed(samples.to(device)))
    return distances


@dataclass
class SamplingSelection:
    """The default a request without the setting gets, the candidates' validation
    distances (by `SamplingChoice.key`), and the rule that chose."""

    choice: SamplingChoice
    validation_fid: dict[str, float]
    selected_by: str


def select_temperature(
    model: GenerativeModel,
    classifier: Classifier,
    validation: Tensor,
    per_class: int = 100,
    seed: int = 777,
    sampler: Sampler | None = None,
    grid: tuple[float, ...] = TEMPERATURE_GRID,
) -> SamplingSelection:
    """The grid temperature whose samples lie closest to the validation images."""
    distances = validation_distances(
        model,
        classifier,
        validation,
        [SamplingChoice(t) for t in grid],
        per_class,
        seed=seed,
        sampler=sampler,
    )
    best = min(distances, key=distances.__getitem__)
    return SamplingSelection(
        best,
        {c.key(): d for c, d in distances.items()},
        "lowest Fréchet distance to the validation split in the judge's feature space",
    )


def select_diffusion_sampling(
    model: GenerativeModel,
    classifier: Classifier,
    validation: Tensor,
    per_class: int = 100,
    seed: int = 777,
    sampler: Sampler | None = None,
) -> SamplingSelection | None:
    """Guidance, then steps, of the served deterministic sampler, on validation data.

    The guidance weight with the lowest Fréchet distance at GUIDANCE_STEPS steps (none for
    an unconditional model); then, at that weight, the fewest steps whose distance is
    within STEPS_TOLERANCE of the best step count's. None without the served `sampler`
    (the eager model samples with its config's defaults).
    """
    if sampler is None:
        return None
    per_class = min(per_class, DIFFUSION_SELECTION_PER_CLASS)
    grid = GUIDANCE_GRID if model.conditional else (0.0,)
    by_guidance = validation_distances(
        model,
        classifier,
        validation,
        [SamplingChoice(steps=GUIDANCE_STEPS, guidance=g) for g in grid],
        per_class,
        seed=seed,
        sampler=sampler,
    )
    guidance = min(by_guidance, key=by_guidance.__getitem__).guidance
    more = [SamplingChoice(steps=s, guidance=guidance) for s in STEPS_GRID if s != GUIDANCE_STEPS]
    by_steps = {
        **{c: d for c, d in by_guidance.items() if c.guidance == guidance},
        **validation_distances(model, classifier, validation, more, per_class, seed=seed, sampler=sampler),
    }
    best = min(by_steps.values())
    near = best + (STEPS_TOLERANCE - 1.0) * max(best, 0.0)  # a distance may round below 0
    fewest = min((c for c, d in by_steps.items() if d <= near), key=lambda c: c.steps or 0)
    distances = {**by_guidance, **by_steps}
    return SamplingSelection(
        fewest,
        {c.key(): d for c, d in distances.items()},
        f"guidance: lowest Fréchet distance to the validation split (judge's features) at "
        f"{GUIDANCE_STEPS} steps; steps: the fewest within {STEPS_TOLERANCE:g}x of the best "
        f"of {list(STEPS_GRID)} at that guidance",
    )


Selector = Callable[..., SamplingSelection | None]

# The families whose sampling default the build chooses on validation data, and how.
SELECTORS: dict[str, Selector] = {
    **dict.fromkeys(LATENT_TEMPERATURE_FAMILIES, select_temperature),
    "diffusion": select_diffusion_sampling,
}

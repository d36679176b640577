"""Held-out evaluation: test log-likelihoods, classical baselines, and sample quality.

All likelihoods are in nats per example of the discrete data and bits per dimension,
`bpd = -log P(x) / (D ln 2)`; each row says which estimator produced it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.table import Table

from .baselines import evaluate_baselines
from .classifier import Classifier
from .data import ImageDataset, Splits
from .families import GenerativeModel
from .quality import (
    SELECTORS,
    Sampler,
    SamplingChoice,
    frechet_distance,
    sample_quality,
)


@dataclass(frozen=True)
class EvalSettings:
    """How hard evaluation looks. The defaults are the reported ones; tests use less."""

    # K ≥ 256 importance samples for VAEs (the field's usual reporting), and as many
    # uniform dequantization draws, importance-weighted, for flows.
    # Diffusion: time samples of the bound's diffusion term (stratified), for each row.
    samples: dict[str, int] = field(
        default_factory=lambda: {"vae": 512, "flow": 512, "pixelcnn": 1, "diffusion": 256}
    )
    marginal_samples: dict[str, int] = field(
        default_factory=lambda: {"vae": 64, "flow": 4, "pixelcnn": 1, "diffusion": 32}
    )
    quality_per_class: int = 100
    classifier_epochs: int = 60
    # Pick the sampling defaults on validation FID: flow/VAE/GAN temperatures, diffusion
    # guidance and steps (training/quality.py SELECTORS).
    select_sampling: bool = True
    baseline_draws: int = 512  # dequantization draws for the GMM and KDE baselines
    # Fewer PixelCNN samples for the eager sampler (one full network pass per pixel); None =
    # the same. Publishing samples through the served graphs, whose step graphs make a
    # whole image cost about one pass, draws the full number.
    pixelcnn_quality_per_class: int | None = None

    @classmethod
    def for_dims(cls, dims: int) -> EvalSettings:
        """The reported settings for an image size.

        Up to 16×16 the defaults above. On larger images (mnist5k, D = 784) the same
        estimators with fewer draws and fewer samples, since the small-image settings would
        take hours on 2 cores (the PixelCNN samples one pixel position per network pass);
        bounds with fewer draws are looser, so those figures are conservative.
        """
        if dims <= 256:
            return cls()
        return cls(
            samples={"vae": 128, "flow": 16, "pixelcnn": 1, "diffusion": 32},
            marginal_samples={"vae": 8, "flow": 1, "pixelcnn": 1, "diffusion": 4},
            quality_per_class=20,
            baseline_draws=16,
            pixelcnn_quality_per_class=2,
        )


class ModelScores(BaseModel):
    """One model's row in the evaluation report."""

    model_config = ConfigDict(extra="forbid")

    name: str
    family: str
    conditional: bool
    estimator: str
    estimator_samples: int | None = None
    test_nll_nats: float | None = None
    test_bpd: float | None = None
    test_bpd_marginal: float | None = None
    posterior_accuracy: float | None = None
    label_accuracy: float | None = None
    fid: float | None = None
    # Sample quality above is at the model's default sampling settings, chosen on
    # validation; the same figures at temperature 1 sit beside it when the two differ.
    sample_temperature: float = 1.0
    sample_steps: int | None = None  # diffusion: the default sampler's steps and guidance
    sample_guidance: float | None = None
    sampling_validation_fid: dict[str, float] | None = None  # candidate -> distance
    sampling_selected_by: str | None = None
    label_accuracy_t1: float | None = None
    fid_t1: float | None = None
    quality_samples: int | None = None  # samples behind label accuracy and FID
    training: dict[str, Any] = {}


class BaselineScores(BaseModel):
    """One classical baseline's row."""

    model_config = ConfigDict(extra="forbid")

    name: str
    estimator: str
    conditional: bool
    test_nll_nats: float
    test_bpd: float
    params: dict[str, Any]


class EvaluationReport(BaseModel):
    """The whole report `genserve evaluate` writes as JSON."""

    model_config = ConfigDict(extra="forbid")

    dataset: str
    dims: int
    split_sizes: dict[str, int]
    split_seed: int
    classifier: dict[str, float]
    fid_reference: float
    models: list[ModelScores]
    baselines: list[BaselineScores]


@torch.no_grad()
def _batched_ll(
    model: GenerativeModel, x: torch.Tensor, y: torch.Tensor | None, samples: int
) -> torch.Tensor:
    out = []
    for i in range(0, len(x), 128):
        out.append(model.log_likelihood(x[i : i + 128], None if y is None else y[i : i + 128], samples))
    return torch.cat(out)


@torch.no_grad()
def score_model(
    model: GenerativeModel,
    name: str,
    data: ImageDataset,
    splits: Splits,
    classifier: Classifier | None,
    class_prior: list[float] | None,
    training: dict[str, Any] | None = None,
    seed: int = 0,
    settings: EvalSettings | None = None,
    sampler: Sampler | None = None,
) -> ModelScores:
    """Test likelihood (conditional and marginal), Bayes-rule accuracy, and sample quality."""
    settings = settings or EvalSettings.for_dims(data.spec.dims)
    model.eval()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    te = splits.test
    x = torch.as_tensor(data.x[te], device=device)
    y = torch.as_tensor(data.y[te], device=device) if data.y is not None else None
    scores = ModelScores(
        name=name,
        family=model.family,
        conditional=model.conditional,
        estimator=model.estimator,
        training=training or {},
    )
    D = data.spec.dims
    if model.has_likelihood:
        k = settings.samples[model.family]
        ll = _batched_ll(model, x, y if model.conditional else None, k)
        scores.estimator_samples = k
        scores.test_nll_nats = float(-ll.mean())
        scores.test_bpd = float(-ll.mean() / (D * math.log(2)))
        if model.conditional and class_prior is not None and y is not None:
            log_prior = torch.log(torch.tensor(class_prior, device=device))
            marg, post = [], []
            for i in range(0, len(x), 128):
                m, p = model.marginal_log_likelihood(
                    x[i : i + 128], log_prior, settings.marginal_samples[model.family]
                )
                marg.append(m)
                post.append(p)
            scores.test_bpd_marginal = float(-torch.cat(marg).mean() / (D * math.log(2)))
            scores.posterior_accuracy = float((torch.cat(post).argmax(1) == y).float().mean())
    if classifier is not None:
        real = torch.as_tensor(data.x[te])
        per_class = settings.quality_per_class
        slow = sampler is None  # the eager full-pass sampler
        if model.family == "pixelcnn" and settings.pixelcnn_quality_per_class is not None and slow:
            per_class = settings.pixelcnn_quality_per_class
        choice = SamplingChoice()
        selector = SELECTORS.get(model.family)
        selection = None
        if selector is not None and settings.select_sampling:
            selection = selector(
                model,
                classifier,
                torch.as_tensor(data.x[splits.validation]),
                per_class=per_class,
                seed=seed + 777,
                sampler=sampler,
            )
        if selection is not None:
            choice = selection.choice
            scores.sampling_validation_fid = selection.validation_fid
            scores.sampling_selected_by = selection.selected_by
        scores.sample_temperature, scores.sample_steps, scores.sample_guidance = (
            choice.temperature,
            choice.steps,
            choice.guidance,
        )

        def quality(c: SamplingChoice) -> dict[str, float]:
            return sample_quality(model, classifier, real, per_class, seed=seed, choice=c, sampler=sampler)

        q = quality(choice)
        scores.fid, scores.label_accuracy, scores.quality_samples = (
            q["fid"],
            q.get("label_accuracy"),
            int(q["samples"]),
        )
        if choice.temperature != 1.0:
            q1 = quality(SamplingChoice())
            scores.fid_t1, scores.label_accuracy_t1 = q1["fid"], q1.get("label_accuracy")
    return scores


def baseline_rows(
    data: ImageDataset, splits: Splits, seed: int = 0, draws: int = 512
) -> list[BaselineScores]:
    """The classical estimators on the same split, in the same units."""
    D = data.spec.dims
    rows = []
    for b in evaluate_baselines(data, splits, seed=seed, draws=draws):
        rows.append(
            BaselineScores(
                name=b.name,
                estimator=b.estimator,
                conditional=b.conditional,
                test_nll_nats=float(-b.log_likelihood.mean()),
                test_bpd=b.bits_per_dim(D),
                params=b.params,
            )
        )
    return rows


def fid_reference(data: ImageDataset, splits: Splits, classifier: Classifier) -> float:
    """FID between the validation and test images: what 'as good as real data' scores."""
    a = classifier.embed(torch.as_tensor(data.x[splits.validation]))
    b = classifier.embed(torch.as_tensor(data.x[splits.test]))
    return frechet_distance(a, b)


def render_report(report: EvaluationReport, console: Console | None = None) -> None:
    """Print the report as two tables: models, then baselines."""
    console = console or Console()

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "—" if v is None else format(v, spec)

    t = Table(
        title=f"Test split of {report.dataset} ({report.split_sizes['test']} examples, D={report.dims})"
    )
    cols = (
        "model",
        "estimator",
        "NLL nats",
        "bpd",
        "bpd marginal",
        "p(y|x) acc",
        "samples",
        "sampling",
        "label acc",
        "FID",
    )
    for col in (*cols, "label acc, T=1", "FID, T=1"):
        t.add_column(col, justify="left" if col in ("model", "estimator") else "right")
    for m in report.models:
        est = m.estimator if m.estimator_samples in (None, 1) else f"{m.estimator}, K={m.estimator_samples}"
        t.add_row(
            m.name,
            est,
            fmt(m.test_nll_nats, ".2f"),
            fmt(m.test_bpd),
            fmt(m.test_bpd_marginal),
            fmt(m.posterior_accuracy),
            "—" if m.quality_samples is None else str(m.quality_samples),
            SamplingChoice(m.sample_temperature, m.sample_steps, m.sample_guidance).key(),
            fmt(m.label_accuracy),
            fmt(m.fid, ".2f"),
            fmt(m.label_accuracy_t1),
            fmt(m.fid_t1, ".2f"),
        )
    console.print(t)
    b = Table(title="Classical baselines (same split, same units)")
    for col in ("baseline", "estimator", "NLL nats", "bpd", "chosen on validation"):
        b.add_column(col)
    for r in report.baselines:
        b.add_row(r.name, r.estimator, f"{r.test_nll_nats:.2f}", f"{r.test_bpd:.3f}", str(r.params))
    console.print(b)
    console.print(
        f"judge: CNN classifier, test accuracy {report.classifier.get('test_accuracy', float('nan')):.3f}; "
        f"FID of real validation vs real test images: {report.fid_reference:.2f}"
    )


def write_report(report: EvaluationReport, path: Path) -> None:
    """Write the JSON report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.model_dump_json(indent=2))


def split_sizes(splits: Splits) -> dict[str, int]:
    """Sizes of each part of a split."""
    return {k: len(splits.part(k)) for k in ("train", "validation", "calibration", "test")}


__all__ = [
    "BaselineScores",
    "EvalSettings",
    "EvaluationReport",
    "ModelScores",
    "baseline_rows",
    "fid_reference",
    "render_report",
    "score_model",
    "split_sizes",
    "write_report",
]

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
from .quality import Sampler, frechet_distance, sample_quality


@dataclass(frozen=True)
class EvalSettings:
    """How hard evaluation looks. The defaults are the reported ones; tests use less."""

    # K ≥ 256 importance samples for VAEs (the field's usual reporting), and as many
    # uniform dequantization draws, importance-weighted, for flows.
    samples: dict[str, int] = field(default_factory=lambda: {"vae": 512, "flow": 512, "pixelcnn": 1})
    marginal_samples: dict[str, int] = field(default_factory=lambda: {"vae": 64, "flow": 4, "pixelcnn": 1})
    quality_per_class: int = 100
    classifier_epochs: int = 60


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
    settings = settings or EvalSettings()
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
        q = sample_quality(
            model,
            classifier,
            torch.as_tensor(data.x[te]),
            per_class=settings.quality_per_class,
            seed=seed,
            sampler=sampler,
        )
        scores.fid = q["fid"]
        scores.label_accuracy = q.get("label_accuracy")
    return scores


def baseline_rows(data: ImageDataset, splits: Splits, seed: int = 0) -> list[BaselineScores]:
    """The classical estimators on the same split, in the same units."""
    D = data.spec.dims
    rows = []
    for b in evaluate_baselines(data, splits, seed=seed):
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
    for col in ("model", "estimator", "NLL nats", "bpd", "bpd marginal", "p(y|x) acc", "label acc", "FID"):
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
            fmt(m.label_accuracy),
            fmt(m.fid, ".2f"),
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

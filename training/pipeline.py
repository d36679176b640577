"""Glue between the pieces: GAN model selection, evaluating a set of checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.console import Console

from .checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, read_info
from .classifier import Classifier, load_or_train_classifier
from .data import DataError, ImageDataset, SplitFractions, Splits, data_digest, load_dataset, make_splits
from .evaluate import (
    EvalSettings,
    EvaluationReport,
    baseline_rows,
    fid_reference,
    render_report,
    score_model,
    split_sizes,
    write_report,
)
from .families import GenerativeModel
from .quality import draw_samples, frechet_distance
from .runtime import configure_threads
from .train import Validator


def gan_validator(
    data: ImageDataset, splits: Splits, cache: Path | None, seed: int = 0, classifier_epochs: int = 60
) -> Validator:
    """Model selection for GANs on sample quality: FID against the validation images,
    in the independent classifier's feature space, with the validation labels requested."""
    classifier, _ = load_or_train_classifier(data, splits, cache, seed=seed, epochs=classifier_epochs)
    va = splits.validation
    real = classifier.embed(torch.as_tensor(data.x[va]))
    labels = torch.as_tensor(data.y[va]) if data.y is not None else None

    def validate(model: GenerativeModel) -> float:
        y = labels if model.conditional else None
        fake = draw_samples(model, y, len(va), seed=seed + 1)
        return frechet_distance(real, classifier.embed(fake))

    return validate


def data_for(info: CheckpointInfo) -> tuple[ImageDataset, Splits]:
    """Rebuild exactly the data and split a checkpoint was trained with.

    A file changed since training would silently give another split: held-out rows could
    be training images, and the evaluation and outlier calibration would be wrong.
    """
    try:
        data = load_dataset(info.dataset)
    except DataError as exc:
        raise CheckpointError(f"the data this checkpoint was trained on cannot be read: {exc}") from None
    trained_on = info.data_sha256
    if trained_on is not None and (digest := data_digest(data)) != trained_on:
        raise CheckpointError(
            f"{info.dataset} has changed since this checkpoint was trained on it (sha256 "
            f"{trained_on[:12]}..., now {digest[:12]}...); retrain, or restore the data"
        )
    fractions = SplitFractions(**info.split_fractions)
    splits = make_splits(data.y, len(data), seed=info.split_seed, fractions=fractions)
    return data, splits


def evaluate_checkpoints(
    dirs: list[Path], report_path: Path | None, cache: Path | None, console: Console | None = None
) -> EvaluationReport:
    """Evaluate checkpoints that share one dataset and split; write and print the report."""
    configure_threads()  # the figures build-store publishes, whatever the core count
    infos = [read_info(d) for d in dirs]
    first = infos[0]
    for info in infos[1:]:
        if (info.dataset, info.split_seed, info.split_fractions) != (
            first.dataset,
            first.split_seed,
            first.split_fractions,
        ):
            raise ValueError("checkpoints in one report must share their dataset and split")
    data, splits = data_for(first)
    settings = EvalSettings.for_dims(data.spec.dims)
    classifier: Classifier | None = None
    cls_metrics: dict[str, float] = {}
    if data.y is not None:
        classifier, cls_metrics = load_or_train_classifier(
            data, splits, cache, seed=first.split_seed, epochs=settings.classifier_epochs
        )
    rows = []
    for d, info in zip(dirs, infos, strict=True):
        model, _ = load_checkpoint(d)
        name = f"{info.family}{'' if info.conditional else ' (uncond)'}"
        rows.append(
            score_model(
                model,
                name,
                data,
                splits,
                classifier,
                info.class_prior,
                training=info.training_summary,
                settings=settings,
            )
        )
        if console is not None:
            console.print(f"scored {name}")
    report = EvaluationReport(
        dataset=data.spec.name,
        dims=data.spec.dims,
        split_sizes=split_sizes(splits),
        split_seed=first.split_seed,
        classifier=cls_metrics,
        fid_reference=fid_reference(data, splits, classifier) if classifier is not None else float("nan"),
        models=rows,
        baselines=baseline_rows(data, splits, seed=first.split_seed, draws=settings.baseline_draws),
    )
    if report_path is not None:
        write_report(report, report_path)
    render_report(report, console)
    return report

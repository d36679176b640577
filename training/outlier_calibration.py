"""Outlier calibration at build time, through the exported graphs and the service's engine.

- statistics a score needs (the typical NLL) from the validation split;
- the likelihood-ratio score's local background model, counted on the training split;
- the default method, chosen on validation data only: the best mean AUROC of validation
  images against synthetic outlier sets built from validation images;
- the conformal reference scores from the calibration split, which no fitting saw.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np

from service.background import fit_background
from service.engine import Engine
from service.manifest import BackgroundRecord, CalibrationRecord, DatasetSpec
from service.outliers import (
    POSTERIOR_ONLY,
    Evidence,
    all_stats,
    available_methods,
    calibration_scores,
    score,
)

from .data import ImageDataset, Splits
from .ood_metrics import detection_metrics
from .ood_sets import build_sets

# Outlier images per synthetic set for the selection: enough to rank a handful of methods,
# few enough that marginal scoring (one pass per class) fits the build-store budget.
SELECTION_IMAGES = 24
VALIDATION_IMAGES = 120
# The estimator noise every score here is computed with (recorded in the manifest): a request
# scored for outliers with other noise is re-scored with this seed.
NOISE_SEED = 0


async def select_method(
    engine: Engine,
    val: Evidence,
    stats: dict[str, dict[str, float]],
    samples: int,
    background: BackgroundRecord | None = None,
) -> tuple[str, dict[str, dict[str, float]]]:
    """The method with the best mean validation AUROC, and every method's AUROC per set.

    Unlabelled (marginal) scoring, as outlier requests usually come. `label_ambiguity`
    alone is ranked but never made the default: a default must serve labelled requests too.
    """
    spec = engine.spec
    assert isinstance(spec, DatasetSpec), "synthetic outlier sets are images"
    methods = available_methods(background, engine.conditional)
    inlier = {m: score(m, val, spec, stats[m], background) for m in methods}
    table: dict[str, dict[str, float]] = {m: {} for m in methods}
    pick = np.random.default_rng(1).choice(len(val.x), min(SELECTION_IMAGES, len(val.x)), replace=False)
    for name, x_ood in build_sets(val.x[np.sort(pick)], spec.levels, seed=1).items():
        ll = await engine.log_likelihood(x_ood, None, samples, seed=NOISE_SEED)
        ood = Evidence.of(ll, x_ood)
        for m in methods:
            s_out = score(m, ood, spec, stats[m], background)
            table[m][name] = detection_metrics(inlier[m], s_out)["auroc"]
    # Ties go to the simpler score (METHODS order: nll, typicality, complexity, likelihood_ratio, ...).
    candidates = [m for m in methods if m not in POSTERIOR_ONLY]
    best = max(
        candidates, key=lambda m: (round(float(np.mean(list(table[m].values()))), 4), -methods.index(m))
    )
    return best, table


async def calibrate(engine: Engine, data: ImageDataset, splits: Splits, samples: int) -> CalibrationRecord:
    """Score validation and calibration splits as the service will; pick the default method."""
    spec = data.spec
    # A fixed subset of the validation split is plenty for a mean and a ranking, and keeps
    # marginal scoring (one pass per class) inside the build-store budget.
    val_idx = np.sort(
        np.random.default_rng(0).choice(
            splits.validation, min(VALIDATION_IMAGES, len(splits.validation)), replace=False
        )
    )
    x_val, x_cal = data.x[val_idx], data.x[splits.calibration]
    background = fit_background(data.x[splits.train], spec.levels)
    # Unlabelled requests to a conditional model are scored with the marginal p(x);
    # labelled ones with p(x | y), calibrated here with each example's true label.
    val_ll = await engine.log_likelihood(x_val, None, samples, seed=NOISE_SEED)
    val = Evidence.of(val_ll, x_val)
    stats = all_stats(val, spec, background)
    cal = await engine.log_likelihood(x_cal, None, samples, seed=NOISE_SEED)
    default, selection = await select_method(engine, val, stats, samples, background)
    given = given_stats = None
    if engine.conditional and data.y is not None:
        val_y = await engine.log_likelihood(x_val, data.y[val_idx], samples, seed=NOISE_SEED)
        given_stats = all_stats(Evidence.of(val_y, x_val), spec, background)
        cal_y = await engine.log_likelihood(x_cal, data.y[splits.calibration], samples, seed=NOISE_SEED)
        given = calibration_scores(Evidence.of(cal_y, x_cal), spec, given_stats, background)
    return CalibrationRecord(
        size=len(x_cal),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        estimator=cal.estimator + (" (marginal over labels)" if cal.marginal else ""),
        samples=samples,
        seed=NOISE_SEED,
        default_method=default,
        log_likelihood=cal.log_likelihood.tolist(),
        scores=calibration_scores(
            Evidence.of(cal, x_cal),
            spec,
            stats,
            background,
            engine.conditional,
        ),
        scores_given_labels=given,
        stats=stats,
        stats_given_labels=given_stats,
        selection=selection,
        background=background,
    )

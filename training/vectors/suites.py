"""`genserve build-store --suite sbi | tabular`: the vector zoo.

- sbi: NPE posteriors for sbibm's two_moons, slcp, gaussian_linear and gaussian_mixture at
  10,000 simulations each, named after their task (npe-two-moons, ...);
- tabular: an outlier model of breast_cancer's benign records (malignant ones are the
  outliers it should flag), flow-breast-cancer-benign.

Models build side by side in single-threaded worker processes, longest first; each is
deterministic for its seed whatever the worker count.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console

from ..build_jobs import BuildOutcome
from .pipeline import VectorRecipe

SBI_SIMULATIONS = 10_000
SUITES: dict[str, list[VectorRecipe]] = {
    # Longest first: a slow model started last would leave a core idle at the end.
    "sbi": [
        VectorRecipe(f"sbi:{task}", "npe", SBI_SIMULATIONS)
        for task in ("slcp", "gaussian_linear", "two_moons", "gaussian_mixture")
    ],
    "tabular": [VectorRecipe("tabular:breast_cancer", inliers="benign")],
}


def _build(args: tuple[Path, VectorRecipe, int, bool, bool]) -> BuildOutcome:
    from .publish import build_vector_model

    root, recipe, seed, progress, force = args
    return build_vector_model(root, recipe, seed, Console(), progress=progress, force=force)


def build_suite(
    store_root: Path,
    suite: str,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
    force: bool = False,
    train_overrides: dict[str, Any] | None = None,
) -> list[BuildOutcome]:
    """Build (or confirm) every model of a vector suite; returns what was done, in suite order."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose from digits, {', '.join(SUITES)}")
    recipes = [
        VectorRecipe(**{**r.__dict__, "train": {**r.train, **(train_overrides or {})}}) for r in SUITES[suite]
    ]
    jobs = [(store_root, r, seed, progress and workers == 1, force) for r in recipes]
    if workers <= 1 or len(jobs) == 1:
        return [_build(j) for j in jobs]
    with ProcessPoolExecutor(
        min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
    ) as pool:
        return list(pool.map(_build, jobs))


__all__ = ["SBI_SIMULATIONS", "SUITES", "build_suite"]

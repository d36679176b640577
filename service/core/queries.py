"""What a front asks of a model, in arrays and plain values: no transport in sight.

Arrays arrive as the client sent them (raw numbers, unchecked); the core checks them
against the model. Labels arrive as the client wrote them: class indices or names, one
for all rows or one per row (an int64 array from a tensor protocol is one per row).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine.base import SamplerOptions

Labels = int | str | list[int | str] | np.ndarray | None


@dataclass(frozen=True)
class SampleQuery:
    """Draw `n` samples (per label, context and temperature), seeded."""

    n: int = 1
    labels: Labels = None
    context: np.ndarray | None = None  # [C] for all, or [n, C]
    seed: int | None = None  # None: the server draws one and reports it
    temperature: float | None = None  # None: the model's default
    alpha: float = 0.05  # of the context check
    options: SamplerOptions = field(default_factory=SamplerOptions)  # steps, sampler, guidance (diffusion)


@dataclass(frozen=True)
class ScoreQuery:
    """Score rows: log-likelihood, label posterior, outlier verdicts."""

    inputs: np.ndarray
    labels: Labels = None
    context: np.ndarray | None = None  # [C] for all, or [N, C]
    importance_samples: int | None = None  # None: the model's default
    seed: int = 0
    alpha: float = 0.05
    outlier_method: str | None = None
    all_outlier_methods: bool = False
    fdr: float | None = None
    check_context: bool = True


@dataclass(frozen=True)
class ReconstructQuery:
    """Reconstruct rows, or complete the entries where `mask` is 0 (PixelCNN)."""

    inputs: np.ndarray
    labels: Labels = None
    context: np.ndarray | None = None
    mask: np.ndarray | None = None  # raw 0/1 values shaped like inputs
    seed: int | None = None
    particles: int | None = None
    options: SamplerOptions = field(default_factory=SamplerOptions)  # steps, strength (diffusion)

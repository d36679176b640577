"""What the client's calls return: NumPy arrays with the facts of the answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ModelInfo:
    """One loaded model version, as `GET /models` lists it (`raw`: every field sent)."""

    name: str
    version: int
    family: str
    default: bool
    conditional: bool
    labels: list[str] | None
    data: dict[str, Any]
    capabilities: list[str]
    warnings: list[str]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ModelInfo:
        """Read one entry of `GET /models` (or `GET /models/{name}`)."""
        return cls(
            name=body["name"],
            version=int(body["version"]),
            family=body["family"],
            default=bool(body.get("default", True)),
            conditional=bool(body.get("conditional", False)),
            labels=body.get("labels"),
            data=body.get("data") or {},
            capabilities=list(body.get("capabilities") or []),
            warnings=list(body.get("warnings") or []),
            raw=body,
        )


@dataclass(frozen=True)
class Samples:
    """`/sample`'s answer: `samples` in data units ([n, C, H, W] integer levels, or [n, D]
    values), the labels used (class indices, with names), and the seed that reproduces them."""

    model: str
    version: int
    samples: np.ndarray
    labels: np.ndarray | None
    label_names: list[str] | None
    seed: int
    temperature: float
    context_check: list[dict[str, Any]] | None = None
    steps: int | None = None  # diffusion: the denoiser steps, sampler and guidance used
    sampler: str | None = None
    guidance: float | None = None


@dataclass(frozen=True)
class Scores:
    """`/log-likelihood`'s answer as columns, one entry per input row.

    `posterior` [N, L] and `predicted_label` are there when a conditional model was scored
    without labels; the outlier columns when the model is calibrated; `columns` holds
    every array the server sent (other methods' verdicts, the context check).
    """

    model: str
    version: int
    estimator: str
    importance_samples: int
    seed: int
    marginal: bool
    log_likelihood: np.ndarray
    bits_per_dim: np.ndarray | None
    posterior: np.ndarray | None
    predicted_label: np.ndarray | None
    outlier_score: np.ndarray | None
    outlier_p_value: np.ndarray | None
    is_outlier: np.ndarray | None
    columns: dict[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class Reconstruction:
    """`/reconstruct`'s answer: named outputs (`reconstruction`, latents, ...), the labels
    used (class indices; inferred by Bayes' rule when none were given, with
    `label_probability`), and the seed of a completion's draws."""

    model: str
    version: int
    outputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    label_probability: np.ndarray | None
    seed: int | None
    particles: int | None
    steps: int | None = None  # diffusion: the denoiser steps and (without a mask) strength used
    strength: float | None = None

    @property
    def reconstruction(self) -> np.ndarray:
        """The reconstruction or completion, in data units."""
        return self.outputs["reconstruction"]

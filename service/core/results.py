"""A model's answers, as arrays and facts about how they were made.

Each result can be written as JSON rows (the genserve API's default) or as named columns
(an .npz answer, the Open Inference Protocol's output tensors): the columns are what the
engines produce, and rows are built from them in one pass per column.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..engine import Likelihood, Reconstruction, SamplerOptions
from ..outliers import OutlierReport, Verdicts
from ..registry import LoadedModel


@dataclass(frozen=True)
class SampleResult:
    """Samples in data units, with the labels, seed and temperature used."""

    model: LoadedModel
    samples: np.ndarray  # images [n, C, H, W] int levels; vectors [n, D]
    labels: np.ndarray | None  # [n] int64, given or drawn from the class prior
    seed: int
    temperature: float
    context_check: Verdicts | None = None  # one verdict per context row sent
    options: SamplerOptions = field(
        default_factory=SamplerOptions
    )  # what an iterative sampler used (diffusion)

    def context_rows(self) -> list[dict[str, Any]] | None:
        """The context check as JSON objects, one per context row sent."""
        return None if self.context_check is None else self.context_check.rows()

    @property
    def smallest_context_p_value(self) -> float | None:
        """The most suspicious context's p-value (None without a check)."""
        return None if self.context_check is None else float(self.context_check.p_value.min())


@dataclass(frozen=True)
class ScoreResult:
    """Per row: the log-likelihood (and its units), the label posterior when marginalised,
    the outlier verdicts, and for vector models with a context check the context's."""

    model: LoadedModel
    likelihood: Likelihood
    units: dict[str, np.ndarray]  # e.g. bits_per_dim [N] for images; empty for vectors
    samples: int  # estimator samples used
    seed: int
    outliers: OutlierReport
    context_check: Verdicts | None = None  # [1] for a context sent once, else [N]

    @property
    def rows_count(self) -> int:
        return len(self.likelihood.log_likelihood)

    def header(self) -> dict[str, Any]:
        """What was computed, and how: the fields beside the rows or columns."""
        manifest = self.model.manifest
        return {
            "model": self.model.name,
            "version": self.model.version.version,
            "family": manifest.family,
            "estimator": self.likelihood.estimator,
            "density": self.model.kind.density(),
            "importance_samples": self.samples,
            "seed": self.seed,
            "marginal": self.likelihood.marginal,
        }

    def _context_index(self) -> np.ndarray:
        """[N] which context verdict applies to each row."""
        assert self.context_check is not None
        if len(self.context_check.p_value) == 1:
            return np.zeros(self.rows_count, dtype=np.int64)
        return np.arange(self.rows_count)

    def rows(self) -> list[dict[str, Any]]:
        """One JSON object per row, as POST /log-likelihood answers."""
        names = self.model.manifest.dataset.label_names or []
        rows: list[dict[str, Any]] = [{"log_likelihood": v} for v in self.likelihood.log_likelihood.tolist()]
        for key, column in self.units.items():
            for row, v in zip(rows, column.tolist(), strict=True):
                row[key] = v
        posterior = self.likelihood.posterior
        if posterior is not None:
            best = posterior.argmax(axis=1).tolist()
            for row, post, top in zip(rows, posterior.tolist(), best, strict=True):
                row["label_posterior"] = dict(zip(names, post, strict=True))
                row["predicted_label"] = names[top]
        for row, extra in zip(rows, self.outliers.rows(), strict=True):
            row.update(extra)
        if self.context_check is not None:
            verdicts = self.context_check.rows()
            for row, i in zip(rows, self._context_index().tolist(), strict=True):
                row["context_outlier"] = verdicts[i]
        return rows

    def columns(self) -> dict[str, np.ndarray]:
        """Every per-row output as a named array (the .npz answer; the OIP output tensors).

        log_likelihood [N] float64; each unit column (bits_per_dim) [N]; posterior [N, L]
        and predicted_label [N] int64 when marginalised over labels; outlier_score,
        outlier_p_value, is_outlier [N] of the chosen method (bh_selected with an fdr), and
        `<column>.<method>` for every method when all were asked for; context_score,
        context_p_value, context_is_outlier [N] with a context check.
        """
        out: dict[str, np.ndarray] = {
            "log_likelihood": np.asarray(self.likelihood.log_likelihood, np.float64)
        }
        out.update({k: np.asarray(v, np.float64) for k, v in self.units.items()})
        posterior = self.likelihood.posterior
        if posterior is not None:
            out["posterior"] = np.asarray(posterior, np.float64)
            out["predicted_label"] = posterior.argmax(axis=1).astype(np.int64)
        chosen = self.outliers.chosen
        if chosen is not None:
            out.update(_verdict_columns("outlier_", "", chosen))
            for v in self.outliers.every or ():
                out.update(_verdict_columns("outlier_", f".{v.method}", v))
        if self.context_check is not None:
            index = self._context_index()
            check = self.context_check
            out["context_score"] = np.asarray(check.score, np.float64)[index]
            out["context_p_value"] = np.asarray(check.p_value, np.float64)[index]
            out["context_is_outlier"] = check.is_outlier[index]
        return out


def _verdict_columns(prefix: str, suffix: str, v: Verdicts) -> dict[str, np.ndarray]:
    cols = {
        f"{prefix}score{suffix}": np.asarray(v.score, np.float64),
        f"{prefix}p_value{suffix}": np.asarray(v.p_value, np.float64),
        f"is_outlier{suffix}": v.is_outlier,
    }
    if v.bh_selected is not None:
        cols[f"bh_selected{suffix}"] = np.asarray(v.bh_selected, bool)
    return cols


@dataclass(frozen=True)
class ReconstructResult:
    """Reconstructions or completions, with what was asked and the seed of any draws."""

    model: LoadedModel
    inputs: np.ndarray  # the checked inputs
    mask: np.ndarray | None  # bool, shaped like inputs
    labels: np.ndarray | None  # the class indices used, given or inferred
    seed: int | None  # None: nothing was drawn (flow and VAE reconstructions)
    reconstruction: Reconstruction
    # Asked without labels: p(label used | input) by Bayes' rule; None when labels were given.
    label_probability: NDArray[np.float64] | None = None
    options: SamplerOptions = field(
        default_factory=SamplerOptions
    )  # what an iterative sampler used (diffusion)

    def label_names(self) -> list[str] | None:
        """The labels used, by class name (None for an unconditional model)."""
        names = self.model.manifest.dataset.label_names
        if self.labels is None:
            return None
        return [names[i] if names else str(i) for i in self.labels]

    def columns(self) -> dict[str, np.ndarray]:
        """The outputs as named arrays, with `labels` (class indices used) for a conditional
        model and `label_probability` when the labels were inferred."""
        out = dict(self.reconstruction.arrays)
        if self.labels is not None:
            out["labels"] = self.labels.astype(np.int64)
        if self.label_probability is not None:
            out["label_probability"] = self.label_probability
        return out

"""Training a vector flow: a recipe names the data, the split and the optimiser settings.

SBI follows sbi's conventions where they decide what a budget means, so that the published
benchmark figures compare: the budget of simulations is the training set plus a 10 %
validation set, and gradient norms are clipped at 5. The test and calibration sets are
fresh simulations outside the budget (the simulator is free; the budget counts what the
posterior learned from). Tabular and user data get the image zoo's four-way split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from pydantic import ValidationError

from service.vector_spec import Interval, Scaling, VectorSpec
from service.vector_transform import FeatureMap

from ..checkpoint import code_fingerprint, run_key
from ..data import DataError, SplitFractions, Splits, make_splits
from ..runtime import configure_threads, seed_everything
from ..train import SettingsError, TrainConfig, class_prior, fit
from .data import VectorDataset, file_dataset, sbi_dataset, tabular_dataset
from .flows import VectorFlowConfig, VectorFlowModel

# SBI: batches of 100 at 1e-3, annealed (cosine) over 150 epochs with a weight average,
# keeping the best validation state. Against sbi's own defaults (batches of 50 at 5e-4,
# early stopping after 20 epochs without improvement) on two_moons at 10,000 simulations:
# C2ST 0.554 vs 0.650 (3 observations, docs/results.md). Training stops 30 epochs after the
# last improvement: run to 150, the best states were at epochs 90 (two_moons), 38 (slcp),
# 3 (gaussian_linear) and 91 (gaussian_mixture), so the rest of the budget was spent past
# the model that ships (slcp's build took over 10 minutes one at a time).
SBI_TRAINING: dict[str, Any] = {
    "batch_size": 100,
    "lr": 1e-3,
    "schedule": "cosine",
    "max_epochs": 150,
    "patience": 30,
    "ema": 0.995,
}
# With it, a wider and deeper NSF than sbi's (64 hidden units, 8 transforms; sbi: 50, 5).
SBI_FLOW: dict[str, Any] = {"hidden": 64, "transforms": 8}
TABULAR_TRAINING: dict[str, Any] = {
    "batch_size": 64,
    "lr": 1e-3,
    "max_epochs": 2000,
    "patience": 30,
    "ema": 0.99,
}
HELD_OUT_SIMULATIONS = 1000  # test and calibration sets of an SBI model, each
# The flow of a model's contexts alone (the simulator's marginal p(x) for NPE), for the
# context check: only its density is served, so an autoregressive MAF (one pass to score,
# about twice as fast to train as a spline coupling flow).
CONTEXT_FLOW = VectorFlowConfig(transform="maf", passes=None, transforms=5, hidden=50)
# Its training: the model's settings over a third of the epochs (a density of x alone is an
# easier problem than x given θ, and it keeps an SBI model's build inside 10 minutes).
CONTEXT_EPOCHS = 50


@dataclass(frozen=True)
class VectorRecipe:
    """Which vector data to train on, and how to read it."""

    data: str  # sbi:<task> | tabular:<name> | path/to/file.csv | path/to/file.npz
    method: str = "npe"  # SBI: npe | nle
    simulations: int = 10_000  # SBI: the simulation budget
    inliers: str | None = None  # tabular: keep one class (outlier models)
    features: tuple[str, ...] | None = None  # .csv: feature columns
    context: tuple[str, ...] | None = None  # .csv: context columns
    label: str | None = None  # .csv: label column
    config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    @property
    def is_sbi(self) -> bool:
        return self.data.startswith("sbi:")

    def load(self, seed: int) -> VectorDataset:
        """The dataset this recipe names (SBI: `simulations` draws made from `seed`)."""
        kind, _, rest = self.data.partition(":")
        if kind == "sbi":
            return sbi_dataset(rest, self.method, self.simulations, seed)
        if kind == "tabular":
            return tabular_dataset(rest, self.inliers)
        return file_dataset(
            Path(self.data),
            list(self.features) if self.features else None,
            list(self.context) if self.context else None,
            self.label,
        )

    def held_out(self, seed: int) -> tuple[VectorDataset, VectorDataset] | None:
        """SBI: (test, calibration) sets of fresh simulations, outside the budget."""
        if not self.is_sbi:
            return None
        task = self.data.partition(":")[2]
        test = sbi_dataset(task, self.method, HELD_OUT_SIMULATIONS, seed + 10_000)
        cal = sbi_dataset(task, self.method, HELD_OUT_SIMULATIONS, seed + 20_000)
        return test, cal

    def model_name(self) -> str:
        """Store name: npe-two-moons, flow-breast-cancer-benign, flow-<file stem>."""
        kind, _, rest = self.data.partition(":")
        if kind == "sbi":
            return f"{self.method}-{rest.replace('_', '-')}"
        stem = rest if kind == "tabular" else Path(self.data).stem
        suffix = f"-{self.inliers}" if self.inliers else ""
        return f"flow-{stem}{suffix}".replace("_", "-").lower()

    def describe(self) -> dict[str, Any]:
        """What identifies the recipe in keys and manifests."""
        return {
            "data": self.data,
            "method": self.method if self.is_sbi else None,
            "simulations": self.simulations if self.is_sbi else None,
            "inliers": self.inliers,
            "features": self.features,
            "context": self.context,
            "label": self.label,
        }


def is_vector_data(data: str) -> bool:
    """Whether `data` names vector data (everything else is images)."""
    if data.startswith(("sbi:", "tabular:")) or data.endswith(".csv"):
        return True
    if data.endswith(".npz") and Path(data).exists():
        with np.load(data, allow_pickle=False) as z:
            return "x" in z and z["x"].ndim == 2
    return False


def vector_splits(data: VectorDataset, recipe: VectorRecipe, seed: int) -> Splits:
    """SBI: 90 / 10 train / validation of the budget (held-out sets are fresh simulations);
    otherwise the zoo's stratified train / validation / calibration / test split."""
    if not recipe.is_sbi:
        return make_splits(data.y, len(data), seed=seed, fractions=SplitFractions())
    order = np.random.default_rng([seed, 6]).permutation(len(data))
    cut = max(1, round(0.1 * len(data)))
    none = np.zeros(0, dtype=np.int64)
    return Splits(
        seed=seed, train=np.sort(order[cut:]), validation=np.sort(order[:cut]), calibration=none, test=none
    )


@dataclass
class VectorTrainResult:
    """A trained vector flow, its data and how it was made."""

    model: VectorFlowModel
    spec: VectorSpec
    data: VectorDataset
    splits: Splits
    config: VectorFlowConfig
    train: TrainConfig
    record: dict[str, Any]
    history: list[dict[str, float]]
    key: str
    class_prior: list[float] | None
    context_model: VectorFlowModel | None = None
    context_record: dict[str, Any] | None = None


def standardise(
    spec: VectorSpec, x: NDArray[np.float64], c: NDArray[np.float64] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw vectors (and context) -> float32 tensors in the model's standard space."""
    s, _ = FeatureMap.of(spec.support, spec.scaling).to_standard(x)
    cs = None
    if c is not None and spec.context_scaling is not None:
        cs, _ = FeatureMap.of(None, spec.context_scaling).to_standard(c)
    return torch.as_tensor(s, dtype=torch.float32), None if cs is None else torch.as_tensor(
        cs, dtype=torch.float32
    )


def _defaults(recipe: VectorRecipe) -> dict[str, Any]:
    return SBI_TRAINING if recipe.is_sbi else TABULAR_TRAINING


def _flow_defaults(recipe: VectorRecipe) -> dict[str, Any]:
    return SBI_FLOW if recipe.is_sbi else {}


@dataclass
class Prepared:
    """Everything a run is made of before training: data, split, settings and their key."""

    data: VectorDataset
    splits: Splits
    spec: VectorSpec
    conditional: bool
    config: VectorFlowConfig
    train: TrainConfig
    key: str


def prepare(recipe: VectorRecipe, conditional: bool = True, seed: int = 0) -> Prepared:
    """Load the data, split it, fit the scaling and settle the settings (no training)."""
    data = recipe.load(seed)
    splits = vector_splits(data, recipe, seed)
    spec = data.spec(splits.train)
    conditional = conditional and spec.num_classes >= 2  # labels absent or of one class: none
    try:
        config = VectorFlowConfig(**{**_flow_defaults(recipe), **recipe.config})
        tcfg = TrainConfig(**{**_defaults(recipe), **recipe.train})
    except ValidationError as exc:
        raise SettingsError.of(exc) from None
    if tcfg.augment > 0:
        raise DataError("vector data has no transforms to augment with")
    key = run_key(
        {
            "recipe": recipe.describe(),
            "data": _digest(data),
            "conditional": conditional,
            "config": config.model_dump(mode="json"),
            "train": tcfg.model_dump(mode="json"),
            "context_flow": (
                [CONTEXT_FLOW.model_dump(mode="json"), CONTEXT_EPOCHS] if data.context is not None else None
            ),
            "seed": seed,
            "code": code_fingerprint(),
        }
    )
    return Prepared(data, splits, spec, conditional, config, tcfg, key)


def training_key(recipe: VectorRecipe, conditional: bool = True, seed: int = 0) -> str:
    """The key a run of this recipe would have (equal keys: interchangeable runs)."""
    return prepare(recipe, conditional, seed).key


def train_vectors(
    recipe: VectorRecipe,
    conditional: bool = True,
    seed: int = 0,
    progress: bool = True,
    say: Callable[[str], None] | None = None,
) -> VectorTrainResult:
    """Train one vector flow end to end (one thread, deterministic for `seed`)."""
    configure_threads()
    p = prepare(recipe, conditional, seed)
    data, splits, spec = p.data, p.splits, p.spec
    seed_everything(seed)
    model = VectorFlowModel(spec, p.conditional, p.config)
    s, c = standardise(spec, data.x, data.context)
    y = torch.as_tensor(data.y) if (p.conditional and data.y is not None) else None
    cond = model.condition(y, c)  # [N, C + L] or None: what fit batches beside x
    tr, va = torch.as_tensor(splits.train), torch.as_tensor(splits.validation)
    cond_val = None if cond is None else cond[va]

    def validate(m: VectorFlowModel) -> float:
        with torch.no_grad():
            return float(-m.log_prob_given(s[va], cond_val).mean()) / spec.dims

    model, record, history = fit(
        model,
        s[tr],
        None if cond is None else cond[tr],
        validate,
        p.train,
        seed,
        label=recipe.model_name(),
        progress=progress,
        say=say,
    )
    prior = class_prior(data.y[splits.train] if data.y is not None else None, model.num_classes)
    record = {**record, "device": "cpu"}
    result = VectorTrainResult(model, spec, data, splits, p.config, p.train, record, history, p.key, prior)
    if c is not None:
        result.context_model, result.context_record = _train_context_flow(
            spec, c, tr, va, p.train, seed, recipe.model_name(), progress, say
        )
    return result


def _train_context_flow(
    spec: VectorSpec,
    c: torch.Tensor,
    tr: torch.Tensor,
    va: torch.Tensor,
    tcfg: TrainConfig,
    seed: int,
    name: str,
    progress: bool,
    say: Callable[[str], None] | None,
) -> tuple[VectorFlowModel, dict[str, Any]]:
    """A flow on the standardised training contexts alone, early-stopped on validation ones."""
    assert spec.context is not None
    C = len(spec.context)
    cspec = VectorSpec(
        name=f"{spec.name}-context",
        features=spec.context,
        support=[Interval() for _ in range(C)],
        scaling=Scaling(shift=[0.0] * C, scale=[1.0] * C),
        density="p(context)",
    )
    seed_everything(seed + 1)
    model = VectorFlowModel(cspec, False, CONTEXT_FLOW, role="context")

    def validate(m: VectorFlowModel) -> float:
        with torch.no_grad():
            return float(-m.log_prob_given(c[va], None).mean()) / C

    tcfg = tcfg.model_copy(update={"max_epochs": min(tcfg.max_epochs, CONTEXT_EPOCHS)})
    model, record, _ = fit(
        model, c[tr], None, validate, tcfg, seed + 1, label=f"{name} context", progress=progress, say=say
    )
    return model, record


def _digest(data: VectorDataset) -> str:
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    for extra in (data.context, data.y):
        if extra is not None:
            h.update(np.ascontiguousarray(extra).tobytes())
    return h.hexdigest()


__all__ = [
    "VectorRecipe",
    "VectorTrainResult",
    "is_vector_data",
    "standardise",
    "train_vectors",
    "vector_splits",
]

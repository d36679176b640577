"""Checks of a query against its model that every front shares, naming the field."""

from __future__ import annotations

import numpy as np

from ..engine.base import SamplerOptions
from ..errors import InvalidInputError, PayloadTooLargeError
from ..manifest import DatasetSpec, VectorSpec
from .queries import Labels


def check_mask(mask: np.ndarray | None, images: np.ndarray, field: str = "mask") -> np.ndarray | None:
    """A 0/1 mask shaped like the images (or [N, H, W] for one channel) -> bool."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.ndim == images.ndim - 1 and images.ndim >= 2 and images.shape[1] == 1:
        arr = arr[:, None]
    if arr.shape != images.shape:
        raise InvalidInputError.field([field], f"must have the inputs' shape {list(images.shape)}")
    if not np.isin(arr, (0, 1)).all():
        raise InvalidInputError.field([field], "values must be 0 (fill in) or 1 (known)")
    return arr.astype(bool)


def resolve_labels(
    labels: Labels,
    rows: int,
    spec: DatasetSpec | VectorSpec,
    conditional: bool,
    model: str,
) -> np.ndarray | None:
    """Class indices or names (one for all rows, or one per row) -> int64 [rows].

    An array (a tensor protocol's INT64 labels) holds class indices, one per row or one for all.
    """
    if labels is None:
        return None
    if not conditional:
        raise InvalidInputError.field(["labels"], f"model {model} is unconditional and takes no labels")
    if isinstance(labels, np.ndarray):
        return _label_array(labels, rows, spec.num_classes)
    index = spec.label_index
    if not isinstance(labels, list):
        # One label for every row: validated once, so a 10,000-row request pays for one.
        return np.full(rows, _label_index(labels, ["labels"], index, spec.num_classes, model), dtype=np.int64)
    _check_count(len(labels), rows)
    return np.array(
        [_label_index(item, ["labels", i], index, spec.num_classes, model) for i, item in enumerate(labels)],
        dtype=np.int64,
    )


def _check_count(given: int, rows: int) -> None:
    if given != rows:
        raise InvalidInputError.field(
            ["labels"],
            f"has {given} entries for {rows} row{'s' if rows > 1 else ''} "
            + ("(give one)" if rows == 1 else f"(give 1 or {rows})"),
        )


def _label_array(labels: np.ndarray, rows: int, classes: int) -> np.ndarray:
    if labels.ndim > 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise InvalidInputError.field(["labels"], "must be class indices, one per row: an integer vector")
    flat = labels.reshape(-1).astype(np.int64)
    if len(flat) == 1 and rows != 1:
        flat = np.full(rows, flat[0], dtype=np.int64)
    _check_count(len(flat), rows)
    bad = np.flatnonzero((flat < 0) | (flat >= classes))
    if len(bad):
        raise InvalidInputError.field(["labels", int(bad[0])], f"class index out of range 0..{classes - 1}")
    return flat


def _label_index(
    item: int | str, loc: list[str | int], index: dict[str, int], classes: int, model: str
) -> int:
    """One class index (0..classes-1) or name (`index`: name -> class index) -> its index;
    anything else is an InvalidInputError at `loc`."""
    if isinstance(item, bool):
        raise InvalidInputError.field(loc, "must be a class index or name")
    if isinstance(item, int):
        if not 0 <= item < classes:
            raise InvalidInputError.field(loc, f"class index out of range 0..{classes - 1}")
        return item
    if item in index:
        return index[item]
    raise InvalidInputError.field(loc, f"unknown class name (GET /models/{model} lists them)")


def check_output_size(rows: int, per_row: int, limit: int, field: str) -> None:
    """Refuse requests whose response would carry more than `limit` numbers."""
    if rows * per_row > limit:
        raise PayloadTooLargeError(
            f"{field}: the response would hold {rows * per_row} values, over the limit of {limit}"
        )


def check_sampler_fields(options: SamplerOptions, allowed: frozenset[str], family: str, what: str) -> None:
    """A 422 naming the first option that `family` does not take for `what` (sampling or
    reconstruction): steps, sampler, guidance and strength belong to iterative samplers."""
    for name in sorted(options.given() - allowed):
        takes = f"takes {', '.join(sorted(allowed))}" if allowed else "takes none"
        raise InvalidInputError.field(
            [name],
            f"{family} {what} has no {name} option ({family} {what} {takes}; diffusion models take it)",
        )

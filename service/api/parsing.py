"""Turning request bodies into validated arrays, cheaply and with errors that name the field.

JSON bodies are parsed with orjson and arrays converted by numpy in one C-level pass;
`application/x-npy` bodies go straight to numpy. Validation is vectorised: its cost grows
with the array, not with Python work per element. No error message echoes the input.
"""

from __future__ import annotations

import io
from typing import Any, TypeVar

import numpy as np
import orjson
from pydantic import BaseModel, ValidationError

from ..errors import FieldError, InvalidInputError, MalformedBodyError, PayloadTooLargeError
from ..manifest import DatasetSpec

M = TypeVar("M", bound=BaseModel)


def parse_json(raw: bytes) -> dict[str, Any]:
    """A JSON object body; anything else is a 400."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedBodyError("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise MalformedBodyError("the body must be a JSON object")
    return data


def validate_model(cls: type[M], data: dict[str, Any]) -> M:
    """Pydantic validation with a problem body listing each bad field (inputs never echoed)."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        errors = [FieldError(list(e["loc"]), e["msg"]) for e in exc.errors()]
        where = ", ".join(".".join(str(p) for p in e.loc) or "body" for e in errors)
        raise InvalidInputError(f"invalid field(s): {where}", errors) from None


def array_from_json(value: Any, field: str) -> np.ndarray:
    """Nested JSON lists -> a numeric array, or a 422 naming `field`."""
    if value is None:
        raise InvalidInputError.field([field], "is required")
    if isinstance(value, bool | str | dict):
        raise InvalidInputError.field([field], "must be a nested list of integers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInputError.field([field], "must be a rectangular nested list of numbers") from None
    return arr


def array_from_npy(raw: bytes, field: str = "inputs") -> np.ndarray:
    """An application/x-npy body -> array (never unpickles)."""
    try:
        arr = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        raise MalformedBodyError("the body is not a valid .npy array") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise InvalidInputError.field([field], "the .npy array must be numeric")
    return arr


def check_images(arr: np.ndarray, spec: DatasetSpec, field: str, max_rows: int) -> np.ndarray:
    """Shape, finiteness, integrality and range of images; returns int64 [N, C, H, W]."""
    C, H, W = spec.shape
    if arr.ndim == 3 and C == 1:
        arr = arr[:, None]
    expected = f"[N, {C}, {H}, {W}]" + (f" or [N, {H}, {W}]" if C == 1 else "")
    if arr.ndim != 4 or tuple(arr.shape[1:]) != (C, H, W):
        raise InvalidInputError.field([field], f"expected shape {expected}, got {list(arr.shape)}")
    if arr.shape[0] == 0:
        raise InvalidInputError.field([field], "needs at least one row")
    if arr.shape[0] > max_rows:
        raise PayloadTooLargeError(
            f"{field}: {arr.shape[0]} rows is over the limit of {max_rows} per request"
        )
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InvalidInputError.field([field], "values must be finite (no NaN or Infinity)")
        if not (arr == np.floor(arr)).all():
            raise InvalidInputError.field([field], "values must be integers (grey levels)")
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > spec.levels - 1:
        raise InvalidInputError.field([field], f"values must lie in 0..{spec.levels - 1}")
    return arr.astype(np.int64)


def check_mask(value: Any, images: np.ndarray, field: str = "mask") -> np.ndarray | None:
    """A 0/1 mask shaped like the images (or [N, H, W] for one channel)."""
    if value is None:
        return None
    arr = array_from_json(value, field)
    if arr.ndim == images.ndim - 1 and images.shape[1] == 1:
        arr = arr[:, None]
    if arr.shape != images.shape:
        raise InvalidInputError.field([field], f"must have the inputs' shape {list(images.shape)}")
    if not np.isin(arr, (0, 1)).all():
        raise InvalidInputError.field([field], "values must be 0 (fill in) or 1 (known)")
    return arr.astype(bool)


def resolve_labels(
    labels: int | str | list[int | str] | None,
    rows: int,
    spec: DatasetSpec,
    conditional: bool,
    model: str,
) -> np.ndarray | None:
    """Class indices or names (one for all rows, or one per row) -> int64 [rows]."""
    if labels is None:
        return None
    if not conditional:
        raise InvalidInputError.field(["labels"], f"model {model} is unconditional and takes no labels")
    names = spec.label_names or []
    items = labels if isinstance(labels, list) else [labels] * rows
    if len(items) != rows:
        raise InvalidInputError.field(
            ["labels"], f"has {len(items)} entries for {rows} rows (give 1 or {rows})"
        )
    index = {name: i for i, name in enumerate(names)}
    out = np.empty(rows, dtype=np.int64)
    for i, item in enumerate(items):
        loc: list[str | int] = ["labels", i] if isinstance(labels, list) else ["labels"]
        if isinstance(item, bool):
            raise InvalidInputError.field(loc, "must be a class index or name")
        if isinstance(item, int):
            if not 0 <= item < len(names):
                raise InvalidInputError.field(loc, f"class index out of range 0..{len(names) - 1}")
            out[i] = item
        elif item in index:
            out[i] = index[item]
        else:
            raise InvalidInputError.field(loc, f"unknown class name (GET /models/{model} lists them)")
    return out


def check_output_size(rows: int, per_row: int, limit: int, field: str) -> None:
    """Refuse requests whose response would carry more than `limit` numbers."""
    if rows * per_row > limit:
        raise PayloadTooLargeError(
            f"{field}: the response would hold {rows * per_row} values, over the limit of {limit}"
        )

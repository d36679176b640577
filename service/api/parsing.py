"""Turning request bodies into validated arrays, cheaply and with errors that name the field.

JSON bodies are parsed with orjson and arrays converted by numpy in one C-level pass;
`application/x-npy` bodies go straight to numpy. Validation is vectorised: its cost grows
with the array, not with Python work per element. No error message echoes the input.
"""

from __future__ import annotations

import io
import math
import re
import sys
import zipfile
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
import orjson
from numpy.lib import format as npy_format
from pydantic import BaseModel, ValidationError

from ..errors import FieldError, InvalidInputError, MalformedBodyError, PayloadTooLargeError

M = TypeVar("M", bound=BaseModel)
# A class index in a query string: ASCII digits only (str.isdigit also accepts '²'), and
# few enough that int() never meets its 4300-digit limit; longer ones read as names.
_INDEX = re.compile(r"-?[0-9]{1,18}")
_NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
# Unknown field names are named back to the client, cut to this length.
_MAX_NAME = 64


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
        errors = [FieldError([_short(p) for p in e["loc"]], e["msg"]) for e in exc.errors()]
        where = ", ".join(".".join(str(p) for p in e.loc) or "body" for e in errors)
        raise InvalidInputError(f"invalid field(s): {where}", errors) from None


def _short(part: str | int) -> str | int:
    return part if isinstance(part, int) or len(part) <= _MAX_NAME else part[:_MAX_NAME] + "…"


def params_from_query(query: Mapping[str, str], cls: type[BaseModel]) -> dict[str, Any]:
    """The request fields of an .npy-body call, from its query string, ready for pydantic.

    Numbers stay strings for pydantic to coerce, so a bad one is a 422 naming its field.
    `labels` is one label or a comma-separated list; a part written as a plain integer
    is a class index, anything else a class name. The arrays travel in the body alone.
    """
    for key, where in (("inputs", "the binary body"), ("mask", "a JSON body (application/json)")):
        if key in query and key in cls.model_fields:
            raise InvalidInputError.field([key], f"with an application/x-npy body, send {key} in {where}")
    params: dict[str, Any] = dict(query)
    if "context" in params:  # one context row for all rows, comma-separated; numbers checked later
        params["context"] = [part.strip() for part in params["context"].split(",")]
    if "labels" in params:
        items: list[int | str] = [
            int(p) if _INDEX.fullmatch(p) else p
            for p in (part.strip() for part in params["labels"].split(","))
        ]
        params["labels"] = items if len(items) > 1 else items[0]
    params["inputs"] = None  # checked from the body by array_from_npy
    return params


def array_from_json(value: Any, field: str) -> np.ndarray:
    """Nested JSON lists -> a numeric array, or a 422 naming `field`."""
    if value is None:
        raise InvalidInputError.field([field], "is required")
    if isinstance(value, bool | str | dict):
        raise InvalidInputError.field([field], "must be a nested list of numbers")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError):
        raise InvalidInputError.field([field], "must be a rectangular nested list of numbers") from None
    return arr


def array_from_npy(raw: bytes, field: str = "inputs") -> np.ndarray:
    """An application/x-npy body -> a read-only array over the body's bytes (never unpickles).

    The header is checked before anything is allocated: `np.load` sizes its buffer from
    the header, so a 200-byte body declaring a terabyte array would make it try to
    allocate a terabyte. Here the declared size must match the bytes actually sent.
    """
    buf = io.BytesIO(raw)
    try:
        version = npy_format.read_magic(buf)
        reader = _NPY_HEADER_READERS.get(version)
        header = reader(buf) if reader is not None else None
    except Exception:  # numpy's header parser raises ValueError, EOFError, TokenError, ...
        raise MalformedBodyError("the body is not a valid .npy array") from None
    if header is None:  # 3.0 differs only for non-Latin-1 field names, never numeric arrays
        raise MalformedBodyError(
            f"the body is not a valid .npy array for this server (format version "
            f"{version[0]}.{version[1]}; versions 1.0 and 2.0 are read)"
        )
    shape, fortran, dtype = header
    # numpy's reader checks only that each dimension is an int: True, negative numbers and
    # thousand-digit numbers all pass it.
    if not all(type(d) is int and 0 <= d <= sys.maxsize for d in shape):
        raise MalformedBodyError("the .npy header declares an invalid shape")
    if dtype.kind not in "biuf":
        raise InvalidInputError.field([field], "the .npy array must be numeric")
    count, sent = math.prod(shape), len(raw) - buf.tell()
    if count * dtype.itemsize != sent:
        raise MalformedBodyError(f"the .npy header's shape and dtype do not match the {sent} data bytes sent")
    try:
        return np.frombuffer(raw, dtype=dtype, count=count, offset=buf.tell()).reshape(
            shape, order="F" if fortran else "C"
        )
    except (TypeError, ValueError):  # a shape numpy cannot represent, e.g. a 0 beside a huge side
        raise MalformedBodyError("the .npy header declares an invalid shape") from None


def arrays_from_npz(raw: bytes, allowed: tuple[str, ...], limit: int) -> dict[str, np.ndarray]:
    """An application/x-npz body (numpy.savez) -> its arrays, each read like an .npy body.

    Only the named arrays are accepted, each once, and the members' declared sizes together
    are checked against `limit` before anything is decompressed: deflate packs a lot of
    zeros into a small body.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(raw))
        members = archive.infolist()
    except Exception:  # zipfile raises BadZipFile, NotImplementedError, ValueError, ...
        raise MalformedBodyError("the body is not a valid .npz archive") from None
    names = [info.filename.removesuffix(".npy") for info in members]
    for name in names:
        if name not in allowed:
            raise InvalidInputError.field(
                [_short(name)], f"unknown array; an .npz body holds {', '.join(allowed)}"
            )
    if len(set(names)) != len(names):
        raise MalformedBodyError("the .npz archive holds an array twice")
    unpacked = sum(info.file_size for info in members)
    if unpacked > limit:
        raise PayloadTooLargeError(f"the .npz arrays unpack to {unpacked} bytes, over the limit of {limit}")
    out: dict[str, np.ndarray] = {}
    for name, info in zip(names, members, strict=True):
        try:
            data = archive.read(info)
        except Exception:  # corrupt data, encryption, an unknown compression, ...
            raise MalformedBodyError(f"the .npz member {name} cannot be read") from None
        out[name] = array_from_npy(data, name)
    return out

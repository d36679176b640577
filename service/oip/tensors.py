"""Open Inference Protocol tensors: datatypes, and named arrays to and from the wire.

Transport-free: the REST front hands in the JSON header and the binary tail, the gRPC front
its `raw_*_contents`; both get numpy arrays back, and write numpy arrays out. Row-major,
little-endian, no padding, as the protocol's binary data extension lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InvalidInputError, MalformedBodyError

# OIP datatype name -> numpy dtype (little-endian); BYTES has no fixed-size dtype.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
DATATYPES = (*DTYPES, "BYTES")


_NAMES = {dtype.newbyteorder("="): name for name, dtype in DTYPES.items()}


def datatype_of(arr: np.ndarray) -> str:
    """The OIP datatype name of a numpy array's dtype (either byte order)."""
    name = _NAMES.get(arr.dtype.newbyteorder("="))
    if name is None:
        raise TypeError(f"no OIP datatype for {arr.dtype}")
    return name


@dataclass
class InputTensor:
    """One request input: its declared name, datatype and shape, and its data (an array)."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


def _check_header(spec: Any, i: int) -> tuple[str, str, list[int]]:
    where = f"inputs[{i}]"
    if not isinstance(spec, dict):
        raise InvalidInputError.field([where], "must be an object with name, shape, datatype and data")
    name, datatype, shape = spec.get("name"), spec.get("datatype"), spec.get("shape")
    if not isinstance(name, str) or not name:
        raise InvalidInputError.field([where, "name"], "is required: a string")
    if datatype not in DATATYPES:
        raise InvalidInputError.field([name, "datatype"], f"must be one of {', '.join(DATATYPES)}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        or len(shape) > 8
    ):
        raise InvalidInputError.field([name, "shape"], "must be a list of non-negative integers")
    return name, datatype, shape


def _elements(shape: list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


def array_from_bytes(raw: bytes | memoryview, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from its raw bytes: size checked against the declared shape first."""
    if datatype == "BYTES":
        raise InvalidInputError.field(
            [name, "datatype"], "BYTES tensors are not inputs of any genserve model"
        )
    dtype = DTYPES[datatype]
    expected = _elements(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError.field(
            [name], f"holds {len(raw)} bytes; shape {shape} of {datatype} needs {expected}"
        )
    arr = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL" and len(arr) and np.frombuffer(raw, np.uint8).max() > 1:
        raise InvalidInputError.field([name], "BOOL bytes must be 0 or 1")
    return arr.reshape(shape)


def array_from_json(data: Any, datatype: str, shape: list[int], name: str) -> np.ndarray:
    """A tensor from JSON `data`, flat or nested, in row-major order."""
    if datatype == "BYTES":
        raise InvalidInputError.field(
            [name, "datatype"], "BYTES tensors are not inputs of any genserve model"
        )
    if not isinstance(data, list):
        raise InvalidInputError.field([name, "data"], "must be a list (flat or nested) of numbers")
    dtype = DTYPES[datatype]
    try:
        # One C pass; integer and boolean tensors keep the JSON types to check them.
        flat = np.asarray(data, dtype=np.float64 if dtype.kind == "f" else None).reshape(-1)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError.field([name, "data"], "must be a rectangular list of numbers") from None
    if len(flat) != _elements(shape):
        raise InvalidInputError.field(
            [name, "data"], f"holds {len(flat)} elements; shape {shape} needs {_elements(shape)}"
        )
    if dtype.kind == "b" and flat.dtype.kind != "b" and len(flat):
        raise InvalidInputError.field([name, "data"], "BOOL data must be true or false")
    if dtype.kind in "iu" and flat.dtype.kind not in "iu" and len(flat):
        raise InvalidInputError.field([name, "data"], f"{datatype} data must be integers")
    if dtype.kind in "iu" and len(flat):
        info = np.iinfo(dtype)
        if flat.min() < info.min or flat.max() > info.max:
            raise InvalidInputError.field([name, "data"], f"a value is out of range for {datatype}")
    return flat.astype(dtype).reshape(shape)


def read_inputs(header: dict[str, Any], binary: memoryview | bytes = b"") -> dict[str, InputTensor]:
    """The named inputs of a request: JSON `data`, or `binary_data_size` bytes taken in order
    from the binary tail (REST's binary extension; gRPC's raw contents joined the same way)."""
    specs = header.get("inputs")
    if not isinstance(specs, list) or not specs:
        raise InvalidInputError.field(["inputs"], "is required: a non-empty list of tensors")
    out: dict[str, InputTensor] = {}
    offset = 0
    tail = memoryview(binary)
    for i, spec in enumerate(specs):
        name, datatype, shape = _check_header(spec, i)
        if name in out:
            raise InvalidInputError.field([name], "is given twice")
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise InvalidInputError.field([name, "parameters"], "must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise InvalidInputError.field(
                    [name, "parameters", "binary_data_size"], "must be a byte count"
                )
            if "data" in spec:
                raise InvalidInputError.field([name, "data"], "give data or binary_data_size, not both")
            if offset + size > len(tail):
                raise MalformedBodyError(
                    f"input {name} declares {size} binary bytes but the body has {len(tail) - offset} left"
                )
            data = array_from_bytes(tail[offset : offset + size], datatype, shape, name)
            offset += size
        else:
            if "data" not in spec:
                raise InvalidInputError.field([name, "data"], "is required (or binary_data_size)")
            data = array_from_json(spec["data"], datatype, shape, name)
        out[name] = InputTensor(name, datatype, shape, data, params)
    if offset != len(tail):
        raise MalformedBodyError(f"the body has {len(tail) - offset} binary bytes no input claims")
    return out


def raw_bytes(arr: np.ndarray) -> bytes:
    """An output's bytes as the binary extension and gRPC raw contents carry them."""
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()

"""OIP tensors: JSON and binary data in, with the shape and size checks that name the tensor."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import GenserveError, InvalidInputError, MalformedBodyError
from service.oip.tensors import DTYPES, datatype_of, raw_bytes, read_inputs


def test_json_data_flat_or_nested_gives_the_same_row_major_array() -> None:
    flat = read_inputs(
        {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]}]}
    )
    nested = read_inputs(
        {"inputs": [{"name": "x", "datatype": "INT64", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6]]}]}
    )
    assert flat["x"].data.tolist() == nested["x"].data.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert flat["x"].data.dtype == np.int64


@pytest.mark.parametrize("datatype", sorted(DTYPES))
def test_every_datatype_round_trips_through_its_bytes(datatype: str) -> None:
    dtype = DTYPES[datatype]
    values = np.array([[0, 1], [1, 0]]).astype(dtype)
    blob = raw_bytes(values)
    assert len(blob) == values.size * dtype.itemsize
    spec = {"name": "t", "datatype": datatype, "shape": [2, 2], "parameters": {"binary_data_size": len(blob)}}
    got = read_inputs({"inputs": [spec]}, blob)["t"].data
    assert got.dtype == dtype and got.tolist() == values.tolist()
    assert datatype_of(got) == datatype


def test_binary_tensors_are_taken_in_order_from_the_tail() -> None:
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False])
    head = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": 24}},
            {"name": "j", "datatype": "INT32", "shape": [1], "data": [7]},
            {"name": "b", "datatype": "BOOL", "shape": [2], "parameters": {"binary_data_size": 2}},
        ]
    }
    got = read_inputs(head, raw_bytes(a) + raw_bytes(b))
    assert got["a"].data.tolist() == a.tolist() and got["b"].data.tolist() == [True, False]
    assert got["j"].data.tolist() == [7]


@pytest.mark.parametrize(
    ("spec", "tail", "error", "names"),
    [
        ({"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0]}, b"", InvalidInputError, "x.data"),
        (
            {"name": "x", "datatype": "FP33", "shape": [2], "data": [1, 2]},
            b"",
            InvalidInputError,
            "x.datatype",
        ),
        ({"name": "x", "datatype": "FP32", "shape": [-2], "data": [1]}, b"", InvalidInputError, "x.shape"),
        (
            {"name": "x", "datatype": "INT64", "shape": [2], "data": [1.5, 2]},
            b"",
            InvalidInputError,
            "integers",
        ),
        (
            {"name": "x", "datatype": "INT8", "shape": [1], "data": [300]},
            b"",
            InvalidInputError,
            "out of range",
        ),
        (
            {"name": "x", "datatype": "BOOL", "shape": [1], "data": [1]},
            b"",
            InvalidInputError,
            "true or false",
        ),
        ({"name": "x", "datatype": "BYTES", "shape": [1], "data": ["a"]}, b"", InvalidInputError, "BYTES"),
        ({"name": "x", "datatype": "FP32", "shape": [2]}, b"", InvalidInputError, "x.data"),
        (
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 4}},
            b"\0" * 4,
            InvalidInputError,
            "needs 8",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [2], "parameters": {"binary_data_size": 8}},
            b"\0" * 4,
            MalformedBodyError,
            "4 left",
        ),
        (
            {"name": "x", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": 1}},
            b"\x02",
            InvalidInputError,
            "0 or 1",
        ),
        (
            {"name": "x", "datatype": "FP32", "shape": [1], "parameters": {"binary_data_size": 4}},
            b"\0" * 8,
            MalformedBodyError,
            "no input claims",
        ),
    ],
)
def test_bad_tensors_are_refused_naming_the_tensor(
    spec: dict[str, object], tail: bytes, error: type[GenserveError], names: str
) -> None:
    with pytest.raises(error) as info:
        read_inputs({"inputs": [spec]}, tail)
    assert names in info.value.detail


def test_a_request_needs_inputs_each_named_once() -> None:
    with pytest.raises(InvalidInputError, match="inputs"):
        read_inputs({})
    twice = {"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}
    with pytest.raises(InvalidInputError, match="twice"):
        read_inputs({"inputs": [twice, twice]})

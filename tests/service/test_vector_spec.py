"""The vector part of the contract: a manifest whose graphs or outlier record do not fit its
data spec fails at load, not at the first request."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.manifest import IMAGE_OUTLIER_METHODS, Manifest
from service.outliers import NEEDS_BACKGROUND, NEEDS_IMAGES


def _manifest(store: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((store / name / "1" / "manifest.json").read_text())
    return data


def test_published_vector_manifests_validate(vector_store: Path) -> None:
    for name in ("npe-two-moons", "flow-wine"):
        m = Manifest.model_validate(_manifest(vector_store, name))
        assert m.dataset.kind == "vectors"


def test_graph_inputs_must_match_the_spec(vector_store: Path) -> None:
    data = _manifest(vector_store, "npe-two-moons")
    log_prob = next(g for g in data["graphs"] if g["name"] == "log_prob")
    log_prob["inputs"] = [t for t in log_prob["inputs"] if t["name"] != "c"]
    with pytest.raises(ValidationError, match="log_prob takes"):
        Manifest.model_validate(data)
    data = _manifest(vector_store, "npe-two-moons")
    inverse = next(g for g in data["graphs"] if g["name"] == "inverse")
    inverse["inputs"][0]["shape"] = ["batch", 3]
    with pytest.raises(ValidationError, match="inverse takes"):
        Manifest.model_validate(data)


def test_image_outlier_methods_are_refused_on_vectors(vector_store: Path) -> None:
    data = _manifest(vector_store, "flow-wine")
    data["calibration"]["scores"]["complexity"] = data["calibration"]["scores"]["nll"]
    with pytest.raises(ValidationError, match="images only"):
        Manifest.model_validate(data)
    assert NEEDS_IMAGES | NEEDS_BACKGROUND == IMAGE_OUTLIER_METHODS


def test_a_context_check_needs_its_graph(vector_store: Path) -> None:
    data = _manifest(vector_store, "npe-two-moons")
    data["context_check"] = None
    with pytest.raises(ValidationError, match="come together"):
        Manifest.model_validate(data)

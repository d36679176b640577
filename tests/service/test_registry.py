"""Which model versions a server loads, and which one answers a request.

`GENSERVE_MODELS` entries are `name` (the latest version) or `name@version`; several
versions of a model may be served side by side (a canary, or a rollback target kept
warm), and a request that names no version gets the highest one loaded.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.config import Settings
from tests.service.asgi import Client
from tests.service.publishing import republish

MODEL = "vae-digits"


@pytest.fixture(scope="module")
def two_versions(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store holding versions 1 and 2 of the VAE."""
    root = tmp_path_factory.mktemp("versions") / "store"
    shutil.copytree(tiny_store / MODEL, root / MODEL)
    assert republish(root, MODEL) == 2
    return root


@pytest.fixture
def side_by_side(two_versions: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=two_versions, models=[MODEL, f"{MODEL}@1"]))
    yield c
    c.close()


def test_a_name_alone_loads_the_latest_version(two_versions: Path) -> None:
    c = Client(Settings(model_store=two_versions))
    try:
        listed = c.get("/models").json()
        assert [(m["name"], m["version"], m["default"]) for m in listed] == [(MODEL, 2, True)]
        assert c.post("/sample", json={"model": MODEL, "n": 1}).headers["x-genserve-model"] == f"{MODEL}/2"
        r = c.post("/sample", json={"model": MODEL, "version": 1, "n": 1})
        assert r.status_code == 404 and r.json()["errors"][0]["loc"] == ["version"]
        assert "loaded: 2" in r.json()["detail"]
    finally:
        c.close()


def test_a_pinned_version_is_served_instead_of_the_latest(two_versions: Path) -> None:
    c = Client(Settings(model_store=two_versions, models=[f"{MODEL}@1"]))
    try:
        assert c.get("/health/ready").json()["models"] == {MODEL: "v1 on cpu"}
        r = c.post("/log-likelihood", json={"model": MODEL, "inputs": [[[0] * 8] * 8], "labels": 0})
        assert r.status_code == 200 and r.json()["version"] == 1
        assert c.get(f"/models/{MODEL}").json()["version"] == 1
    finally:
        c.close()


def test_versions_side_by_side_each_answer_their_own_requests(side_by_side: Client) -> None:
    c = side_by_side
    listed = c.get("/models").json()
    assert [(m["name"], m["version"], m["default"]) for m in listed] == [(MODEL, 1, False), (MODEL, 2, True)]
    assert c.get("/health/ready").json()["models"] == {MODEL: "v1, v2 on cpu"}
    body = {"model": MODEL, "n": 3, "labels": 4, "seed": 11}
    default = c.post("/sample", json=body)
    v1 = c.post("/sample", json={**body, "version": 1})
    v2 = c.post("/sample", json={**body, "version": 2})
    assert [r.json()["version"] for r in (default, v1, v2)] == [2, 1, 2]
    # the same graphs republished: the same seeded samples from either version
    assert v1.json()["samples"] == v2.json()["samples"] == default.json()["samples"]
    detail = c.get(f"/models/{MODEL}", params={"version": 1}).json()
    assert (detail["version"], detail["default"]) == (1, False)
    assert c.get(f"/models/{MODEL}").json()["version"] == 2
    missing = c.get(f"/models/{MODEL}", params={"version": 3})
    assert missing.status_code == 404 and "loaded: 1, 2" in missing.json()["detail"]
    assert c.get(f"/models/{MODEL}", params={"version": 0}).status_code == 422
    metrics = c.get("/metrics").text
    for version in ("1", "2"):
        assert f'endpoint="/sample",model="{MODEL}",status="200",version="{version}"' in metrics


def test_a_pinned_version_missing_from_the_store_is_a_named_failure(two_versions: Path) -> None:
    c = Client(Settings(model_store=two_versions, models=[MODEL, f"{MODEL}@9"], allow_partial=True))
    try:
        ready = c.get("/health/ready").json()
        assert "no version 9" in ready["failures"][f"{MODEL}@9"], ready
        # the latest still answers; the failed pin is a 503 (this replica), not a 404
        assert c.post("/sample", json={"model": MODEL, "n": 1}).status_code == 200
        r = c.post("/sample", json={"model": MODEL, "version": 9, "n": 1})
        assert r.status_code == 503 and r.json()["type"] == "urn:genserve:problem:not-ready"
    finally:
        c.close()


def test_a_name_and_its_latest_pinned_load_once(two_versions: Path) -> None:
    c = Client(Settings(model_store=two_versions, models=[MODEL, f"{MODEL}@2"]))
    try:
        assert [m["version"] for m in c.get("/models").json()] == [2]
        assert c.get("/health/ready").status_code == 200
    finally:
        c.close()

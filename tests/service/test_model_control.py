"""Live model management (GENSERVE_MODEL_CONTROL): poll follows newly published versions,
explicit exposes the OIP repository extension; a load verifies and warms before traffic,
a refused version leaves the old one serving, pinned versions stay pinned, and a version
in use is closed only after its last request."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.model_control import ModelControl
from tests.service.asgi import Client
from tests.service.publishing import publish_corrupted, republish

MODEL = "flow-digits"
TOKEN = "manage-t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SCORE = {"model": MODEL, "inputs": [[[0] * 8] * 8], "labels": 0}


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    """A store of one model at version 1 (copied: the tests publish into it)."""
    root = tmp_path / "store"
    shutil.copytree(tiny_store / MODEL, root / MODEL)
    return root


def _control(c: Client) -> ModelControl:
    control: ModelControl = c.app.state.control
    return control


def poll(c: Client) -> None:
    """One poll, then wait for the unloads it started (in-process, no timer involved)."""
    control = _control(c)
    c.loop.run_until_complete(control.poll())
    settle(c)


def settle(c: Client) -> None:
    async def unloads_done() -> None:
        while _control(c).retiring:
            await asyncio.gather(*(t for _, t in list(_control(c).retiring.values())))

    c.loop.run_until_complete(unloads_done())


def served(c: Client, **headers: str) -> list[int]:
    return [m["version"] for m in c.get("/models", headers=headers).json() if m["name"] == MODEL]


@pytest.fixture
def polling(store: Path) -> Iterator[Client]:
    # A long interval: the tests poll by hand, so that each step is deterministic.
    c = Client(Settings(model_store=store, model_control="poll", poll_interval_s=3600))
    yield c
    c.close()


def test_poll_loads_a_new_version_and_unloads_the_old(polling: Client, store: Path) -> None:
    c = polling
    old = c.app.state.registry.get(MODEL)
    assert served(c) == [1]
    poll(c)  # nothing new: nothing changes
    assert served(c) == [1] and c.app.state.registry.get(MODEL) is old
    assert republish(store, MODEL) == 2
    poll(c)
    assert served(c) == [2]
    r = c.post("/log-likelihood", json=SCORE)
    assert r.status_code == 200 and r.json()["version"] == 2
    assert old.retired and old.users == 0
    assert c.post("/log-likelihood", json={**SCORE, "version": 1}).status_code == 404
    metrics = c.get("/metrics").text
    assert f'genserve_model_loads_total{{model="{MODEL}",outcome="loaded"}} 1.0' in metrics
    assert f'genserve_model_loads_total{{model="{MODEL}",outcome="unloaded"}} 1.0' in metrics
    assert (
        f'genserve_model_info{{backend="onnxruntime",device="cpu",family="flow",model="{MODEL}",version="1"}}'
        not in metrics
    )


def test_a_corrupted_version_is_refused_and_the_old_keeps_serving(polling: Client, store: Path) -> None:
    c = polling
    assert publish_corrupted(store, MODEL) == 2
    poll(c)
    assert served(c) == [1]
    assert c.post("/log-likelihood", json=SCORE).json()["version"] == 1
    ready = c.get("/health/ready")
    assert ready.status_code == 200, ready.json()  # still ready: v1 serves
    assert "sha256 mismatch" in ready.json()["rejected"][f"{MODEL}@2"]
    poll(c)  # the same files: not verified again
    refused = f'genserve_model_loads_total{{model="{MODEL}",outcome="refused"}} 1.0'
    assert refused in c.get("/metrics").text
    # a good version published after it is taken
    assert republish_from(store, 1) == 3
    poll(c)
    assert served(c) == [3]


def republish_from(store: Path, version: int) -> int:
    """Republish version `version` (not the latest, which may be the damaged one)."""
    broken = sorted((store / MODEL).iterdir())
    hidden = [p for p in broken if p.name.isdigit() and int(p.name) > version]
    for p in hidden:
        p.rename(p.with_name(f".hidden-{p.name}"))
    try:
        return republish(store, MODEL)
    finally:
        for p in hidden:
            p.with_name(f".hidden-{p.name}").rename(p)


def test_a_pinned_version_stays_pinned(store: Path) -> None:
    c = Client(Settings(model_store=store, models=[f"{MODEL}@1"], model_control="poll", poll_interval_s=3600))
    try:
        republish(store, MODEL)
        poll(c)
        assert served(c) == [1]
    finally:
        c.close()


def test_a_version_in_use_closes_after_its_last_request(polling: Client, store: Path) -> None:
    c = polling
    old = c.app.state.registry.get(MODEL)
    closed: list[bool] = []
    close = old.backend.close
    old.backend.close = lambda: (closed.append(True), close())  # type: ignore[method-assign]
    with old.in_use():  # a request still running on v1
        republish(store, MODEL)
        c.loop.run_until_complete(_control(c).poll())
        c.loop.run_until_complete(asyncio.sleep(0.05))
        assert served(c) == [2]  # new requests go to v2 at once
        assert old.retired and not closed  # ... but v1 is not closed under the running one
        index = [(e.version, e.state) for e in _control(c).index()]
        assert ("1", "UNLOADING") in index and ("2", "READY") in index
    settle(c)
    assert closed == [True]


def test_a_server_that_started_degraded_becomes_ready_when_a_good_version_arrives(store: Path) -> None:
    publish_corrupted(store, MODEL)  # the latest, v2, is broken
    c = Client(Settings(model_store=store, model_control="poll", poll_interval_s=3600))
    try:
        assert c.get("/health/ready").status_code == 503
        poll(c)  # v2 again: known bad, not retried
        assert c.get("/health/ready").status_code == 503
        assert republish_from(store, 1) == 3
        poll(c)
        assert c.get("/health/ready").status_code == 200
        assert served(c) == [3]
    finally:
        c.close()


def test_poll_picks_up_new_models_and_unloads_removed_ones(store: Path, tiny_store: Path) -> None:
    c = Client(Settings(model_store=store, model_control="poll", poll_interval_s=3600))
    try:
        shutil.copytree(tiny_store / "vae-digits", store / "vae-digits")
        poll(c)
        assert [m["name"] for m in c.get("/models").json()] == [MODEL, "vae-digits"]
        shutil.rmtree(store / "vae-digits")
        poll(c)  # gone once: perhaps being replaced; still served
        assert [m["name"] for m in c.get("/models").json()] == [MODEL, "vae-digits"]
        poll(c)  # gone twice: unloaded
        assert [m["name"] for m in c.get("/models").json()] == [MODEL]
        shutil.copytree(tiny_store / "vae-digits", store / "vae-digits")
        poll(c)  # and back
        assert [m["name"] for m in c.get("/models").json()] == [MODEL, "vae-digits"]
    finally:
        c.close()


def test_a_missing_store_unloads_nothing(polling: Client, store: Path) -> None:
    c = polling
    store.rename(store.with_name("away"))  # an unmounted volume
    try:
        for _ in range(3):
            poll(c)
        assert served(c) == [1]
    finally:
        store.with_name("away").rename(store)


def test_a_named_model_published_after_start_is_loaded(store: Path, tiny_store: Path) -> None:
    c = Client(
        Settings(model_store=store, models=[MODEL, "vae-digits"], model_control="poll", poll_interval_s=3600)
    )
    try:
        assert c.get("/health/ready").status_code == 503  # vae-digits is not in the store yet
        poll(c)
        shutil.copytree(tiny_store / "vae-digits", store / "vae-digits")
        poll(c)
        assert c.get("/health/ready").status_code == 200
        assert [m["name"] for m in c.get("/models").json()] == [MODEL, "vae-digits"]
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["none", "poll"])
def test_the_repository_routes_exist_only_in_explicit_mode(store: Path, mode: Any) -> None:
    c = Client(Settings(model_store=store, model_control=mode, api_token=TOKEN))
    try:
        for path in ("/v2/repository/index", f"/v2/repository/models/{MODEL}/load"):
            r = c.post(path, headers=AUTH)
            assert r.status_code == 404 and "error" in r.json()
        assert "model_repository" not in c.get("/v2", headers=AUTH).json()["extensions"]
    finally:
        c.close()


def test_explicit_mode_needs_a_token(store: Path) -> None:
    with pytest.raises(ValidationError, match="needs an access token"):
        Settings(model_store=store, model_control="explicit")


@pytest.fixture
def explicit(store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=store, model_control="explicit", api_token=TOKEN))
    yield c
    c.close()


def test_explicit_index_load_and_unload(explicit: Client, store: Path) -> None:
    c = explicit
    assert "model_repository" in c.get("/v2", headers=AUTH).json()["extensions"]
    for path in ("/v2/repository/index", f"/v2/repository/models/{MODEL}/unload"):
        assert c.post(path).status_code == 401  # never without the token
    index = c.post("/v2/repository/index", headers=AUTH)
    assert index.json() == [{"name": MODEL, "version": "1", "state": "READY", "reason": ""}]
    # publishing is not loading, in explicit mode
    republish(store, MODEL)
    assert served(c, **AUTH) == [1]
    assert c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH).status_code == 200
    settle(c)
    assert served(c, **AUTH) == [2]
    r = c.post(f"/v2/repository/models/{MODEL}/unload", headers=AUTH, content=b"")
    assert r.status_code == 200, r.text
    settle(c)
    assert served(c, **AUTH) == []
    assert c.post("/log-likelihood", json=SCORE, headers=AUTH).status_code == 404
    assert c.post("/v2/repository/index", headers=AUTH, json={"ready": True}).json() == []
    assert c.post("/v2/repository/index", headers=AUTH).json() == [
        {"name": MODEL, "state": "UNAVAILABLE", "reason": "not loaded"}
    ]
    # an OIP model name stands for its model; a version parameter pins that version
    body = {"parameters": {"version": "1"}}
    assert c.post(f"/v2/repository/models/{MODEL}.sample/load", headers=AUTH, json=body).status_code == 200
    assert served(c, **AUTH) == [1]
    assert c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH).status_code == 200
    assert served(c, **AUTH) == [1]  # pinned stays pinned


def test_explicit_load_errors(explicit: Client, store: Path) -> None:
    c = explicit
    r = c.post("/v2/repository/models/nope/load", headers=AUTH)
    assert r.status_code == 404 and "no model 'nope'" in r.json()["error"]
    r = c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH, json={"parameters": {"config": "{}"}})
    assert r.status_code == 400 and "manifest is its configuration" in r.json()["error"]
    r = c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH, json={"parameters": {"version": 0}})
    assert r.status_code == 400 and "parameters.version" in r.json()["error"]
    r = c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH, json={"parameters": {"version": 7}})
    assert (
        r.status_code == 400
        and "no version 7" in r.json()["error"]
        and "v1 still serving" in r.json()["error"]
    )
    r = c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH, content=b"{not json")
    assert r.status_code == 400
    publish_corrupted(store, MODEL)
    r = c.post(f"/v2/repository/models/{MODEL}/load", headers=AUTH)
    assert r.status_code == 400 and "sha256 mismatch" in r.json()["error"], r.text
    assert served(c, **AUTH) == [1]
    index = c.post("/v2/repository/index", headers=AUTH).json()
    assert {"name": MODEL, "version": "2", "state": "UNAVAILABLE"}.items() <= index[-1].items()

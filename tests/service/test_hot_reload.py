"""Hot reload under load, on a real server process: with 16 clients scoring without pause,
a newly published version is loaded (poll, and explicit load), the answers switch to
it with not one non-2xx response, and a corrupted version is refused while the version
before it keeps serving."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.publishing import publish_corrupted, republish
from tests.service.servers import uvicorn_server

MODEL = "flow-digits"
TOKEN = "reload-t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SCORE = {"model": MODEL, "inputs": [[[3] * 8] * 8], "labels": 1, "seed": 5}
OIP_SCORE = {
    "inputs": [
        {"name": "inputs", "shape": [1, 1, 8, 8], "datatype": "INT64", "data": [3] * 64},
        {"name": "labels", "shape": [1], "datatype": "INT64", "data": [1]},
    ],
    "parameters": {"seed": 5},
}
CONCURRENCY = 16


class Load:
    """CONCURRENCY clients posting /log-likelihood back to back, in a thread of their own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[int, int | None, float | None]] = []  # (status, version, log-likelihood)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _genserve(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            r = await http.post("/log-likelihood", json=SCORE)
            body = r.json() if r.status_code == 200 else None
            self.answers.append(
                (
                    r.status_code,
                    *((body["version"], body["results"][0]["log_likelihood"]) if body else (None, None)),
                )
            )

    async def _oip(self, http: httpx.AsyncClient) -> None:
        while not self._stop.is_set():
            r = await http.post(f"/v2/models/{MODEL}.log_likelihood/infer", json=OIP_SCORE)
            body = r.json() if r.status_code == 200 else None
            if body is None:
                self.answers.append((r.status_code, None, None))
                continue
            ll = next(o["data"][0] for o in body["outputs"] if o["name"] == "log_likelihood")
            self.answers.append((r.status_code, int(body["model_version"]), ll))

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=self.url, headers=AUTH, limits=limits, timeout=60) as http:
            # half the clients on the genserve API, half on OIP: both fronts hold the version
            await asyncio.gather(
                *(self._genserve(http) if i % 2 else self._oip(http) for i in range(CONCURRENCY))
            )

    def wait_for(self, what: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            assert time.monotonic() < deadline, "timed out"
            assert self._thread.is_alive(), "the load generator stopped"
            time.sleep(0.05)

    def count(self) -> int:
        return len(self.answers)

    @contextmanager
    def running(self) -> Iterator[Load]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)


def _versions_since(load: Load, start: int) -> set[int | None]:
    return {v for _, v, _ in load.answers[start:]}


@pytest.fixture
def store(tiny_store: Path, tmp_path: Path) -> Path:
    root = tmp_path / "store"
    shutil.copytree(tiny_store / MODEL, root / MODEL)
    return root


def _check(load: Load) -> None:
    statuses = {s for s, _, _ in load.answers}
    assert statuses == {200}, f"non-2xx answers under reload: {statuses}"
    assert {v for _, v, _ in load.answers} == {1, 2}
    # the same graphs republished: every answer the same number, whichever version gave it
    assert len({ll for _, _, ll in load.answers}) == 1


@pytest.mark.parametrize("mode", ["poll", "explicit"])
def test_a_new_version_under_load_with_zero_errors(store: Path, mode: str) -> None:
    env = {"GENSERVE_MODEL_CONTROL": mode, "GENSERVE_API_TOKEN": TOKEN, "GENSERVE_POLL_INTERVAL_S": "0.2"}
    with uvicorn_server(store, **env) as url, Load(url).running() as load:
        load.wait_for(lambda: load.count() >= 50)
        assert republish(store, MODEL) == 2
        if mode == "explicit":
            r = httpx.post(f"{url}/v2/repository/models/{MODEL}/load", headers=AUTH, timeout=60)
            assert r.status_code == 200, r.text
        load.wait_for(lambda: 2 in _versions_since(load, 0))
        switched = load.count()
        load.wait_for(lambda: load.count() >= switched + 100)
        # every request started after the switch and answered gets v2 (a few in flight may
        # still finish on v1 right after it)
        assert _versions_since(load, switched + 2 * CONCURRENCY) == {2}
        # a corrupted version is refused; v2 keeps serving
        assert publish_corrupted(store, MODEL) == 3
        if mode == "explicit":
            r = httpx.post(f"{url}/v2/repository/models/{MODEL}/load", headers=AUTH, timeout=60)
            assert r.status_code == 400 and "sha256 mismatch" in r.json()["error"]
        else:
            load.wait_for(
                lambda: "flow-digits@3" in httpx.get(f"{url}/health/ready").json().get("rejected", {})
            )
        before = load.count()
        load.wait_for(lambda: load.count() >= before + 100)
        assert _versions_since(load, before) == {2}
        ready = httpx.get(f"{url}/health/ready")
        assert ready.status_code == 200 and "sha256 mismatch" in ready.json()["rejected"]["flow-digits@3"]
    _check(load)

"""Graceful shutdown and start-up on a bad store, with `genserve serve` as a real process."""

from __future__ import annotations

import asyncio
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.config import Settings
from tests.deploy.procs import Server, metric, models_env
from tests.service.publishing import damaged_copy

pytestmark = pytest.mark.slow

GRACE_S = 20.0
N_INFLIGHT = 4


@pytest.fixture
def draining_server(tiny_store: Path, tmp_path: Path) -> Iterator[Server]:
    # Each PixelCNN sampling step waits up to max_delay for company before its graph call
    # (a real batching setting), so an 8x8 sample takes 64 x 50 ms: slow requests that
    # barely use the CPU.
    server = Server(
        tiny_store,
        tmp_path / "server.log",
        env={
            **models_env("pixelcnn-digits"),
            "GENSERVE_MAX_DELAY_MS": "50",
            "GENSERVE_GRACE_PERIOD_S": str(GRACE_S),
        },
    ).start()
    try:
        server.wait_until("/health/ready", 200)
        yield server
    finally:
        server.kill()


def test_sigterm_drains_in_flight_requests_then_exits_zero(draining_server: Server) -> None:
    server = draining_server
    results: list[httpx.Response | BaseException] = []

    def slow_sample(seed: int) -> None:
        body = {"model": "pixelcnn-digits", "n": 3, "labels": 1, "seed": seed}
        try:
            results.append(httpx.post(f"{server.url}/sample", json=body, timeout=60))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow_sample, args=(i,)) for i in range(N_INFLIGHT)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while metric(server.url, "genserve_inflight_requests") < N_INFLIGHT:
        assert time.monotonic() < deadline, "the slow requests never were all in flight"
        time.sleep(0.02)

    server.terminate()
    signalled = time.monotonic()

    ready = httpx.get(f"{server.url}/health/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json()["state"] == "draining"
    assert httpx.get(f"{server.url}/health/live", timeout=5).status_code == 200
    refused = httpx.post(
        f"{server.url}/sample", json={"model": "pixelcnn-digits", "n": 1, "labels": 1}, timeout=5
    )
    assert refused.status_code == 503
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["status"] == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["connection"] == "close"
    # The slow requests were still running when the refusal came back.
    assert metric(server.url, "genserve_inflight_requests") == N_INFLIGHT

    for t in threads:
        t.join(timeout=60)
    assert len(results) == N_INFLIGHT
    for r in results:
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 200, r.text
        assert np.asarray(r.json()["samples"]).shape == (3, 1, 8, 8)

    code = server.wait(timeout=GRACE_S)
    assert code == 0, server.log()
    assert time.monotonic() - signalled < GRACE_S
    log = server.log()
    assert f"SIGTERM: draining, {N_INFLIGHT} request(s) in progress" in log
    assert "model(s) unloaded" in log


@pytest.mark.parametrize(
    ("grace", "signals"),
    [
        ("1", (signal.SIGTERM,)),  # the grace period runs out
        ("30", (signal.SIGINT, signal.SIGINT)),  # a second Ctrl+C ends it early
    ],
)
def test_grace_period_bounds_the_drain(
    tiny_store: Path, tmp_path: Path, grace: str, signals: tuple[int, ...]
) -> None:
    """Requests that outlive the drain are stopped and answered 503 with Retry-After (not
    uvicorn's bare 500 for a cancelled request), several at once, some of them waiting in
    the batcher's queue behind others; the process still exits 0."""
    server = Server(
        tiny_store,
        tmp_path / "server.log",
        env={
            **models_env("pixelcnn-digits"),
            "GENSERVE_MAX_DELAY_MS": "200",  # 64 steps: about 13 s per sample
            "GENSERVE_GRACE_PERIOD_S": grace,
        },
    ).start()
    try:
        server.wait_until("/health/ready", 200)
        outcome: list[Any] = []

        def doomed(label: int) -> None:
            body = {"model": "pixelcnn-digits", "n": 1 + label, "labels": label}
            try:
                outcome.append(httpx.post(f"{server.url}/sample", json=body, timeout=30))
            except httpx.TransportError as exc:
                outcome.append(exc)

        threads = [threading.Thread(target=doomed, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        while metric(server.url, "genserve_inflight_requests") < 3:
            time.sleep(0.02)
        signalled = time.monotonic()
        for sig in signals:
            server.terminate(sig)
            time.sleep(0.3)
        assert server.wait(timeout=15) == 0, server.log()
        # grace (1 s, or the second Ctrl+C) + the answers' second + unloading
        assert time.monotonic() - signalled < 8
        for t in threads:
            t.join(timeout=30)
        assert len(outcome) == 3 and all(isinstance(r, httpx.Response) for r in outcome), outcome
        for r in outcome:
            assert r.status_code == 503, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == "urn:genserve:problem:shutting-down"
            assert r.headers["retry-after"] == "2"
        log = server.log()
        assert "is over with 3 request(s) still running" in log
        assert "models unloaded" in log or "model(s) unloaded" in log, log
        assert "Exception in ASGI application" not in log and "Traceback" not in log, log
    finally:
        server.kill()


# --- start-up on a bad store ------------------------------------------------------------------


@pytest.fixture
def bad_store(tiny_store: Path, tmp_path: Path) -> Path:
    """The tiny store with one byte of vae-digits v1's decoder flipped."""
    return damaged_copy(tiny_store, tmp_path)


def test_bad_store_leaves_the_server_live_but_not_ready(bad_store: Path, tmp_path: Path) -> None:
    server = Server(bad_store, tmp_path / "server.log", env=models_env("vae-digits", "flow-digits")).start()
    try:
        server.wait_until("/health/live", 200)
        ready = httpx.get(f"{server.url}/health/ready", timeout=5)
        assert ready.status_code == 503
        body = ready.json()
        assert body["ready"] is False
        assert body["state"] == "degraded"
        assert "vae-digits/1" in body["failures"]["vae-digits"]
        assert "sha256" in body["failures"]["vae-digits"]
        assert "flow-digits" in body["models"]  # the good one did load
        # Not ready means no model work, not even for the good model (default).
        r = httpx.post(f"{server.url}/sample", json={"model": "flow-digits", "n": 1}, timeout=5)
        assert r.status_code == 503
        assert r.headers["content-type"].startswith("application/problem+json")
        assert httpx.get(f"{server.url}/models", timeout=5).status_code == 200
        log = server.log()
        assert "model vae-digits not loaded: vae-digits/1" in log
        assert "NOT ready" in log
        server.terminate()
        assert server.wait(timeout=15) == 0  # a degraded server shuts down cleanly too
    finally:
        server.kill()


class AppClient:
    """The app in-process, lifespan included."""

    def __init__(self, settings: Settings) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = create_app(settings)
        self._ctx = self.app.router.lifespan_context(self.app)
        self.loop.run_until_complete(self._ctx.__aenter__())
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://t")

    def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.http.request(method, url, **kw))

    def close(self) -> None:
        self.loop.run_until_complete(self.http.aclose())
        self.loop.run_until_complete(self._ctx.__aexit__(None, None, None))
        self.loop.close()


def test_allow_partial_serves_the_good_models(bad_store: Path) -> None:
    c = AppClient(Settings(model_store=bad_store, models=["vae-digits", "flow-digits"], allow_partial=True))
    try:
        ready = c.request("GET", "/health/ready")
        assert ready.status_code == 200
        assert ready.json()["state"] == "ready"
        assert "vae-digits/1" in ready.json()["failures"]["vae-digits"]
        ok = c.request("POST", "/sample", json={"model": "flow-digits", "n": 2, "labels": 3, "seed": 0})
        assert ok.status_code == 200
        bad = c.request("POST", "/sample", json={"model": "vae-digits", "n": 2})
        assert bad.status_code == 503
        assert bad.json()["type"] == "urn:genserve:problem:not-ready"
    finally:
        c.close()


def test_empty_store_is_live_not_ready(tmp_path: Path) -> None:
    c = AppClient(Settings(model_store=tmp_path / "nothing-here"))
    try:
        assert c.request("GET", "/health/live").status_code == 200
        ready = c.request("GET", "/health/ready")
        assert ready.status_code == 503
        assert "no models in" in ready.json()["failures"]["store"]
    finally:
        c.close()


def _replace_and_rehash(version_dir: Path, name: str, data: bytes) -> None:
    """Swap a graph file and re-sign the manifest, so the store verifies but the graph is bad."""
    import hashlib
    import json

    (version_dir / name).write_bytes(data)
    manifest_path = version_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["files"]:
        if entry["path"] == name:
            entry["sha256"] = hashlib.sha256(data).hexdigest()
            entry["bytes"] = len(data)
    manifest_path.write_text(json.dumps(manifest))
    (version_dir / "manifest.sha256").write_text(hashlib.sha256(manifest_path.read_bytes()).hexdigest())


@pytest.mark.parametrize(
    ("swap", "reason"),
    [
        ("garbage", "the runtime could not load it"),  # not an ONNX file at all
        ("other-graph", "warm-up failed"),  # a valid ONNX graph with the wrong inputs
    ],
)
def test_a_verified_but_unusable_graph_also_leaves_the_server_not_ready(
    tiny_store: Path, tmp_path: Path, swap: str, reason: str
) -> None:
    root = tmp_path / "store"
    shutil.copytree(tiny_store, root)
    version_dir = root / "vae-digits" / "1"
    data = (
        b"\x00not onnx\x00" * 100 if swap == "garbage" else (root / "gan-digits/1/generate.onnx").read_bytes()
    )
    _replace_and_rehash(version_dir, "decode.onnx", data)
    c = AppClient(Settings(model_store=root, models=["vae-digits", "gan-digits"]))
    try:
        assert c.request("GET", "/health/live").status_code == 200
        ready = c.request("GET", "/health/ready")
        assert ready.status_code == 503
        assert ready.json()["failures"]["vae-digits"].startswith("vae-digits/1: " + reason)
        assert list(ready.json()["models"]) == ["gan-digits"]
    finally:
        c.close()

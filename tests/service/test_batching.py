"""The dynamic batcher: merging, equality with unbatched results, overload, deadlines, disconnects."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service import batching
from service.api.execution import request_gone
from service.app import create_app
from service.batching import Batcher, BatchLimits, row_parts
from service.config import Settings
from service.core.calls import ClientGoneError, guarded
from service.errors import DeadlineExceededError, OverloadedError
from training.data import load_dataset


class RecordingBackend:
    """Doubles its input, remembering every batch it was given (and which lane calls ran at
    once); optionally slow."""

    name = "fake"
    device = "cpu"

    def __init__(self, delay: float = 0.0, lanes: int = 1) -> None:
        self.batches: list[np.ndarray] = []
        self.lane_calls: list[int] = []
        self.delay = delay
        self.lanes = lanes
        self.lock = threading.Lock()
        self.running = 0
        self.most_at_once = 0

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)
        with self.lock:
            self.running -= 1
            self.batches.append(inputs["x"].copy())
        return {"y": inputs["x"] * 2}

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self.lock:
            self.lane_calls.append(len(inputs["x"]))
        return self.run(graph, inputs)

    def close(self) -> None:
        pass


def test_concurrent_calls_merge_and_split_back() -> None:
    async def main() -> None:
        backend = RecordingBackend(delay=0.02)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend)
        xs = [np.full((i + 1, 3), float(i)) for i in range(10)]
        outs = await asyncio.gather(*(call("g", {"x": x}) for x in xs))
        for x, out in zip(xs, outs, strict=True):
            np.testing.assert_array_equal(out["y"], x * 2)
        assert len(backend.batches) < 10  # merged while the worker was busy
        assert sum(len(b) for b in backend.batches) == sum(len(x) for x in xs)
        await batcher.close()

    asyncio.run(main())


def test_batches_never_mix_model_versions_or_shapes() -> None:
    async def main() -> None:
        v1, v2 = RecordingBackend(0.01), RecordingBackend(0.01)
        batcher = Batcher()
        c1, c2 = batcher.caller("m/v1", v1), batcher.caller("m/v2", v2)
        calls = [c1("g", {"x": np.full((2, 3), 1.0)}) for _ in range(5)]
        calls += [c2("g", {"x": np.full((2, 3), 2.0)}) for _ in range(5)]
        calls += [c1("g", {"x": np.full((2, 4), 1.0)}) for _ in range(3)]  # other trailing shape
        await asyncio.gather(*calls)
        assert all((b == 1.0).all() for b in v1.batches)
        assert all((b == 2.0).all() for b in v2.batches)
        assert all(b.shape[1] in (3, 4) and len({*b.shape[1:]}) == 1 for b in v1.batches)
        await batcher.close()

    asyncio.run(main())


def test_max_batch_caps_merged_rows_and_chunks_big_calls() -> None:
    async def main() -> None:
        backend = RecordingBackend(0.01)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend, BatchLimits(max_batch=4))
        outs = await asyncio.gather(*(call("g", {"x": np.ones((3, 2))}) for _ in range(4)))
        big = await call("g", {"x": np.arange(20.0).reshape(10, 2)})
        assert all(len(b) <= 4 for b in backend.batches)
        np.testing.assert_array_equal(big["y"], np.arange(20.0).reshape(10, 2) * 2)
        assert all(len(o["y"]) == 3 for o in outs)
        await batcher.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("rows", "max_batch", "lanes", "sizes"),
    [
        (1, 4096, 2, [1]),  # one row: one call on every thread
        (5, 4096, 1, [5]),
        (5, 4096, 2, [2, 3]),  # one part per lane
        (3, 4096, 4, [1, 1, 1]),  # never more parts than rows
        (10, 4, 1, [3, 3, 4]),  # max_batch caps every part
        (10, 4, 2, [2, 3, 2, 3]),  # ... and the count rounds up to a multiple of the lanes
    ],
)
def test_row_parts(rows: int, max_batch: int, lanes: int, sizes: list[int]) -> None:
    parts = row_parts(rows, max_batch, lanes)
    assert [p.stop - p.start for p in parts] == sizes
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))


def test_batches_spread_over_lanes_run_side_by_side_and_equal_one_call() -> None:
    async def main() -> None:
        backend = RecordingBackend(delay=0.05, lanes=2)
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend)
        x = np.arange(12.0).reshape(6, 2)
        started = time.perf_counter()
        out = await call("g", {"x": x})
        elapsed = time.perf_counter() - started
        np.testing.assert_array_equal(out["y"], x * 2)
        assert backend.lane_calls == [3, 3]
        assert backend.most_at_once == 2  # the two parts ran at once ...
        assert elapsed < 0.09  # ... so the batch took about one part's time, not two
        single = await call("g", {"x": x[:1]})  # a single row: one call on every thread
        np.testing.assert_array_equal(single["y"], x[:1] * 2)
        assert backend.lane_calls == [3, 3]
        await batcher.close()

    asyncio.run(main())


class GatedBackend(RecordingBackend):
    """Lane calls whose rows hold 9 block until `gate` opens; the others return at once."""

    def __init__(self) -> None:
        super().__init__(lanes=2)
        self.gate = threading.Event()

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (inputs["x"] == 9.0).any():
            assert self.gate.wait(5)
        return super().run_lane(graph, inputs)


def test_a_free_lane_takes_new_calls_while_another_lane_computes() -> None:
    # The lanes used to wait for each other: one slow part held every lane idle, and the
    # event loop answered a batch while no runtime worked (the high-concurrency tail).
    async def main() -> None:
        backend = GatedBackend()
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend)
        slow = asyncio.ensure_future(call("g", {"x": np.array([[9.0], [1.0]])}))  # a part per lane
        await asyncio.sleep(0.05)
        later = await asyncio.wait_for(call("g", {"x": np.array([[2.0], [3.0]])}), 2)
        np.testing.assert_array_equal(later["y"], [[4.0], [6.0]])
        assert not slow.done()  # answered on the free lane while the first batch computes
        backend.gate.set()
        np.testing.assert_array_equal((await slow)["y"], [[18.0], [2.0]])
        assert backend.lane_calls == [1, 2, 1]  # recorded as they end: the gated part last
        await batcher.close()

    asyncio.run(main())


def test_a_lane_takes_its_share_of_the_waiting_calls_while_another_computes() -> None:
    # Taking every waiting call onto the one free lane made one long batch while the other
    # lane was about to free up: the tail of the wait at c=16.
    async def main() -> None:
        backend = GatedBackend()
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend)
        slow = asyncio.ensure_future(call("g", {"x": np.array([[9.0], [1.0]])}))
        await asyncio.sleep(0.05)  # one lane held by the gated part, the other free
        quick = await asyncio.gather(*(call("g", {"x": np.full((1, 1), float(i))}) for i in range(6)))
        assert [int(q["y"][0, 0]) for q in quick] == [0, 2, 4, 6, 8, 10]
        assert backend.lane_calls[:2] == [1, 3]  # half of the six waiting, not all of them
        backend.gate.set()
        await slow
        await batcher.close()

    asyncio.run(main())


def test_calls_are_served_in_arrival_order_across_batches() -> None:
    # No call waits behind a later one: each batch starts with the oldest waiting call.
    async def main() -> None:
        backend = RecordingBackend(delay=0.01, lanes=2)
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend, BatchLimits(max_batch=3))
        order: list[int] = []

        async def one(i: int) -> None:
            await asyncio.sleep(i * 0.002)
            await call("g", {"x": np.full((1, 1), float(i))})
            order.append(i)

        await asyncio.gather(*(one(i) for i in range(40)))
        # Every batch part is a run of consecutive calls: a batch never skips an older
        # waiting call for a newer one (parts may finish out of order across lanes).
        parts = sorted([int(v) for v in b[:, 0]] for b in backend.batches)
        assert [i for p in parts for i in p] == list(range(40))
        assert max(order[:10]) < 20  # the first answers are the first calls, give or take a batch
        await batcher.close()

    asyncio.run(main())


def test_full_queue_is_refused_at_once() -> None:
    async def main() -> None:
        backend = RecordingBackend(delay=0.2)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend, BatchLimits(max_queue=2))
        first = asyncio.ensure_future(call("g", {"x": np.ones((1, 1))}))
        await asyncio.sleep(0.05)  # the first call is running; the queue is empty
        waiting = [asyncio.ensure_future(call("g", {"x": np.ones((1, 1))})) for _ in range(2)]
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(OverloadedError):
            await call("g", {"x": np.ones((1, 1))})
        assert time.perf_counter() - started < 0.05  # immediately, not after a wait
        await asyncio.gather(first, *waiting)
        await batcher.close()

    asyncio.run(main())


def test_cancelled_waiting_call_frees_its_slot() -> None:
    async def main() -> None:
        backend = RecordingBackend(delay=0.1)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend, BatchLimits(max_queue=1))
        running = asyncio.ensure_future(call("g", {"x": np.ones((1, 1))}))
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(call("g", {"x": np.full((1, 1), 7.0)}))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await asyncio.sleep(0)
        ok = await call("g", {"x": np.ones((1, 1))})  # the slot is free again
        assert ok["y"][0, 0] == 2.0
        await running
        assert not any((b == 7.0).any() for b in backend.batches)  # never computed
        await batcher.close()

    asyncio.run(main())


def test_cancelling_a_call_queued_behind_another_frees_it() -> None:
    # A queued call used to be found with ==, which compared the numpy inputs of the calls
    # ahead of it and raised: the grace-period end answered 500s and the call still ran.
    async def main() -> None:
        backend = RecordingBackend(delay=0.1)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend, BatchLimits(max_batch=2))
        running = asyncio.ensure_future(call("g", {"x": np.ones((2, 3))}))
        await asyncio.sleep(0.02)
        ahead = asyncio.ensure_future(call("g", {"x": np.full((2, 3), 5.0)}))
        doomed = asyncio.ensure_future(call("g", {"x": np.full((2, 3), 7.0)}))
        await asyncio.sleep(0.01)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert batcher.queued("m/v1") == 1
        assert (await ahead)["y"][0, 0] == 10.0
        await running
        assert not any((b == 7.0).any() for b in backend.batches)
        await batcher.close()

    asyncio.run(main())


def test_calls_merge_by_work_units_not_rows() -> None:
    # A VAE scoring row carries K importance samples: rows alone let merged batches grow
    # K times past the budget.
    async def main() -> None:
        backend = RecordingBackend(delay=0.05)
        batcher = Batcher()
        call = batcher.caller("m/v1", backend, BatchLimits(max_batch=64))
        blocker = asyncio.ensure_future(call("g", {"x": np.ones((1, 1))}))
        await asyncio.sleep(0.01)
        heavy = [asyncio.ensure_future(call("g", {"x": np.ones((2, 1))}, units=32)) for _ in range(4)]
        await asyncio.gather(blocker, *heavy)
        assert [len(b) for b in backend.batches] == [1, 4, 4]  # 2 calls of 32 units per batch
        await batcher.close()

    asyncio.run(main())


class FakeRequest:
    """Just enough of a Starlette request for the REST front's disconnect watcher: the
    receive channel delivers `http.disconnect` after `after` seconds (never when None), as
    an ASGI server does once the body has been read."""

    def __init__(self, after: float | None) -> None:
        self.after = after
        self.start = time.perf_counter()

    async def receive(self) -> dict[str, Any]:
        if self.after is None:
            await asyncio.Event().wait()
        else:
            await asyncio.sleep(max(0.0, self.after - (time.perf_counter() - self.start)))
        return {"type": "http.disconnect"}


def _pixelcnn_engine(tiny_store: Path, delay: float) -> tuple[Any, list[int]]:
    from service.engine import build_engine
    from service.runtime import load_backend
    from service.store import ModelStore

    version = ModelStore(tiny_store).open("pixelcnn-digits")
    backend = load_backend(version, "onnxruntime", "cpu", 1)
    steps = [0]

    async def slow_call(graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        steps[0] += 1
        await asyncio.sleep(delay)
        return backend.run(graph, inputs)

    return build_engine(version.manifest, slow_call), steps


def test_disconnect_stops_a_sampling_loop_early(tiny_store: Path) -> None:
    engine, steps = _pixelcnn_engine(tiny_store, delay=0.01)
    rng = np.random.Generator(np.random.PCG64(0))

    async def main() -> None:
        with pytest.raises(ClientGoneError):
            gone = FakeRequest(after=0.1)
            await guarded(engine.sample(2, np.array([1, 2]), rng), 30, lambda: request_gone(gone))  # type: ignore[arg-type]
        stopped_at = steps[0]
        await asyncio.sleep(0.1)
        assert steps[0] == stopped_at  # nothing more ran after the disconnect

    asyncio.run(main())
    assert 0 < steps[0] < 64 // 2  # 64 steps for a full 8x8 sample; stopped within a few


def test_deadline_gives_504_and_stops_the_loop(tiny_store: Path) -> None:
    engine, steps = _pixelcnn_engine(tiny_store, delay=0.01)
    rng = np.random.Generator(np.random.PCG64(0))

    async def main() -> None:
        with pytest.raises(DeadlineExceededError):
            gone = FakeRequest(after=None)
            await guarded(engine.sample(2, np.array([1, 2]), rng), 0.1, lambda: request_gone(gone))  # type: ignore[arg-type]

    asyncio.run(main())
    assert steps[0] < 64


# --- through HTTP --------------------------------------------------------------------------


def _with_app(settings: Settings, body: Any) -> Any:
    async def run() -> Any:
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as client:
                return await body(client, app)

    return asyncio.run(run())


def _requests_for(family: str, x: np.ndarray) -> list[tuple[str, dict[str, Any]]]:
    model = f"{family}-digits"
    reqs: list[tuple[str, dict[str, Any]]] = [
        ("/sample", {"model": model, "n": 3, "labels": i % 10, "seed": 100 + i}) for i in range(4)
    ]
    if family != "gan":
        reqs += [("/log-likelihood", {"model": model, "inputs": x[i : i + 2].tolist()}) for i in range(4)]
        reqs += [
            ("/log-likelihood", {"model": model, "inputs": x[i : i + 1].tolist(), "labels": 3})
            for i in range(2)
        ]
    if family in ("flow", "vae"):
        reqs += [
            ("/reconstruct", {"model": model, "inputs": x[i : i + 2].tolist(), "labels": 1, "seed": i})
            for i in range(2)
        ]
    if family == "diffusion":
        bottom = np.ones((2, 8, 8), dtype=int)
        bottom[:, 4:] = 0
        reqs += [  # other step counts, the other sampler, guidance: each step one batched call
            ("/sample", {"model": model, "n": 2, "labels": 4, "seed": 7, "steps": 5, "guidance": 1.5}),
            ("/sample", {"model": model, "n": 2, "labels": 6, "seed": 8, "steps": 2, "sampler": "ancestral"}),
            (
                "/reconstruct",
                {"model": model, "inputs": x[:2].tolist(), "labels": 1, "mask": bottom.tolist(), "seed": 3},
            ),
            (
                "/reconstruct",
                {"model": model, "inputs": x[2:4].tolist(), "labels": 2, "seed": 4, "strength": 0.6},
            ),
        ]
    if family == "pixelcnn":
        bottom = np.ones((2, 8, 8), dtype=int)
        bottom[:, 5:] = 0  # exact completion
        hole = np.ones((2, 8, 8), dtype=int)
        hole[:, 3:5, 3:5] = 0  # the particle filter: more rows per step, resampling
        reqs += [
            (
                "/reconstruct",
                {
                    "model": model,
                    "inputs": x[i : i + 2].tolist(),
                    "labels": 1,
                    "mask": mask.tolist(),
                    "seed": i,
                    "particles": 4,
                },
            )
            for i, mask in enumerate([bottom, hole, hole])
        ]
    return reqs


@pytest.mark.parametrize("lanes", [1, 2])
@pytest.mark.parametrize("family", ["flow", "vae", "gan", "pixelcnn", "diffusion"])
def test_batched_equals_unbatched(tiny_store: Path, family: str, lanes: int) -> None:
    x = load_dataset("digits").x[:8, 0]
    reqs = _requests_for(family, x)

    async def sequential(client: httpx.AsyncClient, app: Any) -> tuple[list[Any], int]:
        before = app.state.registry.batcher.batches
        out = [(await client.post(url, json=body)).json() for url, body in reqs]
        return out, app.state.registry.batcher.batches - before

    async def concurrent(client: httpx.AsyncClient, app: Any) -> tuple[list[Any], int]:
        before = app.state.registry.batcher.batches
        rs = await asyncio.gather(*(client.post(url, json=body) for url, body in reqs))
        return [r.json() for r in rs], app.state.registry.batcher.batches - before

    # One thread per session (threads = lanes): ONNX Runtime's multi-threaded kernels split
    # their work by batch size, which moves a row's last bits with the batch it is in
    # (7e-11 relative on the tiny flow's log-likelihood, threads=2 and one lane).
    settings = Settings(model_store=tiny_store, models=[f"{family}-digits"], threads=lanes, lanes=lanes)
    alone, calls = _with_app(settings, sequential)  # one request at a time: every graph call alone
    together, batches = _with_app(settings, concurrent)
    assert together == alone
    assert batches < calls  # something was actually merged


def test_http_overload_gives_503_with_retry_after(tiny_store: Path) -> None:
    settings = Settings(model_store=tiny_store, models=["pixelcnn-digits"], max_queue=1, max_batch=2)

    async def flood(client: httpx.AsyncClient, app: Any) -> list[httpx.Response]:
        body = {"model": "pixelcnn-digits", "n": 2, "seed": 1}
        return list(await asyncio.gather(*(client.post("/sample", json=body) for _ in range(12))))

    rs = _with_app(settings, flood)
    codes = [r.status_code for r in rs]
    assert 200 in codes
    assert 503 in codes
    refused = next(r for r in rs if r.status_code == 503)
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["type"].endswith("overloaded")


def test_http_deadline_gives_504_then_next_request_succeeds(tiny_store: Path) -> None:
    settings = Settings(model_store=tiny_store, models=["pixelcnn-digits"])

    async def body(client: httpx.AsyncClient, app: Any) -> tuple[httpx.Response, httpx.Response]:
        slow = await client.post("/sample", json={"model": "pixelcnn-digits", "n": 64, "timeout": 0.005})
        ok = await client.post("/sample", json={"model": "pixelcnn-digits", "n": 2, "seed": 3})
        return slow, ok

    slow, ok = _with_app(settings, body)
    assert slow.status_code == 504
    assert slow.json()["type"].endswith("deadline-exceeded")
    assert ok.status_code == 200


class ThreadNoting(RecordingBackend):
    """Notes the thread every batch ran on."""

    def __init__(self, delay: float = 0.0, lanes: int = 2) -> None:
        super().__init__(delay, lanes)
        self.threads: list[int] = []

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.threads.append(threading.get_ident())
        return super().run(graph, inputs)


@pytest.mark.parametrize(("delay", "inline"), [(0.0, True), (0.05, False)])
def test_quick_graphs_run_on_the_event_loop_and_slow_ones_on_the_lanes(
    delay: float, inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sampling loop's calls (one after another, each a few hundred microseconds) would
    pay a thread hand-off each; once a graph is known to be quick, it runs inline."""
    # A looser threshold than the real one: a busy CI machine must not make a no-op slow.
    monkeypatch.setattr(batching, "INLINE_BELOW", 0.02)

    async def main() -> None:
        backend = ThreadNoting(delay)
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend)
        for i in range(5):
            out = await call("g", {"x": np.full((1, 3), float(i))})
            np.testing.assert_array_equal(out["y"], np.full((1, 3), 2.0 * i))
        loop_thread = threading.get_ident()
        assert backend.threads[0] != loop_thread  # not known to be quick yet
        assert all((t == loop_thread) == inline for t in backend.threads[1:])
        await batcher.close()

    asyncio.run(main())


def test_a_large_batch_of_a_quick_graph_goes_to_the_lanes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Judged per row: small calls that ran inline do not bring a large batch onto the loop."""
    monkeypatch.setattr(batching, "INLINE_BELOW", 0.02)

    async def main() -> None:
        backend = ThreadNoting(0.001)  # ~1 ms a batch, whatever its rows: at one row, 1 ms a row
        batcher = Batcher(lanes=2)
        call = batcher.caller("m/v1", backend)
        for _ in range(3):
            await call("g", {"x": np.ones((1, 3))})
        loop_thread = threading.get_ident()
        assert backend.threads[-1] == loop_thread  # one row: quick
        backend.threads.clear()
        await call("g", {"x": np.ones((64, 3))})  # 64 rows at ~1 ms a row: not quick
        assert backend.threads and loop_thread not in backend.threads
        await batcher.close()

    asyncio.run(main())


def test_a_quick_graph_goes_to_a_lane_while_another_lane_computes() -> None:
    async def main() -> None:
        quick, slow = ThreadNoting(0.0, lanes=3), ThreadNoting(0.2, lanes=3)
        batcher = Batcher(lanes=3)
        call_quick, call_slow = batcher.caller("q/v1", quick), batcher.caller("s/v1", slow)
        for _ in range(2):  # learn that it is quick
            await call_quick("g", {"x": np.ones((1, 3))})
        quick.threads.clear()
        busy = asyncio.ensure_future(call_slow("g", {"x": np.ones((2, 3))}))
        await asyncio.sleep(0.02)  # the slow batch's two parts hold two of the three lanes
        await call_quick("g", {"x": np.ones((1, 3))})
        assert quick.threads and quick.threads[0] != threading.get_ident()
        assert not busy.done()  # it ran beside the slow batch, on the free lane
        await busy
        await batcher.close()

    asyncio.run(main())

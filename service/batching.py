"""Dynamic batching: concurrent graph calls for one model version and graph become one call.

Every graph call goes through one scheduler. Calls queue per (model version, graph); when
a runtime lane is free, the scheduler takes the queue with the oldest waiting call and
merges as many compatible calls (same trailing shapes) as fit in `max_batch` work units
into one batch, then splits the outputs back. The oldest call is always in the next batch,
so requests for a model are served in arrival order and none waits behind a later one.

The lanes are the parallelism (two runtimes each using every core fight, see DESIGN.md):
a batch is cut by rows into one part per free lane, each run on a share of the threads
(`Backend.run_lane`), since small graphs use cores better side by side than through
intra-op threads. Each lane takes the next work as soon as it is free, without waiting
for the other lanes' parts: under load the lanes drift apart, and the event loop answers
one lane's batch while the other lane computes, instead of every lane idling while the
loop answers them all. A single row with every lane free runs as one call on every
thread; backends with one lane (TorchScript, CUDA) run one batch at a time.

So a lone request pays no waiting (no artificial delay unless `max_delay` is set), and
under load batches grow by themselves. Merged calls never mix model versions or graphs,
and per-request noise is an input, so a seeded request gives the same answer batched or
not. PixelCNN loops of concurrent requests advance together: the calls of one batch are
answered together, and when nothing else is waiting the scheduler yields to the event
loop so every loop can queue its next step before the next batch is formed.

A batch that the graph's recent batches say computes in under `INLINE_BELOW` (a
PixelCNN's pixel step at batch 1: a few hundred microseconds; the estimate is rows times
the recent seconds per row) runs on the event loop itself when every lane is free:
handing it to a thread and back costs about as much again (two thread wake-ups), and a
sampling loop makes hundreds of such calls in a row. Anything slower, or anything
arriving while a lane computes, goes to the lanes as above.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .engine import GraphCaller
from .errors import NotReadyError, OverloadedError
from .metrics import Metrics
from .runtime import Arrays, Backend

# Batches expected to compute faster than this run on the event loop when
# every lane is free. A thread hand-off and back cost ~0.3 ms here (bench/pixelcnn_sampling
# notes), about what a pixel step computes; blocking the loop this long is what parsing one
# request costs.
INLINE_BELOW = 0.0005


@dataclass(frozen=True)
class BatchLimits:
    """Per-model batching and queueing limits."""

    max_batch: int = 4096  # work units (rows, or rows x samples) per runtime call
    max_delay: float = 0.0  # seconds a partial batch may wait for company
    max_queue: int = 256  # waiting calls per model before new ones get 503


@dataclass(eq=False)  # identity: field equality would compare numpy inputs (and raise)
class _Call:
    inputs: Mapping[str, np.ndarray]
    rows: int
    units: int  # work units: rows, times the samples per row for sampled graphs
    signature: tuple[tuple[str, tuple[int, ...]], ...]
    future: asyncio.Future[Arrays]
    enqueued: float


@dataclass
class _Queue:
    model: str
    graph: str
    backend: Backend
    limits: BatchLimits
    calls: deque[_Call] = field(default_factory=deque)
    labels: tuple[str, str] = field(init=False)  # (name, version) for metrics
    per_row: float = math.inf  # moving average of whole batches' compute seconds per row

    def observe(self, seconds: float, rows: int) -> None:
        """A whole batch (every thread, or inline) of `rows` rows computed in `seconds`.

        Per row, so a large batch is never judged by small ones; a call's fixed cost
        counted per row overestimates larger batches, which errs towards the lanes."""
        seconds /= max(rows, 1)
        self.per_row = seconds if math.isinf(self.per_row) else 0.7 * self.per_row + 0.3 * seconds

    def __post_init__(self) -> None:
        name, sep, version = self.model.rpartition("/v")  # the caller's `name/vN` key
        self.labels = (name, version) if sep else (self.model, "")


@dataclass(eq=False)
class _Batch:
    """Merged calls being computed, in parts; answered when the last part is back."""

    queue: _Queue
    calls: list[_Call]
    started: float
    outs: list[Arrays | None]
    left: int  # parts not back yet
    error: BaseException | None = None


@dataclass(eq=False)
class _Part:
    batch: _Batch
    index: int
    feeds: dict[str, np.ndarray]


class Batcher:
    """The scheduler in front of the runtimes: batches formed as lanes free up."""

    def __init__(self, metrics: Metrics | None = None, lanes: int = 1) -> None:
        # One thread for calls on every runtime thread; the lane threads run batch parts.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genserve-inference")
        self._lanes = (
            ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="genserve-lane") if lanes > 1 else None
        )
        self._slots = lanes if self._lanes is not None else 1
        self._free = self._slots  # lanes not computing; a whole-thread call holds them all
        self._parts: deque[_Part] = deque()  # cut from formed batches, waiting for a lane
        # Keyed by the backend too: an unloaded version loaded again gets fresh queues, never
        # the old ones that hold the closed backend.
        self._queues: dict[tuple[str, str, int], _Queue] = {}
        self._running: dict[int, int] = {}  # id(backend) -> its runtime calls in progress
        self._tasks: set[asyncio.Task[None]] = set()
        self._finished: asyncio.Event | None = None
        self._settle = False  # a batch was just answered: let its callers queue next steps
        self._waiting: dict[str, int] = {}  # model -> queued calls
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics = metrics
        self.batches = 0  # batches answered (for tests and logs)

    # --- public ------------------------------------------------------------------------
    def caller(self, model: str, backend: Backend, limits: BatchLimits | None = None) -> GraphCaller:
        """A GraphCaller for one model version; its calls are merged with concurrent ones."""
        limits = limits or BatchLimits()

        async def call(graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Arrays:
            key = (model, graph, id(backend))
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(model, graph, backend, limits)
            return await self._submit(queue, inputs, units)

        return call

    async def run_direct(self, backend: Backend, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """One call on every thread and one per lane session, bypassing the queues (warm-up)."""
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._executor, backend.run, graph, inputs)
        if backend.lanes > 1:
            await loop.run_in_executor(self._executor, backend.run_lane, graph, inputs)
        return out

    async def release(self, backend: Backend) -> None:
        """Forget a backend about to be closed: wait for runtime calls running on it to end,
        then drop its queues. Its callers have all finished (see Registry.retire), so the
        queues are empty; a call left behind anyway fails instead of running on a closed
        backend."""
        while self._running.get(id(backend), 0) > 0:
            self._finished = self._finished or asyncio.Event()
            await self._finished.wait()
        for key, q in list(self._queues.items()):
            if q.backend is backend:
                del self._queues[key]
                for c in q.calls:
                    if not c.future.done():
                        c.future.set_exception(NotReadyError("that model version was unloaded; retry"))
                self._count(q, -len(q.calls))
                q.calls.clear()

    def queued(self, model: str) -> int:
        """Calls waiting for `model` (for metrics and health)."""
        return self._waiting.get(model, 0)

    async def close(self) -> None:
        """Stop the scheduler and the inference threads (queued calls are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for q in self._queues.values():
            for c in q.calls:
                c.future.cancel()
        for part in self._parts:
            for c in part.batch.calls:
                c.future.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._executor.shutdown(wait=True)
        if self._lanes is not None:
            self._lanes.shutdown(wait=True)

    # --- internals ---------------------------------------------------------------------
    async def _submit(self, queue: _Queue, inputs: Mapping[str, np.ndarray], units: int | None) -> Arrays:
        if self._waiting.get(queue.model, 0) >= queue.limits.max_queue:
            raise OverloadedError(
                f"model {queue.model} has {queue.limits.max_queue} calls waiting; retry shortly"
            )
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._schedule(), name="genserve-batcher")
        rows = len(next(iter(inputs.values())))
        signature = tuple(sorted((k, v.shape[1:]) for k, v in inputs.items()))
        call = _Call(inputs, rows, units or rows, signature, loop.create_future(), time.perf_counter())
        queue.calls.append(call)
        self._count(queue, 1)
        assert self._wake is not None
        self._wake.set()
        try:
            return await call.future
        finally:
            # Cancelled by a deadline or a disconnect while still waiting (awaiting the
            # future from a cancelled task cancels it): leave the queue now, so the slot is
            # free at once and the call is never computed.
            if call.future.cancelled() and call in queue.calls:
                queue.calls.remove(call)
                self._count(queue, -1)

    def _count(self, queue: _Queue, delta: int) -> None:
        """Calls waiting for the queue's model version: the overload check and a gauge."""
        waiting = self._waiting[queue.model] = self._waiting.get(queue.model, 0) + delta
        if self._metrics is not None:
            self._metrics.queue_depth.labels(*queue.labels).set(waiting)

    def _oldest(self) -> _Queue | None:
        best: _Queue | None = None
        for q in self._queues.values():
            if q.calls and (best is None or q.calls[0].enqueued < best.calls[0].enqueued):
                best = q
        return best

    def _take(self, q: _Queue, budget: int) -> list[_Call]:
        # Merged by work units, not rows: a VAE scoring row carries K importance samples,
        # and merging rows alone let concurrent requests build batches K times too large.
        # In arrival order: the first compatible call that does not fit ends the batch, so
        # no call is overtaken by a later one of the same shapes.
        first = q.calls.popleft()
        batch, units = [first], first.units
        keep: deque[_Call] = deque()
        full = False
        while q.calls:
            c = q.calls.popleft()
            if c.signature != first.signature:
                keep.append(c)
            elif not full and units + c.units <= budget:
                batch.append(c)
                units += c.units
            else:
                full = True
                keep.append(c)
        q.calls = keep
        self._count(q, -len(batch))
        return batch

    def _laned(self, backend: Backend) -> bool:
        return self._lanes is not None and backend.lanes > 1

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            if self._settle:
                self._settle = False
                if self._oldest() is None:
                    # Let the callers whose results just arrived queue their next step
                    # (PixelCNN loops) before the next batch is formed, so that concurrent
                    # loops stay merged. With calls waiting, start them at once instead:
                    # the event loop then finishes the answers while the runtime works.
                    for _ in range(3):
                        await asyncio.sleep(0)
                continue
            if self._parts:  # parts of formed batches go first: their calls are older
                if self._free > 0:
                    self._start(self._parts.popleft())
                    continue
                await self._idle()
                continue
            q = self._oldest()
            # A call that needs every thread (one-lane backends) waits for every lane: the
            # oldest call goes first, so nothing overtakes it meanwhile.
            if q is None or self._free == 0 or (self._free < self._slots and not self._laned(q.backend)):
                await self._idle()
                continue
            if q.limits.max_delay > 0:
                waited = time.perf_counter() - q.calls[0].enqueued
                if waited < q.limits.max_delay and sum(c.units for c in q.calls) < q.limits.max_batch:
                    await asyncio.sleep(q.limits.max_delay - waited)
                    continue
            self._form(q)

    async def _idle(self) -> None:
        assert self._wake is not None
        self._wake.clear()
        await self._wake.wait()

    def _form(self, q: _Queue) -> None:
        """Take the oldest calls of `q` and start them on the free lanes."""
        budget = q.limits.max_batch
        if self._laned(q.backend) and self._free < self._slots:
            # Other lanes are busy and will be free soon: take this lane's share of what
            # waits, not all of it, so that no batch grows far past the others and the
            # rest starts on the next lane to free up (a shorter wait at the tail).
            waiting = sum(c.units for c in q.calls)
            budget = min(budget, max(q.calls[0].units, -(-waiting // self._slots)))
        calls = self._take(q, budget)
        if len(calls) == 1:
            feeds = dict(calls[0].inputs)
        else:
            feeds = {k: np.concatenate([c.inputs[k] for c in calls]) for k in calls[0].inputs}
        rows = len(next(iter(feeds.values())))
        if self._free == self._slots and rows * q.per_row < INLINE_BELOW:
            self._inline(q, calls, feeds)
            return
        if not self._laned(q.backend) or (rows == 1 and self._free == self._slots):
            # One call on every thread: one-lane backends, and a lone row (faster so).
            batch = _Batch(q, calls, time.perf_counter(), [None], 1)
            whole = functools.partial(run_batch, q.backend, max_batch=q.limits.max_batch)
            self._launch(_Part(batch, 0, feeds), self._slots, self._executor, whole)
            return
        # One part per free lane (more when max_batch says so); parts beyond the free lanes
        # start as lanes free up, before any newer batch.
        parts = row_parts(rows, q.limits.max_batch, self._free)
        batch = _Batch(q, calls, time.perf_counter(), [None] * len(parts), len(parts))
        self._parts.extend(_Part(batch, i, {k: v[p] for k, v in feeds.items()}) for i, p in enumerate(parts))

    def _inline(self, q: _Queue, calls: list[_Call], feeds: dict[str, np.ndarray]) -> None:
        """Compute a quick batch on the event loop and answer it."""
        batch = _Batch(q, calls, time.perf_counter(), [None], 0)
        try:
            batch.outs[0] = run_batch(q.backend, q.graph, feeds, q.limits.max_batch)
            q.observe(time.perf_counter() - batch.started, sum(c.rows for c in calls))
        except Exception as exc:  # a runtime failure fails the calls, not the scheduler
            batch.error = exc
        finally:  # anything else (interrupted) leaves no call waiting: _answer cancels them
            self._answer(batch)

    def _start(self, part: _Part) -> None:
        assert self._lanes is not None
        self._launch(part, 1, self._lanes, part.batch.queue.backend.run_lane)

    def _launch(
        self,
        part: _Part,
        slots: int,
        executor: Executor,
        run: Callable[[str, Mapping[str, np.ndarray]], Arrays],
    ) -> None:
        q = part.batch.queue
        self._free -= slots
        key = id(q.backend)
        self._running[key] = self._running.get(key, 0) + 1
        task = asyncio.get_running_loop().create_task(self._compute(part, slots, executor, run))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _compute(
        self,
        part: _Part,
        slots: int,
        executor: Executor,
        run: Callable[[str, Mapping[str, np.ndarray]], Arrays],
    ) -> None:
        batch = part.batch
        q = batch.queue
        loop = asyncio.get_running_loop()
        try:
            out, seconds = await loop.run_in_executor(executor, _timed, run, q.graph, part.feeds)
            batch.outs[part.index] = out
            if slots == self._slots and part.batch.left == 1:  # a whole batch on every thread
                q.observe(seconds, sum(c.rows for c in batch.calls))
        except Exception as exc:  # a runtime failure fails the calls, not the scheduler
            batch.error = exc
        finally:
            self._free += slots
            key = id(q.backend)
            self._running[key] -= 1
            if self._running[key] == 0:
                del self._running[key]
            if self._finished is not None:
                self._finished.set()
                self._finished = None
            batch.left -= 1
            if batch.left == 0:
                self._answer(batch)
            if self._wake is not None:
                self._wake.set()

    def _answer(self, batch: _Batch) -> None:
        """Split a finished batch's outputs back to its calls."""
        q = batch.queue
        self.batches += 1
        self._settle = True
        if self._metrics is not None:
            self._metrics.batches.labels(*q.labels, q.graph).inc()
        if batch.error is not None:
            for c in batch.calls:
                if not c.future.done():
                    c.future.set_exception(batch.error)
            return
        parts = [o for o in batch.outs if o is not None]
        if len(parts) < len(batch.outs):  # interrupted (shutting down): nothing to answer
            for c in batch.calls:
                c.future.cancel()
            return
        outs = parts[0] if len(parts) == 1 else _joined(parts)
        done = time.perf_counter()
        start = 0
        for c in batch.calls:
            if not c.future.done():
                c.future.set_result({k: v[start : start + c.rows] for k, v in outs.items()})
            start += c.rows
            if self._metrics is not None:
                self._metrics.graph.labels(*q.labels, q.graph, "queue").observe(batch.started - c.enqueued)
                self._metrics.graph.labels(*q.labels, q.graph, "compute").observe(done - batch.started)


def _timed(
    run: Callable[[str, Mapping[str, np.ndarray]], Arrays], graph: str, feeds: Mapping[str, np.ndarray]
) -> tuple[Arrays, float]:
    """`run`'s answer and its compute seconds, measured in the worker (no hand-off)."""
    start = time.perf_counter()
    out = run(graph, feeds)
    return out, time.perf_counter() - start


def row_parts(rows: int, max_batch: int, lanes: int) -> list[slice]:
    """How a batch of `rows` rows is cut: parts of at most `max_batch` rows, and with
    several lanes a multiple of `lanes` parts (no more than there are rows), even sizes."""
    parts = -(-rows // max_batch)
    if lanes > 1:
        parts = min(rows, -(-parts // lanes) * lanes)
    bounds = [i * rows // parts for i in range(parts + 1)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def run_batch(
    backend: Backend,
    graph: str,
    feeds: Mapping[str, np.ndarray],
    max_batch: int,
    lanes: Executor | None = None,
) -> Arrays:
    """Run one batch: a single call, or parts of at most `max_batch` rows, spread over the
    backend's lanes when a lane pool is given. Rows are independent in every graph, so the
    outputs equal one call's."""
    rows = len(next(iter(feeds.values())))
    parallel = lanes is not None and backend.lanes > 1
    parts = row_parts(rows, max_batch, backend.lanes if parallel else 1)
    if len(parts) == 1:  # one row, or one lane and a batch within max_batch
        return backend.run(graph, feeds)
    pieces = _pieces(feeds, parts)
    if parallel:
        assert lanes is not None
        futures = [lanes.submit(backend.run_lane, graph, piece) for piece in pieces]
        outs = [f.result() for f in futures]
    else:
        outs = [backend.run(graph, piece) for piece in pieces]
    return _joined(outs)


def _pieces(feeds: Mapping[str, np.ndarray], parts: list[slice]) -> list[dict[str, np.ndarray]]:
    return [{k: v[p] for k, v in feeds.items()} for p in parts]


def _joined(outs: list[Arrays]) -> Arrays:
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def direct_caller(
    backend: Backend, max_batch: int = BatchLimits.max_batch, lanes: Executor | None = None
) -> GraphCaller:
    """A GraphCaller that runs each call at once as one batch, with no queue: the serving
    path's execution without the server (the benchmark's in-process limit)."""

    async def call(graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Arrays:
        return run_batch(backend, graph, inputs, max_batch, lanes)

    return call

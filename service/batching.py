"""Dynamic batching: concurrent graph calls for one model version and graph become one call.

Every graph call goes through one scheduler that runs one batch at a time (two runtimes
each using every core fight, see DESIGN.md). While a batch runs, calls queue up per
(model version, graph); when it is done, the scheduler takes the queue with the oldest
waiting call and merges as many compatible calls (same trailing shapes) as fit in
`max_batch` rows into one batch, then splits the outputs back.

A batch of one row runs as one call on every runtime thread. A larger one is cut by rows
into one part per lane, run at once on a share of the threads each (`Backend.run_lane`):
small graphs use cores better side by side than through intra-op threads.

So a lone request pays no waiting (no artificial delay unless `max_delay` is set), and
under load batches grow by themselves. Merged calls never mix model versions or graphs,
and per-request noise is an input, so a seeded request gives the same answer batched or
not. PixelCNN loops of concurrent requests advance together: after a batch returns with
nothing else waiting, the scheduler yields to the event loop so every loop can queue its
next step before the next batch is formed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

import numpy as np

from .engine import GraphCaller
from .errors import NotReadyError, OverloadedError
from .metrics import Metrics
from .runtime import Arrays, Backend


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

    def __post_init__(self) -> None:
        name, sep, version = self.model.rpartition("/v")  # the caller's `name/vN` key
        self.labels = (name, version) if sep else (self.model, "")


class Batcher:
    """The scheduler in front of the runtimes: one batch at a time, its parts on the lanes."""

    def __init__(self, metrics: Metrics | None = None, lanes: int = 1) -> None:
        # The dispatcher thread runs one batch at a time; the lane threads run its parts.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genserve-inference")
        self._lanes = (
            ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="genserve-lane") if lanes > 1 else None
        )
        # Keyed by the backend too: an unloaded version loaded again gets fresh queues, never
        # the old ones that hold the closed backend.
        self._queues: dict[tuple[str, str, int], _Queue] = {}
        self._running: Backend | None = None  # the backend of the batch being computed
        self._finished: asyncio.Event | None = None
        self._waiting: dict[str, int] = {}  # model -> queued calls
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics = metrics
        self.batches = 0  # runtime calls made (for tests and logs)

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
        """Forget a backend about to be closed: wait for a batch running on it to end, then
        drop its queues. Its callers have all finished (see Registry.retire), so the queues
        are empty; a call left behind anyway fails instead of running on a closed backend."""
        while self._running is backend:
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
        """Stop the scheduler and the inference thread (queued calls are cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for q in self._queues.values():
            for c in q.calls:
                c.future.cancel()
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

    async def _execute(
        self, backend: Backend, graph: str, feeds: Mapping[str, np.ndarray], max_batch: int
    ) -> Arrays:
        """`run_batch`, with the lane parts handed to the lane threads straight from the event
        loop (one thread hop each way fewer than going through the dispatcher thread)."""
        loop = asyncio.get_running_loop()
        rows = len(next(iter(feeds.values())))
        if self._lanes is None or backend.lanes == 1 or rows == 1:
            return await loop.run_in_executor(self._executor, run_batch, backend, graph, feeds, max_batch)
        lanes = self._lanes
        pieces = _pieces(feeds, row_parts(rows, max_batch, backend.lanes))
        # Every part finishes before this returns, failed or not: the backend is in use until
        # then (an unload waits for this batch, see `release`).
        outs = await asyncio.gather(
            *(loop.run_in_executor(lanes, backend.run_lane, graph, p) for p in pieces),
            return_exceptions=True,
        )
        for out in outs:
            if isinstance(out, BaseException):
                raise out
        return _joined(cast(list[Arrays], outs))

    def _oldest(self) -> _Queue | None:
        best: _Queue | None = None
        for q in self._queues.values():
            if q.calls and (best is None or q.calls[0].enqueued < best.calls[0].enqueued):
                best = q
        return best

    def _take(self, q: _Queue) -> list[_Call]:
        # Merged by work units, not rows: a VAE scoring row carries K importance samples,
        # and merging rows alone let concurrent requests build batches K times too large.
        first = q.calls.popleft()
        batch, units = [first], first.units
        keep: deque[_Call] = deque()
        while q.calls:
            c = q.calls.popleft()
            if c.signature == first.signature and units + c.units <= q.limits.max_batch:
                batch.append(c)
                units += c.units
            else:
                keep.append(c)
        q.calls = keep
        self._count(q, -len(batch))
        return batch

    async def _schedule(self) -> None:
        assert self._wake is not None
        while True:
            q = self._oldest()
            if q is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if q.limits.max_delay > 0:
                waited = time.perf_counter() - q.calls[0].enqueued
                if waited < q.limits.max_delay and sum(c.units for c in q.calls) < q.limits.max_batch:
                    await asyncio.sleep(q.limits.max_delay - waited)
                    continue
            batch = self._take(q)
            started = time.perf_counter()
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {k: np.concatenate([c.inputs[k] for c in batch]) for k in batch[0].inputs}
            self._running = q.backend
            try:
                outs = await self._execute(q.backend, q.graph, feeds, q.limits.max_batch)
            except Exception as exc:  # a runtime failure fails the calls, not the scheduler
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(exc)
                continue
            finally:
                self._running = None
                if self._finished is not None:
                    self._finished.set()
                    self._finished = None
            self.batches += 1
            done = time.perf_counter()
            start = 0
            for c in batch:
                if not c.future.done():
                    c.future.set_result({k: v[start : start + c.rows] for k, v in outs.items()})
                start += c.rows
                if self._metrics is not None:
                    self._metrics.graph.labels(*q.labels, q.graph, "queue").observe(started - c.enqueued)
                    self._metrics.graph.labels(*q.labels, q.graph, "compute").observe(done - started)
            if self._oldest() is None:
                # Nothing waiting: let the callers whose results just arrived queue their
                # next step (PixelCNN loops) before the next batch is formed, so that
                # concurrent loops stay merged.
                for _ in range(3):
                    await asyncio.sleep(0)
            # Otherwise start the waiting calls at once: the event loop finishes the answers
            # just computed while the runtime works, instead of the runtime idling until
            # they are sent (a quarter of the time at concurrency 64 on two cores).


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

"""Dynamic batching: concurrent graph calls for one model version and graph become one call.

Every graph call goes through one scheduler that feeds a single inference thread (the
runtimes use all cores; two at once fight, see DESIGN.md). While that thread is busy,
calls queue up per (model version, graph); when it frees up, the scheduler takes the
queue with the oldest waiting call and merges as many compatible calls (same trailing
shapes) as fit in `max_batch` rows into one runtime call, then splits the outputs back.

So a lone request pays no waiting (no artificial delay unless `max_delay` is set), and
under load batches grow by themselves. Merged calls never mix model versions or graphs,
and per-request noise is an input, so a seeded request gives the same answer batched or
not. PixelCNN loops of concurrent requests advance together: after a batch returns, the
scheduler yields to the event loop so every loop can queue its next step before the next
batch is formed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .engine import GraphCaller
from .errors import OverloadedError
from .metrics import Metrics
from .runtime import Arrays, Backend


@dataclass(frozen=True)
class BatchLimits:
    """Per-model batching and queueing limits."""

    max_batch: int = 4096  # rows per runtime call
    max_delay: float = 0.0  # seconds a partial batch may wait for company
    max_queue: int = 256  # waiting calls per model before new ones get 503


@dataclass
class _Call:
    inputs: Mapping[str, np.ndarray]
    rows: int
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


class Batcher:
    """The scheduler in front of the inference thread."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genserve-inference")
        self._queues: dict[tuple[str, str], _Queue] = {}
        self._waiting: dict[str, int] = {}  # model -> queued calls
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._metrics = metrics
        self.batches = 0  # runtime calls made (for tests and logs)

    # --- public ------------------------------------------------------------------------
    def caller(self, model: str, backend: Backend, limits: BatchLimits | None = None) -> GraphCaller:
        """A GraphCaller for one model version; its calls are merged with concurrent ones."""
        limits = limits or BatchLimits()

        async def call(graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
            key = (model, graph)
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue(model, graph, backend, limits)
            return await self._submit(queue, inputs)

        return call

    async def run_direct(self, backend: Backend, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """One call on the inference thread, bypassing the queues (warm-up)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, backend.run, graph, inputs)

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

    # --- internals ---------------------------------------------------------------------
    async def _submit(self, queue: _Queue, inputs: Mapping[str, np.ndarray]) -> Arrays:
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
        call = _Call(inputs, rows, signature, loop.create_future(), time.perf_counter())
        queue.calls.append(call)
        self._waiting[queue.model] = self._waiting.get(queue.model, 0) + 1
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
                self._waiting[queue.model] -= 1

    def _oldest(self) -> _Queue | None:
        best: _Queue | None = None
        for q in self._queues.values():
            if q.calls and (best is None or q.calls[0].enqueued < best.calls[0].enqueued):
                best = q
        return best

    def _take(self, q: _Queue) -> list[_Call]:
        first = q.calls.popleft()
        batch, rows = [first], first.rows
        keep: deque[_Call] = deque()
        while q.calls:
            c = q.calls.popleft()
            if c.signature == first.signature and rows + c.rows <= q.limits.max_batch:
                batch.append(c)
                rows += c.rows
            else:
                keep.append(c)
        q.calls = keep
        self._waiting[q.model] -= len(batch)
        return batch

    async def _schedule(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            q = self._oldest()
            if q is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if q.limits.max_delay > 0:
                waited = time.perf_counter() - q.calls[0].enqueued
                if waited < q.limits.max_delay and sum(c.rows for c in q.calls) < q.limits.max_batch:
                    await asyncio.sleep(q.limits.max_delay - waited)
                    continue
            batch = self._take(q)
            started = time.perf_counter()
            if len(batch) == 1:
                feeds = batch[0].inputs
            else:
                feeds = {k: np.concatenate([c.inputs[k] for c in batch]) for k in batch[0].inputs}
            try:
                outs = await loop.run_in_executor(
                    self._executor, _run_chunked, q.backend, q.graph, feeds, q.limits.max_batch
                )
            except Exception as exc:  # a runtime failure fails the calls, not the scheduler
                for c in batch:
                    if not c.future.done():
                        c.future.set_exception(exc)
                continue
            self.batches += 1
            done = time.perf_counter()
            start = 0
            for c in batch:
                if not c.future.done():
                    c.future.set_result({k: v[start : start + c.rows] for k, v in outs.items()})
                start += c.rows
                if self._metrics is not None:
                    self._metrics.stage.labels(q.model, q.graph, "queue").observe(started - c.enqueued)
                    self._metrics.stage.labels(q.model, q.graph, "compute").observe(done - started)
            # Let the callers whose results just arrived queue their next step (PixelCNN
            # loops) before the next batch is formed, so concurrent loops stay merged.
            for _ in range(3):
                await asyncio.sleep(0)


def _run_chunked(backend: Backend, graph: str, feeds: Mapping[str, np.ndarray], max_batch: int) -> Arrays:
    """One runtime call, or several of at most `max_batch` rows for an oversized request."""
    rows = len(next(iter(feeds.values())))
    if rows <= max_batch:
        return backend.run(graph, feeds)
    parts = [
        backend.run(graph, {k: v[i : i + max_batch] for k, v in feeds.items()})
        for i in range(0, rows, max_batch)
    ]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

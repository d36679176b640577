"""Running `build-store`'s per-model jobs: in this process, or several at once in workers.

Training and evaluation run on one thread per process (training.runtime), so that a model
is the same on every machine; the cores are used by building several models at once, one
single-threaded worker process each. Every worker does what the sequential build does for
its model — lock, train (or reuse the checkpoint), evaluate, publish — so the store ends up
the same whichever way it was built.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from .evaluate import EvalSettings

# Longest first, so the last model to start is a short one and no core idles at the end
# (training seconds on one thread, digits, quiet 2-vCPU build of docs/results.md: PixelCNN
# 534, flow 323, GAN 255, VAE 126).
_COST_ORDER = ("pixelcnn", "diffusion", "flow", "gan", "vae")


@dataclass(frozen=True)
class BuildJob:
    """One model to build: everything a worker process needs (picklable)."""

    store_root: Path
    checkpoints: Path
    name: str
    family: str
    dataset: str
    conditional: bool
    seed: int
    key: str
    build_key: str
    arch: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    eval_settings: EvalSettings | None = None
    force: bool = False


@dataclass
class BuildOutcome:
    """What happened to one model."""

    name: str
    action: str  # "published" | "up to date"
    version: int
    seconds: float
    trained: bool
    cut_short: bool = False  # its training was stopped by an explicit time limit


JobRunner = Callable[[BuildJob, Console, bool], BuildOutcome]


def cost_rank(family: str) -> int:
    """Where a family's job goes in the queue (unknown families last)."""
    return _COST_ORDER.index(family) if family in _COST_ORDER else len(_COST_ORDER)


def _in_worker(runner: JobRunner, job: BuildJob) -> BuildOutcome:
    from .runtime import configure_threads

    configure_threads()
    # No progress bars from workers (several would fight over the terminal): their lines
    # say what each model is doing, prefixed with its name.
    return runner(job, Console(soft_wrap=True), False)


def run_jobs(
    jobs: list[BuildJob], workers: int, runner: JobRunner, console: Console, progress: bool
) -> list[BuildOutcome]:
    """Run every job; returns their outcomes in the order of `jobs`.

    With one worker the jobs run here, one after another (with progress bars), and the
    first failure stops the build. With more, each runs in a fresh process (spawned: no
    inherited torch thread pools or locks); a job that raises does not stop the others,
    and the first failure is raised once all have ended, so every model that could be
    published is. (A worker that dies outright, e.g. killed for memory, breaks the pool
    and the jobs still running with it.)
    """
    if workers <= 1 or len(jobs) <= 1:
        return [runner(job, console, progress) for job in jobs]
    order = sorted(range(len(jobs)), key=lambda i: cost_rank(jobs[i].family))
    console.print(f"building {len(jobs)} models, {workers} at a time (one single-threaded process each)")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures: dict[int, Future[BuildOutcome]] = {
            i: pool.submit(_in_worker, runner, jobs[i]) for i in order
        }
        try:
            wait(futures.values())
        except KeyboardInterrupt:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    errors = [f.exception() for f in futures.values() if f.exception() is not None]
    if errors:
        failed = [jobs[i].name for i, f in futures.items() if f.exception() is not None]
        console.print(f"[bold red]failed[/]: {', '.join(failed)}")
        raise errors[0]  # type: ignore[misc]
    return [futures[i].result() for i in range(len(jobs))]

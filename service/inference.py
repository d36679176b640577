"""Where graph calls run: one dedicated worker thread, never the event loop.

All runtimes share the machine's cores. Running two of them at once, each sized to every
core, made inference many times slower (DESIGN.md, "Known traps"), so every graph call
goes through this single worker, whose runtimes use all the cores.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .engine import GraphCaller
from .runtime import Arrays, Backend


class InferenceRunner:
    """Serialises graph calls on one worker thread."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genserve-inference")

    def caller(self, backend: Backend) -> GraphCaller:
        """A GraphCaller for one backend that runs on the worker thread."""

        async def call(graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, backend.run, graph, inputs)

        return call

    def shutdown(self) -> None:
        """Finish queued calls and stop the worker."""
        self._executor.shutdown(wait=True)

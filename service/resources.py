"""How many CPU cores this process may really use (affinity and cgroup quota)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_quota_cores() -> float | None:
    """CPU quota of a cgroup-v2 container (`cpu.max`), or None when unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except OSError:
        return None
    if len(text) != 2 or text[0] == "max":
        return None
    return int(text[0]) / int(text[1])


def available_cores() -> int:
    """Cores this process can run on: the affinity mask, capped by a container's quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        cores = os.cpu_count() or 1
    quota = _cgroup_quota_cores()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def thread_layout(threads: int | None, lanes: int | None) -> tuple[int, int]:
    """(runtime threads, lanes): the configured values, or every core and one lane per core.

    One lane per core measured best on the default models (docs/benchmarks.md): a part of
    a batch per core beats one call spread over the cores by intra-op threads.
    """
    total = threads or available_cores()
    return total, max(1, min(lanes or total, total))

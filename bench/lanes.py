"""Rows/s of each scoring graph under the two thread layouts the batcher can use.

    python -m bench.lanes [--store model_store] [--duration 3]

For each likelihood model's scoring graph and batch size: one call at a time on every
thread (`Backend.run`) against `lanes` calls at once on one lane's threads each
(`Backend.run_lane`), through the service's own ONNX Runtime backend. This is the
measurement behind the default of one lane per core (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from service.manifest import Manifest
from service.resources import available_cores
from service.runtime import Backend, load_backend
from service.store import ModelStore

GRAPHS = {"vae-digits": "log_weights", "flow-digits": "log_prob", "pixelcnn-digits": "logits"}


def feeds(man: Manifest, graph: str, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Scoring inputs for `rows` images, shaped as the engine sends them."""
    shape, levels = man.dataset.shape, man.dataset.levels
    samples = int(man.family_info.get("default_samples", 1) or 1)
    x = rng.integers(0, levels, (rows, *shape)).astype(np.float32)
    out: dict[str, np.ndarray] = {"x": x}
    if man.family == "flow":  # one row per dequantization draw
        out["x"] = np.repeat(x, samples, axis=0) + rng.random((rows * samples, *shape), dtype=np.float32)
    if man.family == "vae":
        dz = int(man.family_info["latent_dim"])
        out["eps"] = rng.standard_normal((rows, samples, dz), dtype=np.float32)
    if man.conditioning.conditional:
        out["y"] = np.full(len(out["x"]), 3, dtype=np.int64)
    names = {t.name for t in man.graph(graph).inputs}
    return {k: v for k, v in out.items() if k in names}


def rate(run: Callable[[], object], workers: int, duration: float) -> float:
    """Calls per second of `run` from `workers` threads at once."""
    counts = [0] * workers
    stop = time.perf_counter() + duration

    def work(i: int) -> None:
        while time.perf_counter() < stop:
            run()
            counts[i] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    p.add_argument("--rows", default="1,16,64", help="comma-separated batch sizes (images)")
    a = p.parse_args()
    store = ModelStore(a.store)
    cores = available_cores()
    rng = np.random.default_rng(0)
    print(f"| graph | rows per call | rows/s, 1 call x {cores} threads | rows/s, {cores} calls x 1 thread |")
    print("|---|---|---|---|")
    for name, graph in GRAPHS.items():
        version = store.open(name)
        backend: Backend = load_backend(version, "onnxruntime", "cpu", cores, cores)
        for rows in (int(r) for r in a.rows.split(",")):
            f = feeds(version.manifest, graph, rows, rng)
            backend.run(graph, f)
            backend.run_lane(graph, f)
            wide = rate(partial(backend.run, graph, f), 1, a.duration) * rows
            lanes = rate(partial(backend.run_lane, graph, f), backend.lanes, a.duration) * rows
            print(f"| {name} `{graph}` | {rows} | {wide:.0f} | {lanes:.0f} |")
        backend.close()


if __name__ == "__main__":
    main()

"""Cost of outlier scoring: a plain likelihood call vs the same call plus the default method.

    python -m bench.outlier_cost [--store model_store] [--rows 1000] [--repeats 5]

Both through the service's engine over ONNX Runtime, in process, unlabelled (marginal)
scoring as outlier requests usually come; prints the ratio per likelihood model.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from service.engine import Engine, build_engine, inline_caller
from service.manifest import Manifest
from service.outliers import outlier_results
from service.resources import available_cores
from service.runtime import load_backend
from service.store import ModelStore
from training.data import load_dataset


async def _plain(engine: Engine, x: np.ndarray, samples: int) -> None:
    await engine.log_likelihood(x, None, samples, seed=0)


async def _scored(engine: Engine, man: Manifest, x: np.ndarray, samples: int) -> None:
    ll = await engine.log_likelihood(x, None, samples, seed=0)
    await outlier_results(engine, man, x, None, ll, samples, 0.05, None, False)


def _median_s(fn: Callable[[], Coroutine[Any, Any, None]], repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        asyncio.run(fn())
        runs.append(time.perf_counter() - t)
    return float(np.median(runs))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    store = ModelStore(a.store)
    x = np.resize(load_dataset("digits").x, (a.rows, 1, 8, 8)).astype(np.int64)
    print("| model | default method | likelihood s | + outlier scoring s | ratio |")
    print("|---|---|---|---|---|")
    for name in ("flow-digits", "vae-digits", "pixelcnn-digits"):
        version = store.open(name)
        man = version.manifest
        assert man.calibration is not None
        backend = load_backend(version, "onnxruntime", "cpu", available_cores())
        engine = build_engine(man, inline_caller(backend))
        k = man.calibration.samples
        plain = _median_s(lambda e=engine, k=k: _plain(e, x, k), a.repeats)
        scored = _median_s(lambda e=engine, m=man, k=k: _scored(e, m, x, k), a.repeats)
        method = man.calibration.default_method
        print(f"| {name} | {method} | {plain:.3f} | {scored:.3f} | {scored / plain:.3f} |")


if __name__ == "__main__":
    main()

"""Cost of outlier scoring: a plain likelihood call vs the same call plus the default method.

    python -m bench.outlier_cost [--store model_store] [--rows 1000] [--repeats 5] [--methods-only]

Both through the service's engine over ONNX Runtime, in process, unlabelled (marginal)
scoring as outlier requests usually come; prints the ratio per likelihood model, then
what each method's score alone adds to one likelihood call (`--methods-only`: just that).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from service.engine import Engine, build_engine, inline_caller
from service.manifest import Manifest
from service.outliers import Evidence, available_methods, outlier_results, score
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


def _method_ms(man: Manifest, evidence: Evidence, repeats: int) -> dict[str, float]:
    """Median milliseconds of each method's score over the rows, given their likelihoods."""
    assert man.calibration is not None
    cal = man.calibration
    out = {}
    for m in available_methods(cal.background, man.conditioning.conditional):
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            score(m, evidence, man.dataset, cal.stats.get(m, {}), cal.background)
            runs.append(time.perf_counter() - t)
        out[m] = 1e3 * float(np.median(runs))
    return out


def _engine(store: ModelStore, name: str) -> tuple[Manifest, Engine]:
    """The served engine of `name` over ONNX Runtime, called inline (no batcher)."""
    version = store.open(name)
    backend = load_backend(version, "onnxruntime", "cpu", available_cores())
    return version.manifest, build_engine(version.manifest, inline_caller(backend))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--rows", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--methods-only", action="store_true", help="only the per-method scoring table")
    a = p.parse_args()
    store = ModelStore(a.store)
    x = np.resize(load_dataset("digits").x, (a.rows, 1, 8, 8)).astype(np.int64)
    names = ("flow-digits", "vae-digits", "pixelcnn-digits")
    if not a.methods_only:
        _ratios(store, names, x, a.repeats)
    print(f"\n| model | method | score ms per {a.rows} rows (likelihoods given) |\n|---|---|---|")
    for name in names:
        man, engine = _engine(store, name)
        assert man.calibration is not None
        evidence = Evidence.of(
            asyncio.run(engine.log_likelihood(x, None, man.calibration.samples, seed=0)), x
        )
        for method, ms in _method_ms(man, evidence, a.repeats).items():
            print(f"| {name} | {method} | {ms:.2f} |")


def _ratios(store: ModelStore, names: tuple[str, ...], x: np.ndarray, repeats: int) -> None:
    print("| model | default method | likelihood s | + outlier scoring s | ratio |")
    print("|---|---|---|---|---|")
    for name in names:
        man, engine = _engine(store, name)
        assert man.calibration is not None
        k = man.calibration.samples
        plain = _median_s(partial(_plain, engine, x, k), repeats)
        scored = _median_s(partial(_scored, engine, man, x, k), repeats)
        method = man.calibration.default_method
        print(f"| {name} | {method} | {plain:.3f} | {scored:.3f} | {scored / plain:.3f} |")


if __name__ == "__main__":
    main()

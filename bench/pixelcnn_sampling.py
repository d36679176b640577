"""PixelCNN sampling and completion: the incremental step graphs against the full pass.

    python -m bench.pixelcnn_sampling --model pixelcnn-digits [--store model_store]
    python -m bench.pixelcnn_sampling --fresh mnist5k      # default 28x28 architecture

Both loops run in the service's engine over ONNX Runtime through the service's batcher,
in the same process, one after the other: sampling at batch 1 and 16, and completing the
bottom half of 16 test images (the exact, raster-order completion). Reports samples (or
completions) per second and the ratio. With `--fresh DATASET` the model is the dataset's
default PixelCNN architecture with its initial weights, exported to a temporary folder:
the speed of a graph does not depend on its weights (the default 28x28 model has not been
trained with these graphs yet). `--flips N` also draws N samples through both loops with
the same seeds and counts the images whose pixels differ (float ties).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.batching import Batcher
from service.engine import build_engine
from service.engine.pixelcnn import PixelCNNEngine
from service.manifest import Manifest
from service.resources import available_cores
from service.runtime import Backend, load_backend, open_backend
from service.store import ModelStore
from training.data import load_dataset, make_splits


def fresh(dataset: str, folder: Path, threads: int) -> tuple[Manifest, Backend]:
    """The dataset's default PixelCNN (initial weights), exported to `folder`."""
    import torch

    from training.export import export_graphs
    from training.families import build_model

    data = load_dataset(dataset)
    torch.manual_seed(0)
    model = build_model("pixelcnn", data.spec, True)
    x = torch.from_numpy(data.x[:32].astype(np.int64))
    assert data.y is not None
    y = torch.from_numpy(data.y[:32].astype(np.int64))
    specs, _ = export_graphs(model, folder, x, y)
    prior = [1 / data.spec.num_classes] * data.spec.num_classes
    manifest = Manifest.model_construct(
        name=f"pixelcnn-{dataset}-fresh",
        version=1,
        family="pixelcnn",
        dataset=data.spec,
        conditioning=type("C", (), {"conditional": True, "class_prior": prior})(),
        family_info=model.export_info(),
        graphs=specs,
        split=None,
    )
    return manifest, open_backend(specs, folder, "onnxruntime", "cpu", threads)


async def timed(run: Any, repeats: int) -> tuple[float, Any]:
    """Seconds per run (best of `repeats`) and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = await run()
        best = min(best, time.perf_counter() - start)
    return best, out


async def measure(manifest: Manifest, backend: Backend, args: argparse.Namespace) -> dict[str, Any]:
    batcher = Batcher()
    call = batcher.caller(f"{manifest.name}/v{manifest.version}", backend)
    fast, full = build_engine(manifest, call), build_engine(manifest, call)
    assert isinstance(fast, PixelCNNEngine)
    assert isinstance(full, PixelCNNEngine)
    if not fast.fast_steps:
        raise SystemExit(f"{manifest.name} v{manifest.version} has no step graphs: rebuild it")
    full.fast_steps = False
    L = manifest.dataset.num_classes
    rows: dict[str, Any] = {}
    for n in (1, 16):
        labels = np.arange(n, dtype=np.int64) % L

        def sample(engine: PixelCNNEngine, n: int = n, labels: np.ndarray = labels) -> Any:
            return lambda: engine.sample(n, labels, np.random.default_rng(1))

        t_fast, a = await timed(sample(fast), args.repeats)
        t_full, b = await timed(sample(full), 1)
        rows[f"sample, batch {n}"] = _row(n, t_fast, t_full, a, b)
        print(rows[f"sample, batch {n}"], flush=True)
    data = load_dataset(manifest.dataset.name)
    assert data.y is not None
    split = manifest.split
    test = make_splits(data.y, len(data), seed=split.seed).test if split is not None else np.arange(len(data))
    x, y = data.x[test[:16]].astype(np.int64), data.y[test[:16]].astype(np.int64)
    mask = np.ones_like(x)
    mask[:, :, x.shape[2] // 2 :] = 0

    def complete(engine: PixelCNNEngine) -> Any:
        return lambda: engine.reconstruct(x, y, mask, np.random.default_rng(2))

    t_fast, a = await timed(complete(fast), args.repeats)
    t_full, b = await timed(complete(full), 1)
    key = "complete the bottom half, batch 16"
    rows[key] = _row(16, t_fast, t_full, a.arrays["reconstruction"], b.arrays["reconstruction"])
    print(rows[key], flush=True)
    if args.flips:
        differ, total = 0, 0
        for seed in range(0, args.flips, 64):
            n = min(64, args.flips - seed)
            labels = np.arange(n, dtype=np.int64) % L
            a = await fast.sample(n, labels, np.random.default_rng(1000 + seed))
            b = await full.sample(n, labels, np.random.default_rng(1000 + seed))
            differ += int((a != b).reshape(n, -1).any(axis=1).sum())
            total += n
        rows["tie flips"] = {"samples": total, "samples that differ": differ}
        print(rows["tie flips"], flush=True)
    await batcher.close()
    return rows


def _row(n: int, t_fast: float, t_full: float, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    return {
        "step graphs, per s": round(n / t_fast, 2),
        "full pass, per s": round(n / t_full, 3),
        "speed-up": round(t_full / t_fast, 1),
        "same pixels": bool(np.array_equal(a, b)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--model", default="pixelcnn-digits")
    p.add_argument("--fresh", metavar="DATASET", help="the dataset's default architecture, untrained")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--flips", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    threads = available_cores()
    with tempfile.TemporaryDirectory() as tmp:
        if args.fresh:
            manifest, backend = fresh(args.fresh, Path(tmp), threads)
        else:
            version = ModelStore(args.store).open(args.model)
            manifest, backend = version.manifest, load_backend(version, "onnxruntime", "cpu", threads)
        rows = asyncio.run(measure(manifest, backend, args))
        backend.close()
    report = {"model": manifest.name, "version": manifest.version, "threads": threads, "rows": rows}
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

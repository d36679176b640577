"""PixelCNN completion: what the particle filter's particles buy, and what they cost.

    python -m bench.completion [--store model_store] [--rows 64] [--seeds 3]

Completes test digits (with their labels) under three masks through the service's engine
over ONNX Runtime, in process, at several particle counts, and reports per mask and count:
the known pixels' log-likelihood given the completion, Σ_j log p(x_j | x_<j) over known j
(how well the completion agrees with what it was given; the plain draw ignores known
pixels after missing ones), the completed images' bits/dim, and the time per row.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from pathlib import Path

import numpy as np

from service.engine import build_engine, inline_caller
from service.engine.base import log_softmax
from service.engine.completion import raster_flat
from service.resources import available_cores
from service.runtime import Backend, load_backend
from service.store import ModelStore
from training.data import load_dataset, make_splits


def masks(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Boolean masks [N, C, H, W] (True = known) with a name each."""
    H, W = shape[-2:]
    left = np.zeros(shape, dtype=bool)
    left[..., : W // 2] = True
    hole = np.ones(shape, dtype=bool)
    hole[..., H // 4 : H - H // 4, W // 4 : W - W // 4] = False
    top = np.zeros(shape, dtype=bool)
    top[..., : H // 2, :] = True
    return {"left half known": left, "centre hole": hole, "top half known (exact)": top}


def known_log_likelihood(
    backend: Backend, x: np.ndarray, y: np.ndarray, known: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: log p(x) and Σ over known pixels of log p(x_j | x_<j), nats."""
    logp = log_softmax(backend.run("logits", {"x": x.astype(np.float32), "y": y})["logits"])
    picked = raster_flat(np.take_along_axis(logp, x[..., None], axis=-1)[..., 0])  # [N, P]
    return picked.sum(axis=1), (picked * raster_flat(known)).sum(axis=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--model", default="pixelcnn-digits")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--particles", default="1,4,16,64")
    args = p.parse_args()
    version = ModelStore(args.store).open(args.model)
    backend = load_backend(version, "onnxruntime", "cpu", available_cores())
    engine = build_engine(version.manifest, inline_caller(backend))
    data = load_dataset(version.manifest.split.dataset)
    assert data.y is not None
    test = make_splits(data.y, len(data), seed=version.manifest.split.seed).test[: args.rows]
    x, y = data.x[test].astype(np.int64), data.y[test].astype(np.int64)
    bits = version.manifest.dataset.dims * math.log(2)
    real, _ = known_log_likelihood(backend, x, y, np.ones_like(x, dtype=bool))
    real_bpd = -real.mean() / bits
    print(f"{args.model}: {len(x)} test images, {args.seeds} seeds; real images {real_bpd:.3f} bpd")
    print("| mask | particles | known pixels' log-lik., nats | bits/dim of the completion | ms per row |")
    print("|---|---|---|---|---|")
    counts = [int(c) for c in args.particles.split(",")]
    for name, known in masks(x.shape).items():
        for m in [None] if "exact" in name else counts:
            totals, knowns = [], []
            start = time.perf_counter()
            for seed in range(args.seeds):
                out = asyncio.run(engine.reconstruct(x, y, known, np.random.default_rng(seed), m))
                total, kn = known_log_likelihood(backend, out.arrays["reconstruction"], y, known)
                totals.append(total.mean())
                knowns.append(kn.mean())
            ms = (time.perf_counter() - start) / args.seeds / len(x) * 1000
            used = out.particles
            print(f"| {name} | {used} | {np.mean(knowns):.2f} | {-np.mean(totals) / bits:.3f} | {ms:.1f} |")
    backend.close()


if __name__ == "__main__":
    main()

"""The GPU path against the CPU on one machine (issue 30, item 3).

    python -m bench.gpu_path train --store STORE --out train.json [--dataset mnist5k] [--family F ...]
    python -m bench.gpu_path timings --store STORE --out timings.json [--seconds 3]

`train` runs `genserve build-store` with the machine's GPU (training, evaluation, export and
publication; the same recipes and epoch budgets as on the CPU) and records each model's
training time, epochs and figures from its manifest. `timings` opens every model of the
store with each backend and device the machine has (ONNX Runtime on the CPU, and on CUDA
where its CUDA provider is installed; TorchScript on the CPU and on CUDA) and times, through
the serving engines in-process, sampling (samples/s), single rows (p50/p99 of one labelled
/log-likelihood row's work) and bulk scoring (rows/s); then it serves the store with
genserve's app on each device and times single rows and sampling over HTTP with
bench.httpload. `bench/gpu_path.sh` runs both on a GPU machine (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import Server, load, machine, timed
from service.batching import direct_caller
from service.config import Settings
from service.engine import build_engine
from service.resources import thread_layout
from service.runtime import (
    BackendName,
    DeviceRequest,
    load_backend,
    onnx_cuda_available,
    torch_cuda_available,
)
from service.store import ModelStore
from training.data import load_dataset

# Samples per timed /sample call: the loop samplers (a pass per row of pixels, a pass per
# denoising step) take a smaller request so that a CPU measurement ends in seconds.
SAMPLE_N = {"pixelcnn": 16, "diffusion": 16}
BULK_ROWS = {"diffusion": 256}
LIKELIHOOD_FAMILIES = ("flow", "vae", "pixelcnn", "diffusion")


def measure(fn: Callable[[], object], seconds: float, min_runs: int = 3) -> list[float]:
    """Wall times (s) of calls to fn after one warm-up call (CUDA kernels load lazily)."""
    fn()
    return timed(fn, seconds, min_runs)


def configurations() -> list[tuple[BackendName, DeviceRequest]]:
    """(backend, device) pairs this machine can run."""
    configs: list[tuple[BackendName, DeviceRequest]] = [("onnxruntime", "cpu"), ("torchscript", "cpu")]
    if onnx_cuda_available():
        configs.append(("onnxruntime", "cuda"))
    if torch_cuda_available():
        configs.append(("torchscript", "cuda"))
    return configs


def gpu_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.cuda.is_available(), "device": "cpu"}
    if torch.cuda.is_available():
        info["gpu"], info["device"] = torch.cuda.get_device_name(0), "cuda"
    info["onnxruntime_cuda"] = onnx_cuda_available()
    info["cpu_count"] = os.cpu_count()
    return info


def train(store: Path, dataset: str, families: list[str], out: Path) -> None:
    """build-store on this machine (its GPU when torch sees one); manifests' figures."""
    cmd = [sys.executable, "-m", "training.cli", "build-store", "--dataset", dataset, "--store", str(store)]
    cmd += ["--workers", "1"]
    for f in families:
        cmd += ["--family", f]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {"machine": {**machine(), **gpu_info()}, "wall_s": wall, "rc": done.returncode}
    result["models"] = models = summarize(ModelStore(store))
    out.write_text(json.dumps(result, indent=2))
    for name, e in models.items():
        t, ev = e["training"], e["evaluation"]
        print(
            f"{name}: {t['epochs']} epochs in {t['duration_s']:.0f} s on {t['device']}; "
            f"test bpd {ev.get('test_bpd')}, Bayes {ev.get('posterior_accuracy')}, "
            f"label acc {ev.get('label_accuracy')}, FID {ev.get('fid')}",
            flush=True,
        )
    if done.returncode:
        raise SystemExit(f"build-store exited with {done.returncode}")


def summarize(store: ModelStore) -> dict[str, Any]:
    """Each model's training record and evaluation row, from its manifest."""
    models: dict[str, Any] = {}
    for name in store.names():
        m = store.open(name).manifest
        models[name] = {
            "training": m.training.model_dump(mode="json"),
            "evaluation": {k: v for k, v in m.evaluation.items() if k != "training"},
        }
    return models


def in_process(store: ModelStore, dataset: str, seconds: float) -> dict[str, Any]:
    """Per (backend, device) and model: samples/s, single-row p50/p99 ms, bulk rows/s."""
    env = Settings()
    threads, lanes = thread_layout(env.threads, env.lanes)
    x_all = load_dataset(dataset).x  # [N, 1, H, W]
    loop = asyncio.new_event_loop()
    out: dict[str, Any] = {}
    for backend_name, device in configurations():
        key = f"{backend_name}/{device}"
        out[key] = {}
        for name in store.names():
            version = store.open(name)
            family = version.manifest.family
            # The server's layout: on the CPU, ONNX Runtime cuts a batch into a part per lane.
            backend = load_backend(version, backend_name, device, threads, lanes)
            pool = ThreadPoolExecutor(backend.lanes) if backend.lanes > 1 else None
            engine = build_engine(version.manifest, direct_caller(backend, lanes=pool))
            samples = int(version.manifest.family_info.get("default_samples", 1) or 1)
            n = SAMPLE_N.get(family, 64)
            row: dict[str, Any] = {}

            def sample(engine: Any = engine, n: int = n) -> None:
                rng = np.random.Generator(np.random.PCG64(0))
                loop.run_until_complete(engine.sample(n, np.full(n, 5), rng))

            t = measure(sample, seconds)
            row["sample_n"] = n
            row["samples_per_s"] = n / float(np.median(t))
            if family in LIKELIHOOD_FAMILIES:
                x1 = x_all[:1].astype(np.int64)
                rows = BULK_ROWS.get(family, 1024)
                xb = np.resize(x_all, (rows, *x_all.shape[1:])).astype(np.int64)

                def score(x: np.ndarray, engine: Any = engine, samples: int = samples) -> None:
                    labels = np.full(len(x), 3)
                    loop.run_until_complete(engine.log_likelihood(x, labels, samples, 0))

                single = measure(functools.partial(score, x1), seconds, min_runs=20)
                row["single_p50_ms"] = 1000 * float(np.percentile(single, 50))
                row["single_p99_ms"] = 1000 * float(np.percentile(single, 99))
                bulk = measure(functools.partial(score, xb), seconds)
                row["bulk_rows"] = rows
                row["bulk_rows_per_s"] = rows / float(np.median(bulk))
            backend.close()
            if pool is not None:
                pool.shutdown()
            out[key][name] = row
            print(f"in-process {key} {name}: {json.dumps(row)}", flush=True)
    loop.close()
    return out


def served(store: Path, dataset: str, seconds: float) -> dict[str, Any]:
    """genserve's app per (backend, device): single rows at c=1 and /sample at c=4 over HTTP."""
    x1 = load_dataset(dataset).x[:1, 0]  # [1, H, W]
    out: dict[str, Any] = {}
    for backend_name, device in configurations():
        key = f"{backend_name}/{device}"
        server = Server(
            "service.app:create_app", store, {"GENSERVE_BACKEND": backend_name, "GENSERVE_DEVICE": device}
        )
        out[key] = {}
        try:
            for name in ModelStore(store).names():
                family = name.split("-", 1)[0]
                row: dict[str, Any] = {}
                if family in LIKELIHOOD_FAMILIES:
                    body = json.dumps({"model": name, "inputs": x1.tolist(), "labels": 3}).encode()
                    g = load(server.port, "/log-likelihood", body, 1, seconds)
                    row["single_c1"] = {k: g[k] for k in ("p50_ms", "p99_ms", "throughput_rps", "errors")}
                n = SAMPLE_N.get(family, 64)
                body = json.dumps({"model": name, "n": n, "labels": 5, "seed": 1}).encode()
                g = load(server.port, "/sample", body, 4, seconds)
                row["sample_c4"] = {
                    "n": n,
                    "samples_per_s": n * g["throughput_rps"],
                    "p50_ms": g["p50_ms"],
                    "errors": g["errors"],
                }
                out[key][name] = row
                print(f"served {key} {name}: {json.dumps(row)}", flush=True)
        finally:
            server.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("step", choices=("train", "timings"))
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--family", action="append", default=[], help="train: families (default: all)")
    p.add_argument("--seconds", type=float, default=3.0, help="timings: seconds per measurement")
    p.add_argument("--skip-served", action="store_true", help="timings: in-process only")
    a = p.parse_args()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.step == "train":
        train(a.store, a.dataset, a.family, a.out)
        return
    result: dict[str, Any] = {"machine": {**machine(), **gpu_info()}, "seconds": a.seconds}
    result["in_process"] = in_process(ModelStore(a.store), a.dataset, a.seconds)
    a.out.write_text(json.dumps(result, indent=2))  # kept if the served part does not finish
    if not a.skip_served:
        result["served"] = served(a.store, a.dataset, a.seconds)
        a.out.write_text(json.dumps(result, indent=2))
    print(f"results written to {a.out}")


if __name__ == "__main__":
    main()

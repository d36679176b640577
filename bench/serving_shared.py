"""The server's runtime threads on a machine another program shares.

    python -m bench.serving_shared [--store model_store] [--duration 6] [--out FILE]

Starts genserve (a real uvicorn process) under each thread layout (GENSERVE_THREADS /
GENSERVE_LANES), and drives it with bench/httpload.py on loopback: single-row
/log-likelihood on the flow at concurrency 1 (latency-bound) and VAE /sample n=64 at
concurrency 4 (throughput-bound), first on a quiet machine, then beside one busy-looping
process (a user's other CPU-bound program). Prints and optionally saves throughput and
p50/p99 latency per cell.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.serving import Server, load
from training.data import load_dataset

LAYOUTS = {
    "2 threads, 2 lanes (default)": ("2", "2"),
    "2 threads, 1 lane": ("2", "1"),
    "1 thread": ("1", "1"),
}


def _workloads() -> dict[str, tuple[str, bytes, int]]:
    x = load_dataset("digits").x[:1].tolist()
    return {
        "flow single row c=1": (
            "/log-likelihood",
            json.dumps({"model": "flow-digits", "inputs": x}).encode(),
            1,
        ),
        "vae sample n=64 c=4": (
            "/sample",
            json.dumps({"model": "vae-digits", "n": 64, "seed": 1, "format": "npy"}).encode(),
            4,
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    for hogs in (0, 1):
        hog = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
        try:
            for layout, (threads, lanes) in LAYOUTS.items():
                server = Server(
                    "service.app:create_app",
                    args.store,
                    {
                        "GENSERVE_THREADS": threads,
                        "GENSERVE_LANES": lanes,
                        "GENSERVE_MODELS": json.dumps(["flow-digits", "vae-digits"]),
                    },
                )
                try:
                    for name, (path, body, concurrency) in _workloads().items():
                        load(server.port, path, body, concurrency, 1.0)  # warm-up
                        r = load(server.port, path, body, concurrency, args.duration)
                        row = {"hogs": hogs, "layout": layout, "workload": name, **r}
                        rows.append(row)
                        print(
                            f"hogs={hogs} {layout:28s} {name:22s} {r['throughput_rps']:8.1f}/s "
                            f"p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                            flush=True,
                        )
                finally:
                    server.stop()
        finally:
            for p in hog:
                p.kill()
                p.wait()
        time.sleep(0.5)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()

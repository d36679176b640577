"""Start-up time and single-row latency of the server from two or more source trees, in
alternating rounds (issue 32: the playground page and the client must change neither).

    python -m bench.source_trees --tree /tmp/before --tree . [--rounds 5] [--duration 6]

Each round starts the server from each tree in turn (cwd and PYTHONPATH at the tree, the
same environment and store), times the start until /health/ready answers 200, then
drives single-row `/log-likelihood` on flow-digits at concurrency 1 with bench.httpload;
the figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.serving import free_port, load, machine, wait_ready
from training.data import load_dataset


def start(tree: Path, store: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    port = free_port()
    env = {**os.environ, "GENSERVE_MODEL_STORE": str(store.resolve()), "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.app:create_app",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=tree,
        env=env,
    )
    wait_ready(port, "/health/ready", str(tree))
    return proc, port, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tree", type=Path, action="append", required=True)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--model", default="flow-digits")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    x = load_dataset("digits").x[:1, 0].astype(int).tolist()
    body = orjson.dumps({"model": a.model, "inputs": x, "labels": 3})
    runs: dict[str, list[dict[str, Any]]] = {str(t): [] for t in a.tree}
    for _ in range(a.rounds):
        for tree in a.tree:
            proc, port, startup = start(tree.resolve(), a.store)
            try:
                r = load(port, "/log-likelihood", body, a.concurrency, a.duration)
            finally:
                proc.terminate()
                proc.wait(timeout=60)
            runs[str(tree)].append({"startup_s": startup, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"]})
    summary = {
        tree: {k: float(np.median([r[k] for r in rs])) for k in ("startup_s", "p50_ms", "p99_ms")}
        for tree, rs in runs.items()
    }
    for tree, s in summary.items():
        print(
            f"{tree}: start-up {s['startup_s']:.2f} s, c=1 p50 {s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms"
        )
    if a.out:
        a.out.write_text(json.dumps({"machine": machine(), "rounds": runs, "median": summary}, indent=1))


if __name__ == "__main__":
    main()

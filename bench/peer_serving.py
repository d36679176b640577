"""genserve beside the peer a user would pick instead (KServe's Python ModelServer) and the
naive hand-written server, on the same graphs and workloads, in one run (issue 34).

    python -m bench.peer_serving [--store model_store] [--duration 6] [--out FILE]
        [--models flow-digits,vae-digits,pixelcnn-digits] [--concurrency 1,16,64,256] [--skip W1,W3]

- W1 bulk scoring: one 10,000-row log-likelihood request (label 3 on every row): genserve
  with an .npy body and with JSON, KServe and the naive server with JSON (their documented
  ways); rows/s.
- W2 single row, with its label, at each concurrency: rows/s, p50/p99/p99.9 (ms), errors,
  the CPU each server process used (cores) and the load generator's own (cores); in
  `--rounds` rounds, the servers alternating within each, every figure the median over
  rounds and the rows/s ratio the median of the rounds' ratios.
- W3 sampling: n = 64 of one label, one request at a time, JSON answers from all three;
  samples/s and p50. (Run before W1, whose long requests have stalled the peer; W1 starts
  a fresh peer for each model.)

KServe runs from its own environment (bench/peer/env.py, made on first use), serving the
store's ONNX graphs through ONNX Runtime with the same estimators (bench/peer/kserve_server.py).
The load comes from bench.httpload, a separate lean process whose CPU is measured; the
servers alternate at each point, so drift falls on all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.peer.env import python as peer_python
from bench.server_cpu import stat_cpu_seconds
from bench.serving import Server, free_port, load, machine, npy, wait_ready
from training.data import load_dataset

ROWS = 10_000
HERE = Path(__file__).resolve().parent


class KServePeer:
    """bench/peer/kserve_server.py in the peer environment, on a free port."""

    def __init__(self, store: Path, models: list[str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                str(peer_python()),
                str(HERE / "peer" / "kserve_server.py"),
                "--store",
                str(store),
                "--port",
                str(self.port),
                "--models",
                ",".join(models),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(self.port, "/v2/health/ready", "the KServe peer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def cpu_of(pid: int) -> float:
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def measured(pid: int, run: Any) -> dict[str, Any]:
    """Run a load and add the server process's cores during it; a load that fails is
    recorded with why (and the server's exit code if it died), not raised."""
    before, t0 = cpu_of(pid), time.perf_counter()
    try:
        out: dict[str, Any] = run()
    except subprocess.CalledProcessError as exc:
        alive = Path(f"/proc/{pid}").exists()
        return {"failed": (exc.stderr or "")[-500:], "server_alive": alive}
    wall = time.perf_counter() - t0
    out["server_cores"] = (cpu_of(pid) - before) / wall
    out["generator_cores"] = out.get("cpu_s", 0.0) / max(out.get("seconds", wall), 1e-9)
    return out


def combined(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One W2 point from its rounds: medians of the rates and percentiles, the largest CPU."""
    out: dict[str, Any] = {"rounds": rounds}
    rounds = [r for r in rounds if "failed" not in r]  # the failures stay listed above
    if not rounds:
        raise RuntimeError(f"every round failed: {out['rounds'][0]}")
    for key in ("throughput_rps", "p50_ms", "p99_ms", "p999_ms", "server_cores"):
        out[key] = float(np.median([r[key] for r in rounds]))
    out["generator_cores"] = max(r["generator_cores"] for r in rounds)
    out["errors"] = sum(r["errors"] for r in rounds)
    return out


def requests_for(model: str, x: np.ndarray, label: int) -> dict[str, tuple[str, bytes, str]]:
    """(path, body, content type) of one scoring request per server."""
    rows = x[:, 0].tolist()
    return {
        "genserve": (
            "/log-likelihood",
            orjson.dumps({"model": model, "inputs": rows, "labels": label}),
            "application/json",
        ),
        "kserve": (
            f"/v1/models/{model}:predict",
            orjson.dumps({"instances": rows, "labels": label}),
            "application/json",
        ),
        "naive": (
            "/log-likelihood",
            orjson.dumps({"model": model, "inputs": rows, "labels": label}),
            "application/json",
        ),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, default=Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    p.add_argument("--models", default="flow-digits,vae-digits,pixelcnn-digits")
    p.add_argument("--concurrency", default="1,16,64,256")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per W2 point and server")
    p.add_argument("--rounds", type=int, default=3, help="W2: the duration is cut into this many rounds")
    p.add_argument("--skip", default="")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    models = a.models.split(",")
    skip = set(filter(None, a.skip.split(",")))
    data = load_dataset("digits")
    x_all = data.x.astype(np.int64)  # [1797, 1, 8, 8]
    servers: dict[str, Any] = {}
    results: dict[str, Any] = {"machine": machine(), "store": str(a.store), "duration": a.duration}
    try:
        servers["genserve"] = Server("service.app:create_app", a.store)
        servers["kserve"] = KServePeer(a.store, [*models, "gan-digits"])
        servers["naive"] = Server("bench.naive_server:create_app", a.store)
        pids = {k: s.proc.pid for k, s in servers.items()}
        if "W2" not in skip:
            results["W2"] = {}
            for model in models:
                reqs = requests_for(model, x_all[:1], 3)
                sweep: dict[str, Any] = {}
                for c in map(int, a.concurrency.split(",")):
                    # Rounds, each server once per round: the peer's rate moves by a third
                    # between minutes on this VM, so ratios are taken within a round.
                    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in reqs}
                    for _ in range(a.rounds):
                        for name, (path, body, ctype) in reqs.items():
                            port = servers[name].port
                            rounds[name].append(
                                measured(
                                    pids[name],
                                    lambda port=port, path=path, body=body, ctype=ctype, c=c: load(
                                        port, path, body, c, a.duration / a.rounds, ctype
                                    ),
                                )
                            )
                    point: dict[str, Any] = {name: combined(rs) for name, rs in rounds.items()}
                    point["genserve_vs_kserve_rps_by_round"] = [
                        g["throughput_rps"] / k["throughput_rps"]
                        for g, k in zip(rounds["genserve"], rounds["kserve"], strict=True)
                    ]
                    g, k = point["genserve"], point["kserve"]
                    gen = max(point[n]["generator_cores"] for n in reqs)
                    point["genserve_vs_kserve_rps"] = float(
                        np.median(point["genserve_vs_kserve_rps_by_round"])
                    )
                    sweep[str(c)] = point
                    print(
                        f"W2 {model} c={c}: genserve {g['throughput_rps']:.0f} rows/s p50 {g['p50_ms']:.1f} "
                        f"p99 {g['p99_ms']:.1f} | kserve {k['throughput_rps']:.0f} p50 {k['p50_ms']:.1f} "
                        f"p99 {k['p99_ms']:.1f} | naive {point['naive']['throughput_rps']:.0f} "
                        f"| ratio {point['genserve_vs_kserve_rps']:.2f} | generator "
                        f"{gen:.2f} cores",
                        flush=True,
                    )
                results["W2"][model] = sweep
        if "W3" not in skip:
            results["W3"] = {}
            for model in [*models, "gan-digits"]:
                # JSON answers from all three (the peers have no binary form)
                samplers: dict[str, tuple[str, bytes]] = {
                    "genserve": (
                        "/sample",
                        orjson.dumps({"model": model, "n": 64, "labels": 3, "seed": 0}),
                    ),
                    "kserve": (
                        f"/v1/models/{model}-sample:predict",
                        orjson.dumps({"instances": [{"n": 64, "labels": 3, "seed": 0}]}),
                    ),
                    "naive": ("/sample", orjson.dumps({"model": model, "n": 64, "labels": 3, "seed": 0})),
                }
                row = {}
                for name, (path, body) in samplers.items():
                    r = measured(
                        pids[name],
                        lambda n=name, path=path, body=body: load(
                            servers[n].port, path, body, 1, a.duration / 2
                        ),
                    )
                    if "failed" not in r and r.get("errors"):  # e.g. a 404: not a sampling rate
                        r = {"failed": f"{r['errors']} errors: {r.get('statuses')}", **r}
                    row[name] = r
                    if "failed" not in r:
                        r["samples_per_s"] = 64 * r["throughput_rps"]
                print(
                    f"W3 {model}: "
                    + ", ".join(
                        (
                            f"{n} {v['samples_per_s']:.0f} samples/s (p50 {v['p50_ms']:.0f} ms)"
                            if "failed" not in v
                            else f"{n} FAILED"
                        )
                        for n, v in row.items()
                    ),
                    flush=True,
                )
                results["W3"][model] = row
        if "W1" not in skip:
            results["W1"] = {}
            xs, labels = x_all[np.arange(ROWS) % len(x_all)], 3
            for model in models:
                # A fresh peer per model: after a long blocking request (the VAE's 10,000
                # rows, ~54 s) KServe 0.21 stopped accepting connections with its process
                # alive, which lost every later peer figure of a run.
                servers["kserve"].stop()
                servers["kserve"] = KServePeer(a.store, [*models, "gan-digits"])
                pids["kserve"] = servers["kserve"].proc.pid
                reqs = requests_for(model, xs, labels)
                ways = {
                    "genserve_npy": (
                        "genserve",
                        f"/log-likelihood?model={model}&labels=3",
                        npy(xs[:, 0]),
                        "application/x-npy",
                    ),
                    "genserve_json": ("genserve", *reqs["genserve"]),
                    "kserve_json": ("kserve", *reqs["kserve"]),
                    "naive_json": ("naive", *reqs["naive"]),
                }
                row: dict[str, Any] = {}
                for way, (name, path, body, ctype) in ways.items():
                    r = measured(
                        pids[name],
                        lambda n=name, path=path, body=body, ctype=ctype: load(
                            servers[n].port, path, body, 1, 3600.0, ctype, requests=1
                        ),
                    )
                    row[way] = r
                    if "failed" in r:
                        print(f"W1 {model} {way}: FAILED {r}", flush=True)
                        continue
                    r["rows_per_s"] = ROWS / (r["p50_ms"] / 1000.0)
                    print(f"W1 {model} {way}: {r['rows_per_s']:.0f} rows/s", flush=True)
                results["W1"][model] = row
    finally:
        for s in servers.values():
            s.stop()
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

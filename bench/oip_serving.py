"""The Open Inference Protocol against the genserve API, on the same server and workloads.

    python -m bench.oip_serving [--store model_store] [--model flow-digits] [--duration 6] [--out FILE]

- W1 bulk scoring: one 10,000-row log-likelihood request (label 3 for every row), as the
  genserve API's .npy body, as OIP REST with binary tensors in and out, and as OIP gRPC
  (raw contents): rows/s, and OIP's ratio to the npy body (issue 29's target: ≥ 0.9).
- W2 single row: one row with its label at concurrency 1, as genserve JSON, OIP REST JSON,
  OIP REST binary and OIP gRPC: p50 and its difference from genserve JSON (target: within
  0.3 ms).

One server process serves both protocols (GENSERVE_GRPC_PORT); the load comes from a
separate process (bench.httpload, bench.grpcload), whose own CPU is measured and reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bench.serving import Server, free_port, load, machine, npy
from service.oip.grpc.compile import stubs
from training.data import load_dataset

ROWS = 10_000
HEADER = "Inference-Header-Content-Length"


def oip_binary(tensors: list[tuple[str, np.ndarray, str]], binary_out: bool = True) -> tuple[bytes, int]:
    """An OIP REST body with every tensor binary: (body, JSON header length)."""
    head = {
        "inputs": [
            {"name": n, "datatype": dt, "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
            for n, a, dt in tensors
        ],
        "parameters": {"binary_data_output": binary_out},
    }
    js = orjson.dumps(head)
    return js + b"".join(np.ascontiguousarray(a).tobytes() for _, a, _ in tensors), len(js)


def oip_json(tensors: list[tuple[str, np.ndarray, str]]) -> bytes:
    return orjson.dumps(
        {
            "inputs": [
                {"name": n, "datatype": dt, "shape": list(a.shape), "data": a.reshape(-1).tolist()}
                for n, a, dt in tensors
            ]
        }
    )


def grpc_request(model: str, tensors: list[tuple[str, np.ndarray, str]]) -> bytes:
    pb, _ = stubs()
    req = pb.ModelInferRequest(model_name=model)
    for n, a, dt in tensors:
        req.inputs.add(name=n, datatype=dt, shape=list(a.shape))
        req.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
    return bytes(req.SerializeToString())


def grpc_load(port: int, request: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".bin", delete=False) as fh:
        fh.write(request)
    cmd = [sys.executable, "-m", "bench.grpcload", "--port", str(port), "--request", fh.name]
    cmd += ["-c", str(concurrency), "-d", str(duration)]
    out = _measured(cmd)
    os.unlink(fh.name)
    return out


def _measured(cmd: list[str]) -> dict[str, Any]:
    """Run a load generator process; its JSON line, with its CPU share of the run."""
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return _with_cpu(json.loads(out.stdout))


def _with_cpu(result: dict[str, Any]) -> dict[str, Any]:
    """The generator's own CPU during the run (its start-up excluded) as a share of the run."""
    result["generator_cpu_share"] = result["cpu_s"] / result["seconds"] if result["seconds"] else None
    return result


def http_load(
    port: int, path: str, body: bytes, duration: float, content_type: str, headers: list[str] | None = None
) -> dict[str, Any]:
    return _with_cpu(load(port, path, body, 1, duration, content_type, headers=headers))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    p.add_argument("--model", default="flow-digits")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--out", type=Path)
    p.add_argument("--skip", default="", help="W1 and/or W2, comma-separated")
    p.add_argument("--rows", type=int, default=ROWS, help="rows of the bulk request")
    a = p.parse_args()
    rows = a.rows
    digits = load_dataset("digits").x[:, 0]  # [1797, 8, 8] levels
    x = np.resize(digits, (rows, 8, 8))[:, None].astype(np.uint8)  # [rows, 1, 8, 8]
    labels = np.full(rows, 3, dtype=np.int64)
    skip = set(a.skip.split(",")) - {""}
    oip = f"{a.model}.log_likelihood"
    grpc_port = free_port()
    server = Server("service.app:create_app", a.store, {"GENSERVE_GRPC_PORT": str(grpc_port)})
    time.sleep(1.0)  # the gRPC port opens with the lifespan; /health/ready already answered
    results: dict[str, Any] = {"machine": machine(), "model": a.model, "rows": rows, "duration_s": a.duration}
    d = a.duration
    try:
        if "W1" not in skip:
            results["W1 bulk"] = bulk_scoring(server, grpc_port, oip, a.model, x, labels, d)
        if "W2" not in skip:
            results["W2 single row"] = single_row(server, grpc_port, oip, a.model, x, labels, d)
    finally:
        server.stop()
    for name, v in results.get("W1 bulk", {}).items():
        print(
            f"W1 {name}: {v['rows_per_s']:.0f} rows/s ({v['ratio_to_npy']:.2f}x npy), "
            f"{v['requests']} requests, generator CPU {v['generator_cpu_share']:.0%}"
        )
    for name, v in results.get("W2 single row", {}).items():
        print(
            f"W2 {name}: p50 {v['p50_ms']:.2f} ms ({v['p50_minus_genserve_ms']:+.2f} ms), "
            f"{v['throughput_rps']:.0f} rps, generator CPU {v['generator_cpu_share']:.0%}"
        )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2))


def bulk_scoring(
    server: Server, grpc_port: int, oip: str, model: str, x: np.ndarray, labels: np.ndarray, d: float
) -> dict[str, Any]:
    """W1: the whole request as an .npy body, as OIP REST binary, as OIP gRPC, one request of
    each way per round, interleaved (a request takes seconds, and the machine drifts between
    minutes); each way's ratio to npy is the median over rounds of that round's ratio."""
    rows = len(x)
    bulk = [("inputs", x, "UINT8"), ("labels", labels, "INT64")]
    body, js = oip_binary(bulk)
    request = grpc_request(oip, bulk)
    once = 0.01  # a closed loop whose deadline passes during its first request sends exactly one
    ways = {
        "npy": lambda: http_load(
            server.port, f"/log-likelihood?model={model}&labels=3", npy(x[:, 0]), once, "application/x-npy"
        ),
        "oip_rest_binary": lambda: http_load(
            server.port,
            f"/v2/models/{oip}/infer",
            body,
            once,
            "application/octet-stream",
            [f"{HEADER}: {js}"],
        ),
        "oip_grpc": lambda: grpc_load(grpc_port, request, 1, once),
    }
    rounds = max(3, round(d / 10))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            runs[name].append(run())
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        seconds = [r["mean_ms"] / 1000 for r in rs]
        ratios = [g["mean_ms"] / r["mean_ms"] for r, g in zip(rs, runs["npy"], strict=True)]
        out[name] = {
            "requests": len(rs),
            "rows_per_s": rows / float(np.median(seconds)),
            "ratio_to_npy": float(np.median(ratios)),
            "generator_cpu_share": float(np.mean([r["generator_cpu_share"] for r in rs])),
            "rounds": rs,
        }
    return out


def single_row(
    server: Server, grpc_port: int, oip: str, model: str, x: np.ndarray, labels: np.ndarray, d: float
) -> dict[str, Any]:
    """W2: one row with its label at concurrency 1, every way, interleaved in rounds so that
    the machine's drift falls on all alike; each way's p50 difference from genserve JSON is
    the median over rounds of the same round's difference."""
    one = [("inputs", x[:1].astype(np.int64), "INT64"), ("labels", labels[:1], "INT64")]
    body1, js1 = oip_binary(one)
    genserve_json = orjson.dumps({"model": model, "inputs": x[:1, 0].tolist(), "labels": 3})
    path = f"/v2/models/{oip}/infer"
    ways = {
        "genserve_json": lambda t: http_load(
            server.port, "/log-likelihood", genserve_json, t, "application/json"
        ),
        "oip_rest_json": lambda t: http_load(server.port, path, oip_json(one), t, "application/json"),
        "oip_rest_binary": lambda t: http_load(
            server.port, path, body1, t, "application/octet-stream", [f"{HEADER}: {js1}"]
        ),
        "oip_grpc": lambda t: grpc_load(grpc_port, grpc_request(oip, one), 1, t),
    }
    # Short rounds: on a shared 2-vCPU VM the p50 itself drifts by 2 ms within a minute, so
    # each way's runs must lie close in time to the genserve run they are compared with.
    rounds = max(5, round(d / 2))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, run in ways.items():
            runs[name].append(run(d / rounds))
    out: dict[str, Any] = {}
    for name, rs in runs.items():
        diffs = [r["p50_ms"] - g["p50_ms"] for r, g in zip(rs, runs["genserve_json"], strict=True)]
        out[name] = {
            "p50_ms": float(np.median([r["p50_ms"] for r in rs])),
            "p99_ms": float(np.median([r["p99_ms"] for r in rs])),
            "throughput_rps": float(np.mean([r["throughput_rps"] for r in rs])),
            "generator_cpu_share": float(np.mean([r["generator_cpu_share"] for r in rs])),
            "p50_minus_genserve_ms": float(np.median(diffs)),
            "rounds": rs,
        }
    return out


if __name__ == "__main__":
    main()

"""Serving benchmark: genserve vs the in-process limit vs a naive hand-written server.

    python -m bench.serving [--store model_store] [--duration 6] [--out bench/results/cpu.json]
    python -m bench.serving --dataset mnist5k --store STORE --rows 1000 --sample-n 16 --out ...

Starts genserve and the naive server (bench/naive_server.py) as real processes on
loopback and drives them with bench/httpload.py (a separate process) for bounded time at
concurrency 1, 4, 16, 64. In the same run it measures the limit: the same graphs called
in-process through the same runtime and thread settings, at the batch sizes the server
forms. Workloads on the models `<family>-<dataset>` (default: the digits zoo):
  W1 bulk scoring: one /log-likelihood request of 10,000 rows (--rows), JSON and
     application/x-npy;
  W2 single-row /log-likelihood;
  W3 /sample n=64 (--sample-n) for each family;
  W4 PixelCNN /sample from 8 concurrent clients with n/8 each, vs one request of n.
On images larger than 16×16 the naive server does not sample from the PixelCNN (its
sampler is 784 sequential full passes, minutes per request) and the PixelCNN's sampling
stops at concurrency 4.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.batching import direct_caller
from service.config import Settings
from service.engine import build_engine
from service.resources import available_cores, thread_layout
from service.runtime import load_backend
from service.store import ModelStore
from training.data import load_dataset

LIKELIHOOD_FAMILIES = ("pixelcnn", "vae", "flow")
SAMPLER_FAMILIES = ("gan", "vae", "flow", "pixelcnn")
LIKELIHOOD = tuple(f"{f}-digits" for f in LIKELIHOOD_FAMILIES)
SAMPLERS = tuple(f"{f}-digits" for f in SAMPLER_FAMILIES)
CONCURRENCY = (1, 4, 16, 64)


@dataclass(frozen=True)
class Plan:
    """What one run measures: the models of one dataset and the request sizes."""

    dataset: str
    shape: tuple[int, int]  # H, W of the dataset's one-channel images
    rows: int = 10_000  # W1's request
    sample_n: int = 64  # W3's request, W4's one request

    @property
    def likelihood(self) -> tuple[str, ...]:
        return tuple(f"{f}-{self.dataset}" for f in LIKELIHOOD_FAMILIES)

    @property
    def samplers(self) -> tuple[str, ...]:
        return tuple(f"{f}-{self.dataset}" for f in SAMPLER_FAMILIES)

    @property
    def large(self) -> bool:
        return self.shape[0] * self.shape[1] > 256

    def sample_concurrency(self, name: str) -> tuple[int, ...]:
        """A PixelCNN request is a loop of sequential passes: 64 concurrent loops exceed a
        bounded run here, and on large images so do 16."""
        if not name.startswith("pixelcnn"):
            return CONCURRENCY
        return tuple(c for c in CONCURRENCY if c <= (4 if self.large else 16))

    def naive_samples(self, name: str) -> bool:
        return not (self.large and name.startswith("pixelcnn"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(port: int, path: str, what: str) -> None:
    """Return once GET `path` on the loopback `port` answers 200 (a minute at most)."""
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not become ready")


class Server:
    """A uvicorn process serving an app factory on a free port."""

    def __init__(self, factory: str, store: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "GENSERVE_MODEL_STORE": str(store), **(extra_env or {})}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                factory,
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
        )
        wait_ready(self.port, "/health/ready" if factory.startswith("service") else "/docs", factory)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def load(
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    duration: float,
    content_type: str = "application/json",
    requests: int | None = None,
    headers: list[str] | None = None,
) -> dict[str, Any]:
    """Run bench.httpload in its own process and return its JSON summary."""
    with tempfile.NamedTemporaryFile(suffix=".body", delete=False) as fh:
        fh.write(body)
    cmd = [
        sys.executable,
        "-m",
        "bench.httpload",
        "--port",
        str(port),
        "--path",
        path,
        "--body",
        fh.name,
        "-c",
        str(concurrency),
        "-d",
        str(duration),
        "--content-type",
        content_type,
    ]
    if requests is not None:
        cmd += ["-n", str(requests)]
    for h in headers or []:
        cmd += ["-H", h]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    os.unlink(fh.name)
    return json.loads(out.stdout)


def timed(fn: Any, duration: float, min_runs: int = 3) -> list[float]:
    """Call fn repeatedly for about `duration` seconds; per-call wall times (s)."""
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < duration or len(times) < min_runs:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


class Limit:
    """In-process calls through the same runtime with the server's thread layout: the same
    threads and lanes, a batch cut into the same parts (service.batching.run_batch)."""

    def __init__(self, store: ModelStore) -> None:
        env = Settings()  # GENSERVE_THREADS / GENSERVE_LANES, as the server under test reads them
        self.threads, self.lanes = thread_layout(env.threads, env.lanes)
        self.pool = ThreadPoolExecutor(self.lanes) if self.lanes > 1 else None
        self.engines = {}
        self.loop = asyncio.new_event_loop()
        for name in store.names():
            version = store.open(name)
            backend = load_backend(version, "onnxruntime", "cpu", self.threads, self.lanes)
            self.engines[name] = build_engine(version.manifest, direct_caller(backend, lanes=self.pool))

    def score(self, name: str, x: np.ndarray, labels: np.ndarray | None) -> None:
        engine = self.engines[name]
        samples = int(engine.manifest.family_info.get("default_samples", 1) or 1)
        self.loop.run_until_complete(engine.log_likelihood(x, labels, samples, 0))

    def sample(self, name: str, n: int, labels: np.ndarray | None) -> None:
        engine = self.engines[name]
        rng = np.random.Generator(np.random.PCG64(0))
        self.loop.run_until_complete(engine.sample(n, labels, rng))


def npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime
    import torch

    return {
        "cpu": cpu,
        "cores_available": available_cores(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "torch": torch.__version__,
        "device": "cpu",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--out", type=Path, default=Path("bench/results/cpu.json"))
    p.add_argument("--skip", default="", help="comma-separated workloads to skip (W1,W2,W3,W4)")
    p.add_argument("--dataset", default="digits", help="the models <family>-<dataset> and their data")
    p.add_argument("--rows", type=int, default=10_000, help="rows of W1's request")
    p.add_argument("--sample-n", type=int, default=64, help="samples per W3 request (a multiple of 8)")
    a = p.parse_args()
    skip = set(a.skip.split(",")) - {""}
    store = ModelStore(a.store)
    data = load_dataset(a.dataset)
    x_all = data.x[:, 0]  # [N, H, W]
    plan = Plan(a.dataset, (x_all.shape[1], x_all.shape[2]), a.rows, a.sample_n)
    missing = [n for n in (*plan.samplers, *plan.likelihood) if n not in store.names()]
    if missing:
        raise SystemExit(f"models missing from {a.store}: {missing}; run `make build-store` first")
    results: dict[str, Any] = {
        "machine": machine(),
        "duration_s": a.duration,
        "dataset": plan.dataset,
        "rows": plan.rows,
        "sample_n": plan.sample_n,
    }
    limit = Limit(store)
    genserve = Server("service.app:create_app", a.store)
    naive = Server("bench.naive_server:create_app", a.store)
    try:
        if "W1" not in skip:
            results["W1"] = bulk(genserve, limit, x_all, a.duration, plan)
        if "W2" not in skip:
            results["W2"] = single_row(genserve, naive, limit, x_all, a.duration, plan)
        if "W3" not in skip:
            results["W3"] = sampling(genserve, naive, limit, a.duration, plan)
        if "W4" not in skip:
            results["W4"] = pixelcnn_fanin(genserve, plan)
    finally:
        genserve.stop()
        naive.stop()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(results, indent=2))
    print(render(results))
    print(f"\nresults written to {a.out}")


def bulk(server: Server, limit: Limit, x_all: np.ndarray, duration: float, plan: Plan) -> dict[str, Any]:
    """W1: one request of `plan.rows` rows (labels=3 for all rows), JSON and npy, vs the limit."""
    rows = plan.rows
    x = np.resize(x_all, (rows, *plan.shape))
    out: dict[str, Any] = {}
    for name in plan.likelihood:
        xs = x[:, None].astype(np.int64)
        lim = timed(lambda name=name, xs=xs: limit.score(name, xs, np.full(rows, 3)), duration)
        body_json = json.dumps({"model": name, "inputs": x.tolist(), "labels": 3}).encode()
        served_json = load(server.port, "/log-likelihood", body_json, 1, duration, requests=None)
        served_npy = load(
            server.port,
            f"/log-likelihood?model={name}&labels=3",
            npy(x.astype(np.uint8)),
            1,
            duration,
            "application/x-npy",
        )
        lim_rps = rows / float(np.median(lim))
        out[name] = {
            "limit_rows_per_s": lim_rps,
            "json_rows_per_s": rows * served_json["throughput_rps"],
            "npy_rows_per_s": rows * served_npy["throughput_rps"],
            "json_ratio": rows * served_json["throughput_rps"] / lim_rps,
            "npy_ratio": rows * served_npy["throughput_rps"] / lim_rps,
            "json": served_json,
            "npy": served_npy,
        }
        e = out[name]
        say(f"W1 {name}: limit {lim_rps:.0f} rows/s; npy {e['npy_ratio']:.2f}x, json {e['json_ratio']:.2f}x")
    return out


def single_row(
    server: Server, naive: Server, limit: Limit, x_all: np.ndarray, duration: float, plan: Plan
) -> dict[str, Any]:
    """W2: single-row /log-likelihood (labels given), concurrency sweep, vs limit and naive."""
    out: dict[str, Any] = {}
    for name in plan.likelihood:
        x1 = x_all[:1]
        body = json.dumps({"model": name, "inputs": x1.tolist(), "labels": 3}).encode()
        x1i = x1[:, None].astype(np.int64)
        single = timed(lambda name=name, x1i=x1i: limit.score(name, x1i, np.array([3])), duration)
        entry: dict[str, Any] = {
            "limit_single_p50_ms": 1000 * float(np.percentile(single, 50)),
            "limit_single_p99_ms": 1000 * float(np.percentile(single, 99)),
            "paired_c1": paired_single(server, limit, name, body, x1i, duration),
            "sweep": {},
        }
        for c in CONCURRENCY:
            xb = np.resize(x_all, (c, *plan.shape))[:, None].astype(np.int64)
            lim = timed(lambda name=name, xb=xb, c=c: limit.score(name, xb, np.full(c, 3)), duration / 2)
            g = load(server.port, "/log-likelihood", body, c, duration)
            nv = load(naive.port, "/log-likelihood", body, c, duration)
            entry["sweep"][c] = {"limit_rps": c / float(np.median(lim)), "genserve": g, "naive": nv}
            say(
                f"W2 {name} c={c}: genserve {g['throughput_rps']:.0f} rps p50 {g['p50_ms']:.2f} ms; "
                f"naive {nv['throughput_rps']:.0f} rps; limit {c / float(np.median(lim)):.0f} rps"
            )
        out[name] = entry
    return out


def paired_single(
    server: Server, limit: Limit, name: str, body: bytes, x1i: np.ndarray, duration: float, rounds: int = 5
) -> dict[str, Any]:
    """W2's overhead at concurrency 1, paired in time: each round measures the in-process
    single call and then the served request back to back, and the overhead is the median of
    the per-round differences. On a shared VM the speed of both drifts by more than the
    1 ms being measured between measurements minutes apart; within a round it mostly
    cancels."""
    per_round = []
    for _ in range(rounds):
        single = timed(lambda: limit.score(name, x1i, np.array([3])), duration / 2)
        g = load(server.port, "/log-likelihood", body, 1, duration / 2)
        lim50, lim99 = (1000 * float(np.percentile(single, q)) for q in (50, 99))
        per_round.append(
            {"limit_p50_ms": lim50, "limit_p99_ms": lim99, "p50_ms": g["p50_ms"], "p99_ms": g["p99_ms"]}
        )
    over50 = [r["p50_ms"] - r["limit_p50_ms"] for r in per_round]
    over99 = [r["p99_ms"] - r["limit_p99_ms"] for r in per_round]
    res = {
        "rounds": per_round,
        "overhead_p50_ms": float(np.median(over50)),
        "overhead_p99_ms": float(np.median(over99)),
    }
    say(
        f"W2 {name} c=1 paired over {rounds} rounds: p50 +{res['overhead_p50_ms']:.2f} ms "
        f"(rounds {', '.join(f'{o:+.2f}' for o in over50)}), p99 +{res['overhead_p99_ms']:.2f} ms"
    )
    return res


def sampling(server: Server, naive: Server, limit: Limit, duration: float, plan: Plan) -> dict[str, Any]:
    """W3: /sample of `plan.sample_n` per family, concurrency sweep, vs limit and naive."""
    out: dict[str, Any] = {}
    n = plan.sample_n
    for name in plan.samplers:
        body = json.dumps({"model": name, "n": n, "labels": 5, "seed": 1}).encode()
        lim = timed(lambda name=name: limit.sample(name, n, np.full(n, 5)), duration / 2)
        entry: dict[str, Any] = {"limit_samples_per_s": n / float(np.median(lim)), "sweep": {}}
        for c in plan.sample_concurrency(name):
            g = load(server.port, "/sample", body, c, duration)
            nv = load(naive.port, "/sample", body, c, duration) if plan.naive_samples(name) else None
            entry["sweep"][c] = {"genserve": g, "naive": nv}
            naive_rate = "not run" if nv is None else f"{n * nv['throughput_rps']:.0f}"
            say(
                f"W3 {name} c={c}: genserve {n * g['throughput_rps']:.0f} samples/s, "
                f"naive {naive_rate}; limit {entry['limit_samples_per_s']:.0f}"
            )
        out[name] = entry
    return out


def pixelcnn_fanin(server: Server, plan: Plan) -> dict[str, Any]:
    """W4: 8 concurrent PixelCNN requests of n/8 vs one request of n (wall time). The keys
    keep the names of the default n = 64."""
    name, n = f"pixelcnn-{plan.dataset}", plan.sample_n
    one = json.dumps({"model": name, "n": n, "labels": 5, "seed": 1}).encode()
    eight = json.dumps({"model": name, "n": n // 8, "labels": 5, "seed": 1}).encode()
    t_one = [load(server.port, "/sample", one, 1, 60, requests=1)["seconds"] for _ in range(5)]
    t_eight = [load(server.port, "/sample", eight, 8, 60, requests=8)["seconds"] for _ in range(5)]
    res = {"one_n64_s": float(np.median(t_one)), "eight_n8_s": float(np.median(t_eight)), "n": n}
    res["ratio"] = res["eight_n8_s"] / res["one_n64_s"]
    say(
        f"W4: one n={n} {res['one_n64_s']:.3f}s; eight n={n // 8} {res['eight_n8_s']:.3f}s; "
        f"ratio {res['ratio']:.2f}"
    )
    return res


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render(r: dict[str, Any]) -> str:
    """Markdown tables of a results dict."""
    m = r["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores_available']} cores, onnxruntime {m['onnxruntime']}", ""]
    if "W1" in r:
        lines += [f"W1 bulk scoring, one {r.get('rows', 10_000):,}-row request", ""]
        lines += [
            _row(["model", "limit rows/s", "npy rows/s (ratio)", "JSON rows/s (ratio)"]),
            _row(["---"] * 4),
        ]
        for name, e in r["W1"].items():
            npy_cell = f"{e['npy_rows_per_s']:.0f} ({e['npy_ratio']:.2f})"
            json_cell = f"{e['json_rows_per_s']:.0f} ({e['json_ratio']:.2f})"
            lines.append(_row([name, f"{e['limit_rows_per_s']:.0f}", npy_cell, json_cell]))
        lines.append("")
    if "W2" in r:
        head = ["model", "c", "genserve rps", "p50/p90/p99 ms", "errors", "naive rps", "naive p50/p99 ms"]
        head += ["limit rps", "limit single p50/p99 ms"]
        lines += ["W2 single-row /log-likelihood", "", _row(head), _row(["---"] * len(head))]
        for name, e in r["W2"].items():
            single = f"{e['limit_single_p50_ms']:.2f} / {e['limit_single_p99_ms']:.2f}"
            for c, s in e["sweep"].items():
                g, nv = s["genserve"], s["naive"]
                lat = f"{g['p50_ms']:.2f} / {g['p90_ms']:.2f} / {g['p99_ms']:.2f}"
                nlat = f"{nv['p50_ms']:.2f} / {nv['p99_ms']:.2f}"
                cells = [
                    name,
                    c,
                    f"{g['throughput_rps']:.0f}",
                    lat,
                    g["errors"],
                    f"{nv['throughput_rps']:.0f}",
                    nlat,
                ]
                lines.append(_row([*cells, f"{s['limit_rps']:.0f}", single]))
        lines += [
            "",
            "W2 at concurrency 1, paired rounds (served minus in-process single call, same round)",
            "",
        ]
        lines += [_row(["model", "p50 overhead ms", "p99 overhead ms", "p50 overhead per round ms"])]
        lines += [_row(["---"] * 4)]
        for name, e in r["W2"].items():
            if "paired_c1" not in e:
                continue
            pc = e["paired_c1"]
            rounds = ", ".join(f"{x['p50_ms'] - x['limit_p50_ms']:+.2f}" for x in pc["rounds"])
            lines.append(
                _row([name, f"+{pc['overhead_p50_ms']:.2f}", f"+{pc['overhead_p99_ms']:.2f}", rounds])
            )
        lines.append("")
    if "W3" in r:
        head = [
            "model",
            "c",
            "genserve samples/s",
            "p50/p99 ms",
            "errors",
            "naive samples/s",
            "limit samples/s",
        ]
        n = r.get("sample_n", 64)
        lines += [f"W3 /sample n={n}", "", _row(head), _row(["---"] * len(head))]
        for name, e in r["W3"].items():
            for c, s in e["sweep"].items():
                g, nv = s["genserve"], s["naive"]
                lat = f"{g['p50_ms']:.1f} / {g['p99_ms']:.1f}"
                cells = [
                    name,
                    c,
                    f"{n * g['throughput_rps']:.0f}",
                    lat,
                    g["errors"],
                    "not run" if nv is None else f"{n * nv['throughput_rps']:.0f}",
                ]
                lines.append(_row([*cells, f"{e['limit_samples_per_s']:.0f}"]))
        lines.append("")
    if "W4" in r:
        w = r["W4"]
        n = w.get("n", 64)
        lines.append(
            f"W4 PixelCNN: one n={n} request {w['one_n64_s']:.3f} s; 8 concurrent n={n // 8} requests "
            f"{w['eight_n8_s']:.3f} s; ratio {w['ratio']:.2f}"
        )
    return "\n".join(lines)


def say(text: str) -> None:
    """Progress line, flushed (the run takes minutes)."""
    print(text, flush=True)


if __name__ == "__main__":
    main()

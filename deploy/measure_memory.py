"""Peak resident memory of one `genserve serve` process under load (docs/deploy.md, "Memory").

    python deploy/measure_memory.py --store model_store [--seconds 60] [--clients 4]

Starts the server on a free loopback port with the store, waits until ready, then runs
client threads that cycle through /sample and /log-likelihood requests for every model:
a typical phase (small requests), a large phase (the most samples and many rows), and a
heavy phase (unlabelled scoring at the most importance samples the limits allow, which
runs into the request deadline). A small GAN request twice a second measures how long
the others make it wait. Reports the process's VmHWM (the kernel's peak RSS, which covers every
thread of the process) after start-up and after each phase, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def requests_for(models: dict[str, Any], phase: str) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    rng = np.random.default_rng(0)
    large = phase == "large"
    for name, info in models.items():
        family = info["family"]
        spec = info["data"]
        shape = [spec["shape"][1], spec["shape"][2]] if spec["shape"][0] == 1 else spec["shape"]
        if phase == "heavy":
            # Legal but expensive scoring: unlabelled (every class), the most estimator
            # samples the default limits allow, many rows. These run into the deadline.
            if family != "gan":
                x = rng.integers(0, spec["levels"], size=[2000, *shape]).tolist()
                samples = 4096 if family in ("vae", "flow") else 1
                out.append(("/log-likelihood", {"model": name, "inputs": x, "importance_samples": samples}))
            continue
        # The large phase asks for the most samples the default limits allow per family.
        limit, small = (256, 16) if family == "pixelcnn" else (1024, 64)
        n = limit if large else small
        out.append(("/sample", {"model": name, "n": n}))
        if family != "gan":
            rows = 2000 if large else 64
            x = rng.integers(0, spec["levels"], size=[rows, *shape]).tolist()
            out.append(("/log-likelihood", {"model": name, "inputs": x}))
    return out


def probe(url: str, stop: threading.Event, model: str, latencies: list[float]) -> None:
    """A small request twice a second: how long the heavy requests make others wait."""
    with httpx.Client(base_url=url, timeout=300) as http:
        while not stop.is_set():
            started = time.monotonic()
            http.post("/sample", json={"model": model, "n": 1})
            latencies.append(time.monotonic() - started)
            stop.wait(0.5)


def drive(url: str, work: list[tuple[str, dict[str, Any]]], clients: int, seconds: float) -> dict[str, int]:
    stop = time.monotonic() + seconds
    codes: dict[str, int] = {}
    lock = threading.Lock()

    def client(offset: int) -> None:
        i = offset
        with httpx.Client(base_url=url, timeout=300) as http:
            while time.monotonic() < stop:
                path, body = work[i % len(work)]
                i += 1
                code = str(http.post(path, json=body).status_code)
                with lock:
                    codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, default=Path("model_store"))
    parser.add_argument("--seconds", type=float, default=60.0, help="per phase")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--phases", nargs="+", choices=["typical", "large", "heavy"], default=["typical", "large", "heavy"]
    )
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GENSERVE_MODEL_STORE": str(args.store), "GENSERVE_PORT": str(port)}
    env["GENSERVE_HOST"] = "127.0.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--no-build"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("server never became ready")
        report: dict[str, Any] = {"after_start_mib": status_kib(proc.pid, "VmHWM") / 1024}
        models = {m["name"]: m for m in httpx.get(f"{url}/models", timeout=10).json()}
        small = next((m for m, info in models.items() if info["family"] == "gan"), next(iter(models)))
        for phase in args.phases:
            latencies: list[float] = []
            stop = threading.Event()
            prober = threading.Thread(target=probe, args=(url, stop, small, latencies))
            prober.start()
            codes = drive(url, requests_for(models, phase), args.clients, args.seconds)
            stop.set()
            prober.join()
            report[phase] = {
                "peak_rss_mib": status_kib(proc.pid, "VmHWM") / 1024,
                "status_codes": codes,
                f"{small}_n1_latency_s": {
                    "median": float(np.median(latencies)) if latencies else None,
                    "max": max(latencies, default=None),
                },
            }
        report["rss_now_mib"] = status_kib(proc.pid, "VmRSS") / 1024
        report["models"] = sorted(models)
        print(json.dumps(report, indent=2))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()

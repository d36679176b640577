"""The load a new user generates first: one httpx.AsyncClient, `concurrency` requests in
flight, single-row /log-likelihood, with the client's own CPU (issue 34's c = 64 tail).

    python -m bench.httpx_client --port 8000 -c 64 -d 8 [--model flow-digits]

Prints one JSON line: requests/s, p50/p99 (ms), errors, and the client's cores. Compare with
bench.httpload at the same concurrency: what differs is the client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import httpx
import numpy as np
import orjson


async def run(port: int, model: str, concurrency: int, duration: float) -> dict[str, float]:
    x = np.zeros((8, 8), np.int64)
    x[2:6, 3:5] = 12
    body = orjson.dumps({"model": model, "inputs": [x.tolist()], "labels": 3})
    times: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
        start, cpu = time.perf_counter(), time.process_time()
        deadline = start + duration

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await client.post(
                    "/log-likelihood", content=body, headers={"content-type": "application/json"}
                )
                errors += r.status_code != 200
                times.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
    ms = np.array(times) * 1000.0
    return {
        "concurrency": concurrency,
        "throughput_rps": len(ms) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": errors,
        "client_cores": used / elapsed,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="flow-digits")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("-d", "--duration", type=float, default=8.0)
    a = p.parse_args()
    sys.stdout.write(json.dumps(asyncio.run(run(a.port, a.model, a.concurrency, a.duration))) + "\n")


if __name__ == "__main__":
    main()

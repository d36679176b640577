"""Diffusion fan-in: concurrent sampling loops with different step counts share the
denoiser's calls (issue 31's throughput point).

    python -m bench.diffusion_fanin [--store model_store] [--model diffusion-digits]
        [--steps 10,15,20,25,30,35,40,50] [--rounds 3] [--out FILE]

Against a real server (uvicorn, one process, the model alone), in alternating rounds:
- one `/sample` of n = 64 at the largest step count;
- eight concurrent `/sample` requests of n = 8, one per step count (the same 64 samples in
  total, each loop with its own times: `t` is a per-row input of the one graph).
Reports the median wall time of each and their ratio (the acceptance point: ≤ 1.3), and
how many denoiser batches the eight took (from /metrics' graph histogram) against the
largest step count: without merging, the eight loops would make Σ steps calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.serving import Server


def _batches(port: int) -> float:
    """Denoiser batches the server has run so far (genserve_batches_total)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("genserve_batches_total") and 'graph="denoise"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _timed(port: int, bodies: list[dict[str, Any]]) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
        started = time.perf_counter()
        answers = await asyncio.gather(*(client.post("/sample", json=b) for b in bodies))
        took = time.perf_counter() - started
    for r in answers:
        r.raise_for_status()
    return took


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--model", default="diffusion-digits")
    p.add_argument("--steps", default="10,15,20,25,30,35,40,50")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args()
    steps = [int(s) for s in a.steps.split(",")]
    longest = max(steps)
    server = Server("service.app:create_app", a.store, {"GENSERVE_MODELS": json.dumps([a.model])})
    one = {"model": a.model, "n": 8 * len(steps), "labels": 3, "seed": 1, "steps": longest}
    eight = [
        {"model": a.model, "n": 8, "labels": i % 10, "seed": 10 + i, "steps": s} for i, s in enumerate(steps)
    ]
    singles, fans, calls = [], [], []
    try:
        asyncio.run(_timed(server.port, [{**one, "n": 8, "steps": 5}]))  # warm
        for _ in range(a.rounds):
            singles.append(asyncio.run(_timed(server.port, [one])))
            before = _batches(server.port)
            fans.append(asyncio.run(_timed(server.port, eight)))
            calls.append(_batches(server.port) - before)
    finally:
        server.stop()
    single, fan = statistics.median(singles), statistics.median(fans)
    result = {
        "model": a.model,
        "steps": steps,
        "one_request_n": one["n"],
        "one_request_s": single,
        "eight_requests_s": fan,
        "ratio": fan / single,
        "eight_requests_denoiser_batches": statistics.median(calls),
        "unmerged_calls": sum(steps),
        "rounds": {"one": singles, "eight": fans, "batches": calls},
    }
    print(
        f"{a.model}: one n={one['n']} at {longest} steps {single:.2f} s; eight n=8 at {a.steps} steps "
        f"{fan:.2f} s; ratio {fan / single:.2f}; denoiser batches {statistics.median(calls):.0f} "
        f"(unmerged: {sum(steps)})"
    )
    if a.out is not None:
        a.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

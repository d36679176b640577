"""What a request costs the server itself, with the runtime's compute taken out.

    python -m bench.request_cost [--store model_store] [--requests 3000]

W2's concurrency-1 overhead (docs/benchmarks.md) is the difference of two latencies of a
few milliseconds on a VM whose speed drifts by more than the difference. This separates
the server's own work from it, in two measurements that do not depend on the model:

- **the serving path**: W2's single-row `/log-likelihood` and W3's `/sample n=64`, sent
  `--requests` times straight into genserve's ASGI app in this process (no socket, on
  uvloop as under uvicorn), with every ONNX Runtime call answered from a replay of its
  real output for the same inputs (the requests repeat with a fixed seed, so the answers
  are the real ones; the replay costs a hash of the inputs). What remains is parsing and
  validation, the engine's pre- and post-processing, the batcher and its thread
  hand-offs, outlier scoring, the response, and the middleware; split by the server's
  own `genserve_stage_seconds` metric into parse, compute (of which the batcher's share,
  from `genserve_graph_seconds`)
  and the rest (response and framework).
- **the HTTP floor**: a FastAPI endpoint that reads the body and returns a constant,
  under the same uvicorn (uvloop, httptools), driven at concurrency 1 by bench.httpload:
  what any Python server on this stack pays per request.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import uvloop
from fastapi import FastAPI, Request, Response

from bench.serving import LIKELIHOOD, SAMPLERS, Server, load
from service.app import create_app
from service.config import Settings
from service.runtime import Arrays, OnnxBackend
from training.data import load_dataset


@contextmanager
def replayed_runtime() -> Iterator[None]:
    """ONNX Runtime calls run once per distinct input (graph, names, shapes and bytes) and
    are answered from that output afterwards: the serving path without the compute."""
    cache: dict[tuple[Any, ...], Arrays] = {}
    originals = {name: getattr(OnnxBackend, name) for name in ("run", "run_lane")}

    def replaying(name: str) -> Any:
        def run(self: OnnxBackend, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
            key = (
                name,
                id(self),
                graph,
                tuple(
                    (k, v.shape, hashlib.blake2b(np.ascontiguousarray(v).data).digest())
                    for k, v in inputs.items()
                ),
            )
            if key not in cache:
                cache[key] = originals[name](self, graph, inputs)
            return cache[key]

        return run

    try:
        for name in originals:
            setattr(OnnxBackend, name, replaying(name))
        yield
    finally:
        for name, fn in originals.items():
            setattr(OnnxBackend, name, fn)


def _stage_sums(app: FastAPI, model: str) -> dict[str, float]:
    """Seconds spent so far per (endpoint or graph, stage) for `model`, from /metrics'
    request-stage histogram (`/sample/parse`, ...) and the batcher's graph histogram
    (`decode/queue`, ...)."""
    out: dict[str, float] = {}
    metrics = app.state.metrics
    for histogram, key in ((metrics.stage, "endpoint"), (metrics.graph, "graph")):
        for family in histogram.collect():
            for s in family.samples:
                if s.name.endswith("_sum") and s.labels["model"] == model:
                    out[f"{s.labels[key]}/{s.labels['stage']}"] = s.value
    return out


async def _post(app: FastAPI, path: str, body: bytes) -> None:
    """One request through the ASGI app; the client stays connected until the answer is sent."""
    sent: list[dict[str, Any]] = []
    answered = asyncio.Event()
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    await app(scope, receive, send)
    answered.set()
    if sent[0]["status"] != 200:
        raise RuntimeError(f"{path}: status {sent[0]['status']}: {sent[1].get('body', b'')[:300]!r}")


async def serving_path(store: Path, model: str, path: str, body: bytes, requests: int) -> dict[str, Any]:
    """Per-request wall time of one request shape through the app, and its stage split."""
    app = create_app(Settings(model_store=store, models=[model]))
    async with app.router.lifespan_context(app):
        for _ in range(max(50, requests // 10)):  # warm: caches filled, code paths hot
            await _post(app, path, body)
        before = _stage_sums(app, model)
        times = []
        for _ in range(requests):
            t0 = time.perf_counter()
            await _post(app, path, body)
            times.append(time.perf_counter() - t0)
        after = _stage_sums(app, model)
    ms = 1000 * np.asarray(times)
    stages = {k: 1000 * (after[k] - before.get(k, 0.0)) / requests for k in after}
    endpoint = path
    parse, compute, serialize = (
        stages.get(f"{endpoint}/{s}", 0.0) for s in ("parse", "compute", "serialize")
    )
    # the batcher's share of compute: its queue wait and the (replayed) runtime call with
    # the thread hand-offs around it
    batcher = sum(v for k, v in stages.items() if not k.startswith(f"{endpoint}/"))
    mean = float(ms.mean())
    return {
        "p50_ms": float(np.median(ms)),
        "mean_ms": mean,
        "parse_ms": parse,
        "compute_ms": compute,
        "batcher_ms": batcher,
        "serialize_ms": serialize,
        "framework_ms": mean - parse - compute - serialize,
    }


def floor_app() -> FastAPI:
    """The HTTP floor: read the body, answer a constant."""
    app = FastAPI()

    @app.post("/log-likelihood")
    async def constant(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    return app


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--duration", type=float, default=6.0, help="seconds of HTTP-floor load")
    a = p.parse_args()
    x = load_dataset("digits").x[:1, 0]
    rows = []
    for model in LIKELIHOOD:
        body = json.dumps({"model": model, "inputs": x.tolist(), "labels": 3, "seed": 0}).encode()
        rows.append((model, "/log-likelihood", body))
    for model in SAMPLERS:
        if not model.startswith("pixelcnn"):  # its loop is 64 graph calls, not one request's cost
            rows.append(
                (model, "/sample", json.dumps({"model": model, "n": 64, "labels": 5, "seed": 1}).encode())
            )
    results = []
    for model, path, body in rows:
        with replayed_runtime(), asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            r = runner.run(serving_path(a.store, model, path, body, a.requests))
        results.append({"model": model, "path": path, **r})
    server = Server("bench.request_cost:floor_app", a.store)
    try:
        probe = json.dumps({"model": "flow-digits", "inputs": x.tolist(), "labels": 3}).encode()
        load(server.port, "/log-likelihood", probe, 1, 2.0)  # warm
        floor = load(server.port, "/log-likelihood", probe, 1, a.duration)
    finally:
        server.stop()
    print("Mean ms per request, the runtime's compute replayed:\n")
    print("| model | request | p50 | mean | parse | compute (of which batcher) | serialize | framework |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['model']} | {r['path']} | {r['p50_ms']:.3f} | {r['mean_ms']:.3f} | {r['parse_ms']:.3f} | "
            f"{r['compute_ms']:.3f} ({r['batcher_ms']:.3f}) | {r['serialize_ms']:.3f} | "
            f"{r['framework_ms']:.3f} |"
        )
    print(
        f"\nHTTP floor (FastAPI constant endpoint under uvicorn, c=1, over loopback): "
        f"p50 {floor['p50_ms']:.3f} ms, p99 {floor['p99_ms']:.3f} ms, {floor['throughput_rps']:.0f} rps"
    )


if __name__ == "__main__":
    main()

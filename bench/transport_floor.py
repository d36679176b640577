"""What the transports cost before and around the model: blocking clients, one call at a time.

    python -m bench.transport_floor [--store model_store] [--blocks 10] [--calls 400]

1. The floor: a trivial call, gRPC `ServerLive` against HTTP `GET /v2/health/live` (3,000
   calls each, three times).
2. One row of flow-digits scored as genserve JSON, OIP REST binary and OIP gRPC, in
   alternating blocks of `--calls` calls; each way's p50 and the median over blocks of its
   difference from genserve JSON (the figures beside bench.oip_serving's in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import orjson

from bench.oip_serving import HEADER, grpc_request, oip_binary
from bench.serving import Server, free_port
from service.oip.grpc.compile import stubs

SERVICE = "/inference.GRPCInferenceService/"


def p50_ms(call: Callable[[], None], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, default=Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    p.add_argument("--blocks", type=int, default=10)
    p.add_argument("--calls", type=int, default=400)
    a = p.parse_args()
    pb, _ = stubs()
    grpc_port = free_port()
    server = Server("service.app:create_app", a.store, {"GENSERVE_GRPC_PORT": str(grpc_port)})
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")

        def http_call(
            method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
        ) -> None:
            conn.request(method, path, body, headers or {})
            r = conn.getresponse()
            r.read()
            assert r.status == 200, r.status

        live = channel.unary_unary(
            SERVICE + "ServerLive", request_serializer=None, response_deserializer=None
        )
        live_request = pb.ServerLiveRequest().SerializeToString()
        for _ in range(3):
            h = p50_ms(lambda: http_call("GET", "/v2/health/live"), 3000)
            g = p50_ms(lambda: live(live_request), 3000)
            print(f"trivial call p50: HTTP {h:.3f} ms, gRPC {g:.3f} ms")

        x = np.zeros((1, 1, 8, 8), np.int64)
        x[0, 0, 2:6, 3:5] = 12
        one = [("inputs", x, "INT64"), ("labels", np.array([3]), "INT64")]
        body, head = oip_binary(one)
        genserve = orjson.dumps({"model": "flow-digits", "inputs": x[:, 0].tolist(), "labels": 3})
        infer = channel.unary_unary(
            SERVICE + "ModelInfer", request_serializer=None, response_deserializer=None
        )
        request = grpc_request("flow-digits.log_likelihood", one)
        ways: dict[str, Callable[[], None]] = {
            "genserve_json": lambda: http_call(
                "POST", "/log-likelihood", genserve, {"Content-Type": "application/json"}
            ),
            "oip_rest_binary": lambda: http_call(
                "POST", "/v2/models/flow-digits.log_likelihood/infer", body, {HEADER: str(head)}
            ),
            "oip_grpc": lambda: infer(request),
        }
        for way in ways.values():
            p50_ms(way, 100)  # warm
        found: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(a.blocks):
            for name, way in ways.items():
                found[name].append(p50_ms(way, a.calls))
        for name, p50s in found.items():
            diffs = [v - g for v, g in zip(p50s, found["genserve_json"], strict=True)]
            mid, diff = statistics.median(p50s), statistics.median(diffs)
            print(f"{name}: p50 {mid:.3f} ms, vs genserve JSON {diff:+.3f} ms")
        channel.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()

"""A closed-loop gRPC load generator for OIP ModelInfer (run as its own process).

`concurrency` calls in flight on one channel, each sending the next request as soon as
the last answer arrives, for `duration` seconds. The request is serialized once; answers
are not decoded, so the client costs little CPU beside the server. At concurrency 1 the
calls are blocking ones on grpc's synchronous channel, as a script or tritonclient.grpc
makes them: grpc.aio's client adds thread hops of its own (a poller thread hands each
event to the event loop) that a latency figure for the server should not carry.

    python -m bench.grpcload --port 8001 --request req.bin -c 1 -d 10
prints one JSON line like bench.httpload: requests, errors, throughput, p50/p90/p99 (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from bench.httpload import summarize

METHOD = "/inference.GRPCInferenceService/ModelInfer"


async def run(port: int, request: bytes, concurrency: int, duration: float) -> dict[str, Any]:
    samples: list[tuple[float, str]] = []
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        # Bytes in, bytes out: the serialized request as is, the answer left undecoded.
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        start, cpu = time.perf_counter(), time.process_time()
        deadline = start + duration

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await call(request)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                samples.append((time.perf_counter() - t0, code))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    out = summarize(samples, concurrency, elapsed, ok="OK")
    out["cpu_s"] = time.process_time() - cpu  # this generator's own CPU during the run, start-up excluded
    return out


def run_blocking(port: int, request: bytes, duration: float) -> dict[str, Any]:
    """One call at a time on a synchronous channel."""
    samples: list[tuple[float, str]] = []
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        call(request)  # connect before the clock starts
        start, cpu = time.perf_counter(), time.process_time()
        deadline = start + duration
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                call(request)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            samples.append((time.perf_counter() - t0, code))
        elapsed = time.perf_counter() - start
    out = summarize(samples, 1, elapsed, ok="OK")
    out["cpu_s"] = time.process_time() - cpu
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--request", type=Path, required=True, help="a serialized ModelInferRequest")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    a = p.parse_args()
    request = a.request.read_bytes()
    if a.concurrency == 1:
        result = run_blocking(a.port, request, a.duration)
    else:
        result = asyncio.run(run(a.port, request, a.concurrency, a.duration))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

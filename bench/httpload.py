"""A lean closed-loop HTTP/1.1 load generator (run as its own process).

`concurrency` keep-alive connections each send the next request as soon as the last
answer arrives, for `duration` seconds (or `requests` requests). Requests are pre-encoded
bytes and responses are parsed only as far as status and Content-Length, so the client
costs little CPU on a small machine shared with the server.

    python -m bench.httpload --port 8000 --path /log-likelihood --body body.json -c 16 -d 10
prints one JSON line: requests, errors, seconds, throughput, p50/p90/p99 latency (ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def encode(
    host: str, port: int, path: str, body: bytes, content_type: str, extra: list[str] | None = None
) -> bytes:
    """One pre-encoded request; `extra` holds more header lines ("Name: value")."""
    more = "".join(f"{h}\r\n" for h in extra or [])
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{more}Connection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        key, _, value = line.partition(b":")
        k = key.strip().lower()
        if k == b"content-length":
            length = int(value.strip())
        elif k == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
        return status, body
    return status, await reader.readexactly(length)


async def _worker(
    host: str, port: int, payload: bytes, deadline: float, budget: list[int], out: list[tuple[float, int]]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline and budget[0] != 0:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(payload)
            await writer.drain()
            status, _ = await _read_response(reader)
            out.append((time.perf_counter() - t0, status))
    finally:
        writer.close()


async def run(
    host: str, port: int, payload: bytes, concurrency: int, duration: float, requests: int | None
) -> dict[str, Any]:
    """Drive the server; returns throughput and latency percentiles."""
    samples: list[tuple[float, int]] = []
    budget = [requests if requests is not None else -1]
    start, cpu = time.perf_counter(), time.process_time()
    deadline = start + duration
    await asyncio.gather(
        *(_worker(host, port, payload, deadline, budget, samples) for _ in range(concurrency))
    )
    elapsed = time.perf_counter() - start
    out = summarize([(t, str(code)) for t, code in samples], concurrency, elapsed, ok="200")
    out["cpu_s"] = time.process_time() - cpu  # this generator's own CPU during the run, start-up excluded
    return out


def summarize(samples: list[tuple[float, str]], concurrency: int, elapsed: float, ok: str) -> dict[str, Any]:
    """Throughput and latency percentiles of (seconds, status) samples; `ok` is success."""
    lat = np.array([s[0] for s in samples]) * 1000.0
    statuses: dict[str, int] = {}
    for _, code in samples:
        statuses[code] = statuses.get(code, 0) + 1
    return {
        "concurrency": concurrency,
        "requests": len(samples),
        "errors": sum(1 for s in samples if s[1] != ok),
        "statuses": statuses,
        "seconds": elapsed,
        "throughput_rps": len(samples) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p90_ms": float(np.percentile(lat, 90)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "p999_ms": float(np.percentile(lat, 99.9)) if len(lat) else None,
        "mean_ms": float(lat.mean()) if len(lat) else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--body", type=Path, required=True)
    p.add_argument("--content-type", default="application/json")
    p.add_argument("-c", "--concurrency", type=int, default=1)
    p.add_argument("-d", "--duration", type=float, default=10.0)
    p.add_argument("-n", "--requests", type=int, default=None)
    p.add_argument("-H", "--header", action="append", default=[], help="another header line, 'Name: value'")
    a = p.parse_args()
    payload = encode(a.host, a.port, a.path, a.body.read_bytes(), a.content_type, a.header)
    result = asyncio.run(run(a.host, a.port, payload, a.concurrency, a.duration, a.requests))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

"""Server CPU per request under load: genserve as a real process, one workload, one concurrency.

    python -m bench.server_cpu --model flow-digits -c 64 [--sample] [--env GENSERVE_LANES=1]

Prints the load generator's figures, the server process's CPU time per request and cores
used (from /proc), the cores each of its busy threads used (the main thread runs the event
loop; the others are the runtime's lanes and pools), and the load generator's own cores:
the numbers behind the per-change figures in docs/benchmarks.md.
For a profile, attach `py-spy record -p PID` to the printed server pid while it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

from bench.serving import Server, load
from training.data import load_dataset


def stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU time from a /proc stat file (a process's or one thread's)."""
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ", which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    return stat_cpu_seconds(Path(f"/proc/{pid}/stat"))


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each thread of a process so far, by thread id."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out[int(task.name)] = stat_cpu_seconds(task / "stat")
        except FileNotFoundError:  # the thread ended meanwhile
            continue
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--model", default="flow-digits")
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("-d", "--duration", type=float, default=8.0)
    p.add_argument("--sample", action="store_true", help="/sample n=64 instead of single-row scoring")
    p.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    a = p.parse_args()
    env = dict(e.split("=", 1) for e in a.env)
    server = Server("service.app:create_app", a.store, {"GENSERVE_MODELS": json.dumps([a.model]), **env})
    try:
        print(f"server pid {server.proc.pid}")
        if a.sample:
            path, body = "/sample", {"model": a.model, "n": 64, "labels": 5, "seed": 1}
        else:
            x = load_dataset("digits").x[:1, 0]
            path, body = "/log-likelihood", {"model": a.model, "inputs": x.tolist(), "labels": 3}
        payload = json.dumps(body).encode()
        load(server.port, path, payload, a.concurrency, 2.0)  # warm
        pid = server.proc.pid
        threads0, client0 = thread_cpu_seconds(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        c0, t0 = cpu_seconds(pid), time.perf_counter()
        r = load(server.port, path, payload, a.concurrency, a.duration)
        c1, t1 = cpu_seconds(pid), time.perf_counter()
        threads1, client1 = thread_cpu_seconds(pid), resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
        print(
            f"{a.model} c={a.concurrency}: {r['throughput_rps']:.0f} rps, p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors; server CPU "
            f"{(c1 - c0) * 1000 / r['requests']:.3f} ms per request, {(c1 - c0) / (t1 - t0):.2f} cores"
        )
        busy = {tid: (threads1[tid] - threads0.get(tid, 0.0)) / (t1 - t0) for tid in threads1}
        shown = [f"main (event loop) {busy.pop(pid, 0.0):.2f}"]
        shown += [
            f"{tid} {cores:.2f}"
            for tid, cores in sorted(busy.items(), key=lambda kv: -kv[1])
            if cores >= 0.02
        ]
        print(f"cores by server thread: {', '.join(shown)}; load generator {client / (t1 - t0):.2f} cores")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

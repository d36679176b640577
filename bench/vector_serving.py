"""Serving SBI posteriors: HTTP against the in-process runtime limit.

    python -m bench.vector_serving [--store STORE] [--model npe-two-moons] [--duration 6] [--out FILE]

Two workloads on an NPE posterior (issue 28's acceptance):

- V1: 10,000 posterior draws for one observation (`/sample` n=10000, one context row,
  format npy);
- V2: scoring 10,000 (θ, x) pairs, one context per row (`/log-likelihood`, an .npz body
  with `inputs` and `context` answered as .npz columns (format=npz); the same body answered
  as JSON rows; and all of it as JSON).

The limit is the same engine calls in this process, through the same runtime with the
server's thread layout (bench.serving.Limit): what the server could do with no HTTP, no
parsing and no queue. Ratios ≥ 0.8 are the target.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.serving import Limit, Server, load, machine, timed
from service.store import ModelStore
from service.vector_spec import VectorSpec
from training.vectors.sbi_tasks import get_task

ROWS = 10_000


def npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    p.add_argument("--model", default="npe-two-moons")
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    store = ModelStore(a.store)
    manifest = store.open(a.model).manifest
    spec = manifest.dataset
    if not isinstance(spec, VectorSpec) or spec.simulation is None:
        raise SystemExit(f"{a.model} is not an SBI model")
    task = get_task(spec.simulation.task)
    x_o = task.observation(1).x
    theta, x = task.simulations(ROWS, seed=99)
    limit = Limit(store)
    engine = limit.engines[a.model]
    ctx_one = np.repeat(x_o[None], ROWS, 0)

    def limit_sample() -> None:
        limit.loop.run_until_complete(engine.sample(ROWS, None, np.random.default_rng(0), 1.0, ctx_one))

    def limit_score() -> None:
        limit.loop.run_until_complete(engine.log_likelihood(theta, None, 1, 0, x))

    results: dict[str, Any] = {"machine": machine(), "model": a.model, "rows": ROWS, "duration_s": a.duration}
    server = Server("service.app:create_app", a.store)
    try:
        lim_s = ROWS / float(np.median(timed(limit_sample, a.duration)))
        body = json.dumps({"model": a.model, "n": ROWS, "context": x_o.tolist(), "seed": 1, "format": "npy"})
        served = load(server.port, "/sample", body.encode(), 1, a.duration)
        results["V1 sample"] = {
            "limit_rows_per_s": lim_s,
            "npy_rows_per_s": ROWS * served["throughput_rps"],
            "ratio": ROWS * served["throughput_rps"] / lim_s,
            "served": served,
        }
        lim_l = ROWS / float(np.median(timed(limit_score, a.duration)))
        by_npz = load(
            server.port,
            f"/log-likelihood?model={a.model}&check_context=false&format=npz",
            npz(inputs=theta, context=x),
            1,
            a.duration,
            "application/x-npz",
        )
        npz_to_json = load(
            server.port,
            f"/log-likelihood?model={a.model}&check_context=false",
            npz(inputs=theta, context=x),
            1,
            a.duration,
            "application/x-npz",
        )
        body = json.dumps(
            {"model": a.model, "inputs": theta.tolist(), "context": x.tolist(), "check_context": False}
        )
        by_json = load(server.port, "/log-likelihood", body.encode(), 1, a.duration)
        # With the context check (the default): one more graph pass, so its limit does both.
        with_check = load(
            server.port,
            f"/log-likelihood?model={a.model}&format=npz",
            npz(inputs=theta, context=x),
            1,
            a.duration,
            "application/x-npz",
        )

        def limit_both() -> None:
            limit_score()
            limit.loop.run_until_complete(engine.context_outliers(x, 0.05))

        lim_both = ROWS / float(np.median(timed(limit_both, a.duration)))
        results["V2 score"] = {
            "limit_rows_per_s": lim_l,
            "npz_rows_per_s": ROWS * by_npz["throughput_rps"],
            "npz_ratio": ROWS * by_npz["throughput_rps"] / lim_l,
            "npz_in_json_out_ratio": ROWS * npz_to_json["throughput_rps"] / lim_l,
            "json_rows_per_s": ROWS * by_json["throughput_rps"],
            "json_ratio": ROWS * by_json["throughput_rps"] / lim_l,
            "npz": by_npz,
            "npz_in_json_out": npz_to_json,
            "json": by_json,
            "with_context_check": {
                "limit_rows_per_s": lim_both,
                "npz_rows_per_s": ROWS * with_check["throughput_rps"],
                "npz_ratio": ROWS * with_check["throughput_rps"] / lim_both,
            },
        }
    finally:
        server.stop()
    v1, v2 = results["V1 sample"], results["V2 score"]
    print(f"V1 10,000 posterior draws: limit {v1['limit_rows_per_s']:.0f} rows/s, npy {v1['ratio']:.2f}x")
    check = v2["with_context_check"]
    print(
        f"V2 10,000 (θ, x) pairs: limit {v2['limit_rows_per_s']:.0f} rows/s, npz {v2['npz_ratio']:.2f}x, "
        f"npz in json out {v2['npz_in_json_out_ratio']:.2f}x, json {v2['json_ratio']:.2f}x; "
        f"with the context check: limit "
        f"{check['limit_rows_per_s']:.0f} rows/s, npz {check['npz_ratio']:.2f}x"
    )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

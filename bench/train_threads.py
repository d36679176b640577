"""Training speed under thread policies, on a quiet machine and beside a CPU hog.

    python -m bench.train_threads [--steps 60] [--families flow vae gan pixelcnn]
                                  [--policies 1 2 2-passive] [--hog 0 1] [--out FILE]

Each (policy, hog) cell runs in a fresh child process, because OpenMP reads its wait
policy once, when torch loads. A child trains each family's default digits model for
`--steps` real optimiser steps (batch 64, augmentation as the recipe has it) after a few
warm-up steps, and reports the median and mean milliseconds per step. `--hog N` starts N
busy-looping processes for the cell's duration: a user's other CPU-bound program.

Policies: `N` = N intra-op threads with the runtime's default OpenMP wait policy;
`N-passive` = the same with OMP_WAIT_POLICY=PASSIVE (idle threads sleep at once instead
of spinning); `N-active` = OMP_WAIT_POLICY=ACTIVE.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

FAMILIES = ("flow", "vae", "gan", "pixelcnn")


def _child(families: list[str], steps: int, threads: int) -> dict[str, Any]:
    import torch

    from training.data import load_dataset, make_splits
    from training.families import build_model, default_config
    from training.families.augment import dihedral, draw_transforms
    from training.train import default_train_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = load_dataset("digits")
    splits = make_splits(data.y, len(data), seed=0)
    x = torch.as_tensor(data.x[splits.train])
    y = torch.as_tensor(data.y[splits.train])  # type: ignore[index]
    out: dict[str, Any] = {}
    for family in families:
        model = build_model(family, data.spec, True, default_config(family, data.spec))
        tcfg = default_train_config(family, data.spec)
        opts = model.make_optimizers(tcfg.lr, tcfg.weight_decay)
        gen = torch.Generator().manual_seed(0)
        model.train()
        times = []
        for step in range(steps + 5):
            idx = torch.randint(0, len(x), (tcfg.batch_size,), generator=gen)
            xb, yb, aug = x[idx], y[idx], None
            if tcfg.augment > 0:
                aug = draw_transforms(len(idx), model.transform_count, tcfg.augment, gen)
                xb = dihedral(xb, aug)
            t0 = time.perf_counter()
            model.train_step(xb, yb, opts, step, aug)
            if step >= 5:
                times.append((time.perf_counter() - t0) * 1e3)
        out[family] = {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times)}
    return out


def _run_cell(policy: str, hogs: int, families: list[str], steps: int) -> dict[str, Any]:
    threads, _, wait = policy.partition("-")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait:
        env["OMP_WAIT_POLICY"] = wait.upper()
    hog_procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
    try:
        time.sleep(0.5 if hogs else 0)
        cmd = [sys.executable, "-m", "bench.train_threads", "--child", "--threads", threads,
               "--steps", str(steps), "--families", *families]  # fmt: skip
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    finally:
        for p in hog_procs:
            p.kill()
            p.wait()
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--policies", nargs="+", default=["1", "2", "2-passive"])
    parser.add_argument("--hog", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.families, args.steps, args.threads)))
        return
    rows = []
    for hogs in args.hog:
        for policy in args.policies:
            cell = _run_cell(policy, hogs, args.families, args.steps)
            rows.append({"policy": policy, "hogs": hogs, "families": cell})
            line = "  ".join(f"{f} {v['median_ms']:7.1f}" for f, v in cell.items())
            print(f"hogs={hogs} policy={policy:10s} ms/step (median): {line}", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Diffusion sample quality against the number of steps: the default sampler against the
1,000-step ancestral sampler (issue 31: within 10 % in FID at <= 50 steps).

    python -m bench.diffusion_steps [--store model_store] [--model diffusion-digits]
                                    [--per-class 100] [--settings default,ancestral:1000]

Draws the same labels (`--per-class` of each) through the served engine over ONNX Runtime,
in this process, for each setting: "default" is the model's chosen sampler, steps and
guidance; "SAMPLER:STEPS" overrides the sampler and steps at the default guidance. Each
setting's FID to the test split and label accuracy come from the judge the build trained
(its cache under checkpoints/), as in the build's evaluation. Writes JSON with --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.engine import SamplerOptions, build_engine, inline_caller, noise_rng
from service.engine.diffusion import DiffusionEngine
from service.resources import available_cores
from service.runtime import load_backend
from service.store import ModelStore
from training.classifier import load_or_train_classifier
from training.data import load_dataset, make_splits
from training.quality import balanced_labels, frechet_distance

# Rows per engine call: one sampling loop of this many rows at a time (bounded memory).
BATCH = 500


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--model", default="diffusion-digits")
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--settings", default="default,ancestral:1000")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    version = ModelStore(args.store).open(args.model)
    manifest = version.manifest
    assert manifest.split is not None
    backend = load_backend(version, "onnxruntime", "cpu", available_cores())
    engine = build_engine(manifest, inline_caller(backend))
    assert isinstance(engine, DiffusionEngine)
    data = load_dataset(manifest.split.dataset)
    assert data.y is not None
    splits = make_splits(data.y, len(data), seed=manifest.split.seed)
    judge, _ = load_or_train_classifier(data, splits, args.checkpoints, seed=manifest.split.seed)
    with torch.no_grad():
        real = judge.embed(torch.as_tensor(data.x[splits.test]))
    labels = balanced_labels(len(manifest.dataset.label_names or []), args.per_class).numpy()
    default = engine.sampling_options(SamplerOptions())
    print(f"{args.model}: {len(labels)} samples per setting; default {default.used()}")
    print("| setting | sampler | steps | guidance | FID (test) | label accuracy | s |")
    print("|---|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    for setting in args.settings.split(","):
        if setting == "default":
            options = default
        else:
            sampler, steps = setting.split(":")
            options = SamplerOptions(steps=int(steps), sampler=sampler, guidance=default.guidance)
        start = time.perf_counter()
        drawn = []
        for a in range(0, len(labels), BATCH):
            part = labels[a : a + BATCH]
            rng = noise_rng(args.seed + a)
            drawn.append(asyncio.run(engine.sample(len(part), part, rng, options=options)))
        seconds = time.perf_counter() - start
        samples = torch.as_tensor(np.concatenate(drawn))
        with torch.no_grad():
            fid = frechet_distance(real, judge.embed(samples))
            accuracy = float((judge.predict(samples) == torch.as_tensor(labels)).float().mean())
        used = engine.sampling_options(options).used()
        rows.append({"setting": setting, **used, "fid": fid, "label_accuracy": accuracy, "seconds": seconds})
        print(
            f"| {setting} | {used['sampler']} | {used['steps']} | {used['guidance']:g} | {fid:.3f} "
            f"| {accuracy:.3f} | {seconds:.0f} |"
        )
    backend.close()
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "samples": len(labels), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

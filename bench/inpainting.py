"""Bottom-half completion of test digits: does the judge recognise the true label?

    python -m bench.inpainting [--store model_store] [--models pixelcnn-digits,diffusion-digits]
                               [--rows 0] [--seeds 2] [--diffusion-steps default,100,250]

Every test image of the store's split has its bottom half marked missing (mask 0) and is
sent to POST /reconstruct of a server running in this process (the whole served path:
validation, the label inferred by Bayes' rule from the known half when none is given,
batching, the engines), once without labels and once with the true label. The judge (the
independent classifier the build trained, from its cache under checkpoints/) classifies
each completion; the report is how often it names the true label, per model, setting and
seed, and checks that every known pixel came back unchanged. Diffusion completions run at
each step count asked for ("default" is the model's). Writes a JSON file with --out.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.store import ModelStore
from training.classifier import load_or_train_classifier
from training.data import load_dataset, make_splits

# Rows per request: within the PixelCNN's completion cap (rows x particles; the top half
# known needs no particles); fewer for a diffusion model where its denoiser-pass cap says.
CHUNK = 64


def rows_per_request(detail: dict[str, Any], steps: int | None) -> int:
    """As many rows as the model's caps admit, up to CHUNK: a diffusion inpainting without
    labels costs rows x (steps + classes x (steps + time samples)) denoiser passes."""
    cap = detail["limits"].get("max_denoiser_passes")
    if cap is None:
        return CHUNK
    steps = steps or int(detail["sampling"]["default_steps"])
    per_row = steps + len(detail["labels"]) * (steps + int(detail["default_samples"]))
    return max(1, min(CHUNK, cap // per_row))


def completions(
    client: TestClient,
    model: str,
    x: np.ndarray,
    mask: np.ndarray,
    labels: np.ndarray | None,
    chunk: int,
    **extra: Any,
) -> np.ndarray:
    """The /reconstruct answers for every row, in chunks, as integer images."""
    out = []
    for a in range(0, len(x), chunk):
        body: dict[str, Any] = {
            "model": model,
            "inputs": x[a : a + chunk].tolist(),
            "mask": mask[a : a + chunk].astype(int).tolist(),
            "format": "npz",
            **extra,
        }
        if labels is not None:
            body["labels"] = labels[a : a + chunk].tolist()
        r = client.post("/reconstruct", json=body)
        if r.status_code != 200:
            raise SystemExit(f"{model}: {r.status_code} {r.text}")
        out.append(np.load(io.BytesIO(r.content))["reconstruction"])
    return np.concatenate(out).astype(np.int64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, default=Path("model_store"))
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"))
    p.add_argument("--models", default="pixelcnn-digits,diffusion-digits")
    p.add_argument("--rows", type=int, default=0, help="images (0: the whole split)")
    p.add_argument("--split", choices=("test", "validation"), default="test")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--diffusion-steps", default="default,100,250")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    models = args.models.split(",")
    manifest = ModelStore(args.store).open(models[0]).manifest
    assert manifest.split is not None
    data = load_dataset(manifest.split.dataset)
    assert data.y is not None
    splits = make_splits(data.y, len(data), seed=manifest.split.seed)
    chosen = getattr(splits, args.split)
    test = chosen if args.rows == 0 else chosen[: args.rows]
    x, y = data.x[test].astype(np.int64), data.y[test].astype(np.int64)
    H = x.shape[-2]
    mask = np.ones_like(x)
    mask[..., H // 2 :, :] = 0  # the bottom half missing
    judge, _ = load_or_train_classifier(data, splits, args.checkpoints, seed=manifest.split.seed)
    with torch.no_grad():
        upper = float((judge.predict(torch.as_tensor(x * mask)) == torch.as_tensor(y)).float().mean())
        whole = float((judge.predict(torch.as_tensor(x)) == torch.as_tensor(y)).float().mean())
    print(f"{len(x)} {args.split} digits; judge on the top half alone {upper:.3f}, whole {whole:.3f}")
    print("| model | setting | labels | judge names the true label (per seed) | known pixels kept | s |")
    print("|---|---|---|---|---|---|")
    rows: list[dict[str, Any]] = []
    settings = Settings(model_store=args.store, models=models)
    with TestClient(create_app(settings)) as client:
        for model in models:
            detail = client.get(f"/models/{model}").json()
            steps = args.diffusion_steps.split(",") if detail["family"] == "diffusion" else ["default"]
            for step in steps:
                extra = {} if step == "default" else {"steps": int(step)}
                chunk = rows_per_request(detail, extra.get("steps"))
                for given in (False, True):
                    accuracies, kept, start = [], True, time.perf_counter()
                    for seed in range(args.seeds):
                        labels = y if given else None
                        done = completions(client, model, x, mask, labels, chunk, seed=seed, **extra)
                        kept &= bool((done[mask == 1] == x[mask == 1]).all())
                        with torch.no_grad():
                            pred = judge.predict(torch.as_tensor(done)).numpy()
                        accuracies.append(float((pred == y).mean()))
                    seconds = (time.perf_counter() - start) / args.seeds
                    row = {
                        "model": model,
                        "setting": step,
                        "labels": "true label given" if given else "inferred",
                        "accuracy": accuracies,
                        "mean": float(np.mean(accuracies)),
                        "known_kept": kept,
                        "seconds": seconds,
                    }
                    rows.append(row)
                    per_seed = ", ".join(f"{a:.3f}" for a in accuracies)
                    print(
                        f"| {model} | {step} steps | {row['labels']} | {row['mean']:.3f} ({per_seed}) "
                        f"| {'yes' if kept else 'NO'} | {seconds:.1f} |"
                    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "split": args.split,
                    "images": len(x),
                    "judge_top_half": upper,
                    "judge_whole": whole,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

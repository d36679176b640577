"""Bayes-rule accuracy of trained checkpoints against the judge, on validation and test.

    python -m bench.posterior CHECKPOINT_DIR [...] [--samples 256] [--prior uniform|training]

For each checkpoint: the conditional test/validation bits/dim and how many images Bayes'
rule over the per-class likelihoods gets right, beside the judge's count (the training
issue's classifier, cached under --judge-cache). The VAE's importance samples are the same
draws for every class and row, as the service shares them, so classes are compared on
common noise. This is the scoring behind docs/results.md's VAE recipe table.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_checkpoint
from training.classifier import load_or_train_classifier
from training.data import load_dataset, make_splits
from training.families import GenerativeModel
from training.families.vae import VAEModel


@torch.no_grad()
def per_class_log_likelihood(model: GenerativeModel, x: torch.Tensor, samples: int) -> torch.Tensor:
    """log p(x | y = c) in nats for every class c: [N, L]."""
    columns = []
    if isinstance(model, VAEModel):
        # one set of draws for every class and row: [samples, Dz]
        eps = torch.randn(samples, model.cfg.latent, generator=torch.Generator().manual_seed(1234))
    for c in range(model.num_classes):
        rows = []
        for i in range(0, len(x), 64):
            xb = x[i : i + 64]
            y = torch.full((len(xb),), c, dtype=torch.long)
            if isinstance(model, VAEModel):
                logw = torch.cat(
                    [
                        model.log_weights(xb, y, eps[s : s + 64][None].expand(len(xb), -1, -1))
                        for s in range(0, samples, 64)
                    ],
                    dim=1,
                )  # [B, samples]
                rows.append(torch.logsumexp(logw, dim=1) - math.log(samples))
            else:
                rows.append(model.log_likelihood(xb, y, samples))
        columns.append(torch.cat(rows))
    return torch.stack(columns, dim=1)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--prior", choices=("uniform", "training"), default="uniform")
    parser.add_argument("--judge-cache", type=Path, default=Path("checkpoints"))
    args = parser.parse_args()
    print("| checkpoint | split | bpd | Bayes' rule right | judge right | of |")
    print("| --- | --- | --- | --- | --- | --- |")
    for directory in args.checkpoints:
        model, info = load_checkpoint(directory)
        model.eval()
        data = load_dataset(info.dataset)
        splits = make_splits(data.y, len(data.x), info.split_seed)
        judge, _ = load_or_train_classifier(data, splits, args.judge_cache)
        prior = np.full(model.num_classes, 1.0 / model.num_classes)
        if args.prior == "training" and info.class_prior is not None:
            prior = np.asarray(info.class_prior)
        for part in ("validation", "test"):
            idx = getattr(splits, part)
            x, y = torch.as_tensor(data.x[idx]), torch.as_tensor(data.y[idx])
            per_class = per_class_log_likelihood(model, x, args.samples)  # [N, L]
            bpd = float(-per_class.gather(1, y[:, None]).mean() / (data.spec.dims * math.log(2)))
            right = int(((per_class + torch.log(torch.as_tensor(prior))).argmax(1) == y).sum())
            judged = int((judge.predict(x) == y).sum())
            print(f"| {directory} | {part} | {bpd:.4f} | {right} | {judged} | {len(y)} |", flush=True)


if __name__ == "__main__":
    main()

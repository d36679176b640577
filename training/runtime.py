"""Process set-up for training: seeds, device, threads."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed every RNG training touches; deterministic kernels where torch has them."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class DeviceError(ValueError):
    """A training device that is unknown or not usable here."""


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` takes the GPU when torch can use one; `cuda` without one is an error."""
    if requested not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {requested!r}; choose auto, cpu or cuda")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise DeviceError("device 'cuda' was requested but torch sees no usable GPU")
    return torch.device(requested)


# Training and evaluation run on one CPU thread per process. Two reasons, both measured
# (docs/results.md, "Threads"; `python -m bench.train_threads`):
# - Results: parallel reductions split work by thread count, so a model trained on 2
#   threads differs in its last bits from one trained on 8 or on 1, and after thousands of
#   steps the difference is visible in every figure. One thread gives the same model on
#   every machine, whatever its core count.
# - Load: with a pool of one thread per core, every operator ends at a barrier; when another
#   program takes a core, the pool's threads wait for their preempted sibling, and a step
#   ran 3-4x slower (GOMP's spin-waits make it worse). One thread slows down only by its
#   share of the core. `genserve build-store` uses the other cores by training several
#   models at once, each in its own single-threaded process.
TRAINING_THREADS = 1


def configure_threads() -> int:
    """Pin torch's intra-op pool to TRAINING_THREADS (on the CPU); returns that count."""
    torch.set_num_threads(TRAINING_THREADS)
    return TRAINING_THREADS

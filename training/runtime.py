"""Process set-up for training: seeds, device, threads."""

from __future__ import annotations

import random

import numpy as np
import torch

from service.resources import available_cores


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


def configure_threads() -> int:
    """Size torch's intra-op pool to the cores this process may use; returns that count."""
    n = available_cores()
    torch.set_num_threads(n)
    return n

"""What the `genserve` command modules share: the console and the --store option."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
DEFAULT_CHECKPOINTS = Path("checkpoints")

StoreOption = Annotated[
    Path | None,
    typer.Option("--store", help="Model store root (default: $GENSERVE_MODEL_STORE or model_store)."),
]


def store_root(store: Path | None) -> Path:
    """The store a command works on: --store, else the server's setting."""
    from service.config import load_settings

    return store or load_settings().model_store


def _positive(value: float | None, flag: str) -> float | None:
    if value is not None and not value > 0:
        raise typer.BadParameter("must be a positive number of minutes", param_hint=flag)
    return value


# A limit exists only when asked for: by default training ends by its epoch budget or
# early stopping, so a model does not depend on the machine's speed or load.
MaxMinutesOption = Annotated[
    float | None,
    typer.Option(
        callback=lambda v: _positive(v, "--max-minutes"),
        help="Wall-clock limit on each model's training, checked after each epoch (default: none). "
        "A model it cuts short is marked so in its checkpoint, manifest and listings.",
    ),
]


def checkpoint_path(root: Path, family: str, dataset: str, conditional: bool, seed: int) -> Path:
    """Where `train` puts a run by default: checkpoints/<family>-<dataset>[-uncond]-s<seed>."""
    name = Path(dataset).stem if dataset.endswith(".npz") else dataset
    return root / f"{family}-{name}{'' if conditional else '-uncond'}-s{seed}"

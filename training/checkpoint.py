"""Checkpoints: a state dict plus the JSON config to rebuild the model. Never pickled modules.

Layout of a checkpoint directory:
    weights.pt        torch.save(state_dict); loaded with weights_only=True
    checkpoint.json   CheckpointInfo: family, config, dataset, split, training record
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import platform
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.manifest import DatasetSpec
from service.store import sha256_file

from .families import GenerativeModel, build_model

# Sources whose changes change what training produces; checkpoints made by other code
# are not reused (see `code_fingerprint`).
_TRAINING_SOURCES = ("families", "vectors", "data.py", "train.py", "runtime.py", "graphdef.py")


class CheckpointInfo(BaseModel):
    """Everything needed to rebuild, reuse and describe a trained model."""

    model_config = ConfigDict(extra="forbid")

    family: str
    conditional: bool
    dataset: str = Field(description="What was passed to load_dataset (name or path).")
    spec: DatasetSpec
    config: dict[str, Any]
    train: dict[str, Any]
    split_seed: int
    split_fractions: dict[str, float]
    class_prior: list[float] | None = Field(description="p(y) from the training split's labels.")
    key: str = Field(description="Hash of data, config and training code; equal keys reuse.")
    data_sha256: str | None = Field(
        default=None, description="data_digest of the dataset trained on (None: older checkpoints)."
    )
    weights_sha256: str | None = Field(
        default=None, description="sha256 of weights.pt, checked on load (None: older checkpoints)."
    )
    record: dict[str, Any] = Field(default_factory=dict, description="Epochs, timings, history.")
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    versions: dict[str, str] = Field(
        default_factory=lambda: {"torch": torch.__version__, "python": platform.python_version()}
    )

    @property
    def cut_short(self) -> bool:
        """Whether a time limit ended training early (checkpoints from before the flag say
        "time budget" instead)."""
        return bool(self.record.get("cut_short", self.record.get("stopped") == "time budget"))

    @property
    def training_summary(self) -> dict[str, Any]:
        """The training record without its per-epoch history (what reports show)."""
        return {k: v for k, v in self.record.items() if k != "history"}


def code_fingerprint() -> str:
    """sha256 over the training sources that determine a trained model."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for item in _TRAINING_SOURCES:
        path = root / item
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def run_key(parts: dict[str, Any]) -> str:
    """Stable hash of a JSON-able description of a training run."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def save_checkpoint(model: GenerativeModel, info: CheckpointInfo, directory: Path) -> Path:
    """Write weights and info into `directory` (created if needed), crash-safely.

    checkpoint.json is what makes a folder a checkpoint, so it goes first when replacing
    and last when writing, and it records the weights' sha256: a process killed in
    between leaves a folder that is retrained, never one whose weights belong to another
    run (`build-store` reuses a checkpoint whose key matches).
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    tmp = directory / f".weights-{uuid.uuid4().hex}.pt"
    torch.save(state, tmp)
    info = info.model_copy(update={"weights_sha256": sha256_file(tmp)})
    (directory / "checkpoint.json").unlink(missing_ok=True)
    os.replace(tmp, directory / "weights.pt")
    tmp_info = directory / f".checkpoint-{uuid.uuid4().hex}.json"
    tmp_info.write_text(info.model_dump_json(indent=2))
    os.replace(tmp_info, directory / "checkpoint.json")
    return directory


class CheckpointError(ValueError):
    """A folder that is not a readable checkpoint (missing, or a damaged description)."""


def read_info(directory: Path) -> CheckpointInfo:
    """The checkpoint's JSON description (no weights loaded)."""
    try:
        return CheckpointInfo.model_validate_json((directory / "checkpoint.json").read_text())
    except OSError as exc:
        raise CheckpointError(f"{directory} is not a checkpoint ({exc.strerror}: checkpoint.json)") from None
    except (ValidationError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{directory}/checkpoint.json is damaged ({str(exc).splitlines()[0]})"
        ) from None


def load_checkpoint(
    directory: Path, device: str | torch.device = "cpu"
) -> tuple[GenerativeModel, CheckpointInfo]:
    """Rebuild the model from its config and load its weights (safely: tensors only)."""
    info = read_info(directory)
    weights = directory / "weights.pt"
    try:
        blob = weights.read_bytes()  # read once: what is hashed is what is loaded
    except OSError as exc:
        raise CheckpointError(f"{weights} cannot be read ({exc.strerror}); retrain") from None
    if info.weights_sha256 is not None and hashlib.sha256(blob).hexdigest() != info.weights_sha256:
        raise CheckpointError(f"{weights} does not match its checkpoint.json (retrain)")
    model = build_model(info.family, info.spec, info.conditional, info.config)
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{weights} cannot be loaded ({str(exc).splitlines()[0]}); retrain") from None
    model.to(device)
    model.eval()
    return model, info

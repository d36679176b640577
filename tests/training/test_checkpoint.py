"""Checkpoints are written crash-safely and never reused when damaged (training/checkpoint.py),
and a store name keeps one kind of model (training/build.py: check_same_kind)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from rich.console import Console

from service.store import ModelStore, StoreError
from training.build import _reusable, check_same_kind
from training.checkpoint import CheckpointError, CheckpointInfo, load_checkpoint, save_checkpoint
from training.data import load_dataset
from training.families import build_model, default_config

SPEC = load_dataset("digits").spec


def tiny_vae(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = default_config("vae", SPEC, latent=4, channels=8, hidden=32)
    return build_model("vae", SPEC, True, config)


def save(directory: Path, seed: int = 0, key: str = "k1") -> CheckpointInfo:
    model = tiny_vae(seed)
    info = CheckpointInfo(
        family="vae",
        conditional=True,
        dataset="digits",
        spec=SPEC,
        config=model.config.model_dump(mode="json"),
        train={},
        split_seed=0,
        split_fractions={"validation": 0.1, "calibration": 0.15, "test": 0.15},
        class_prior=None,
        key=key,
    )
    save_checkpoint(model, info, directory)
    return info


def test_a_checkpoint_records_and_checks_its_weights(tmp_path: Path) -> None:
    save(tmp_path / "ck")
    _, info = load_checkpoint(tmp_path / "ck")
    assert info.weights_sha256 is not None and len(info.weights_sha256) == 64
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["checkpoint.json", "weights.pt"]
    # Weights from another run under this run's description (a save killed between the
    # two files used to leave exactly this): refused, not published under the wrong key.
    other = tmp_path / "other"
    save(other, seed=1, key="k2")
    (tmp_path / "ck" / "weights.pt").write_bytes((other / "weights.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "ck")
    # A killed save's temporary file is ignored (and never taken for the weights).
    (tmp_path / "ck" / ".weights-dead.pt").write_bytes(b"x")
    save(tmp_path / "ck")
    assert load_checkpoint(tmp_path / "ck")[1].weights_sha256 is not None


def test_damaged_checkpoints_are_retrained_not_a_traceback(tmp_path: Path) -> None:
    console = Console(file=None, quiet=True)
    ck = tmp_path / "ck"
    save(ck)
    assert _reusable(ck, "k1", console) is not None
    assert _reusable(ck, "another key", console) is None
    # An older checkpoint (no recorded hash) with truncated weights: a CheckpointError.
    info = CheckpointInfo.model_validate_json((ck / "checkpoint.json").read_text())
    (ck / "checkpoint.json").write_text(info.model_copy(update={"weights_sha256": None}).model_dump_json())
    weights = ck / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(ck)
    assert _reusable(ck, "k1", console) is None
    # A save killed before its description was written: no checkpoint at all.
    (ck / "checkpoint.json").unlink()
    assert _reusable(ck, "k1", console) is None


def test_a_store_name_keeps_its_kind_of_model(tiny_store: Path) -> None:
    store = ModelStore(tiny_store)
    check_same_kind(store, "vae-digits", "vae", True, SPEC)  # the same kind: fine
    check_same_kind(store, "vae-elsewhere", "vae", True, SPEC)  # a new name: fine
    with pytest.raises(StoreError, match=r"gan-digits v1 is a conditional \(10 classes\) gan.*refusing"):
        check_same_kind(store, "gan-digits", "vae", True, SPEC)
    other_shape = SPEC.model_copy(update={"shape": (1, 28, 28), "levels": 256})
    with pytest.raises(StoreError, match="--force"):
        check_same_kind(store, "vae-digits", "vae", True, other_shape)
    fewer = SPEC.model_copy(update={"label_names": ["a", "b"]})  # another y input
    with pytest.raises(StoreError, match="2 classes"):
        check_same_kind(store, "vae-digits", "vae", True, fewer)
    renamed = SPEC.model_copy(update={"label_names": [f"digit {i}" for i in range(10)]})
    check_same_kind(store, "vae-digits", "vae", True, renamed)  # names alone may change

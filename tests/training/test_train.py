"""The training loop and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training.checkpoint import CheckpointError
from training.pipeline import data_for
from training.train import TrainConfig, fit, train_run

from ..tiny import TINY, batch, make


@pytest.mark.parametrize(
    ("cfg", "judged"),
    [
        ({"max_epochs": 3, "val_every": 2}, [2, 3]),  # an epoch limit off the validation grid
        ({"max_epochs": 50, "val_every": 10, "max_minutes": 1e-9}, [1]),  # cut by a time limit
    ],
)
def test_the_last_epoch_is_always_judged(cfg: dict[str, Any], judged: list[int]) -> None:
    # Before, both runs kept their initial weights ("best validation inf at epoch -1")
    # whenever the loop ended between validations, and export published them.
    x, y = batch(16)
    model = make("vae", True)
    scores = iter([3.0, 2.0, 1.0])
    _, record, history = fit(
        model, x, y, lambda m: next(scores), TrainConfig(batch_size=8, **cfg), seed=0, progress=False
    )
    assert [h["epoch"] for h in history] == judged
    assert record["best_epoch"] == judged[-1]


@pytest.mark.parametrize(
    "bad",
    [
        {"max_epochs": 0},
        {"max_minutes": 0},
        {"batch_size": 0},
        {"val_every": 0},
        {"lr": float("nan")},
        {"ema": 1.0},
        {"augment": 1.5},
    ],
)
def test_settings_that_cannot_train_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_architecture_sizes_are_positive() -> None:
    with pytest.raises(ValueError, match="latent"):
        make("vae", True, latent=-1)
    with pytest.raises(ValueError, match="dilations"):
        make("pixelcnn", True, dilations=(1, 0))
    assert torch.isfinite(make("vae", True).log_likelihood(batch(2)[0], batch(2)[1], 2)).all()


def test_a_checkpoint_refuses_data_changed_since_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export re-splits the data: other data would put training images in the held-out parts."""
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "mine.npz", x=rng.integers(0, 4, (40, 4, 4)), y=np.arange(40) % 2)
    monkeypatch.chdir(tmp_path)
    result = train_run(
        "vae",
        "mine.npz",
        config_overrides=TINY["vae"],
        train_overrides={"max_epochs": 1},
        checkpoint_dir=tmp_path / "ck",
        progress=False,
    )
    info = result.info
    assert info.record["steps"] >= 1  # 24 training images, under half a batch, still train
    # recorded absolutely, so export works from any working directory
    assert info.dataset == str(tmp_path / "mine.npz") and info.data_sha256 is not None
    monkeypatch.chdir("/")
    _, splits = data_for(info)
    np.testing.assert_array_equal(splits.test, result.splits.test)
    np.savez(tmp_path / "mine.npz", x=rng.integers(0, 4, (40, 4, 4)), y=np.arange(40) % 2)
    with pytest.raises(CheckpointError, match=r"mine\.npz has changed since this checkpoint was trained"):
        data_for(info)
    (tmp_path / "mine.npz").unlink()
    with pytest.raises(CheckpointError, match=r"cannot be read: .*no such file"):
        data_for(info)


def test_a_run_announces_its_length_and_a_cut_is_loud() -> None:
    x, y = batch(16)
    lines: list[str] = []
    cfg = TrainConfig(batch_size=8, max_epochs=4, val_every=2)
    _, record, _ = fit(make("vae", True), x, y, lambda m: 1.0, cfg, seed=0, progress=False, say=lines.append)
    assert len(lines) == 1 and "s/epoch, about" in lines[0] and "for 4 epochs" in lines[0]
    assert (record["stopped"], record["cut_short"], record["time_limit_minutes"]) == (
        "epoch limit",
        False,
        None,
    )

    lines.clear()
    cut = TrainConfig(batch_size=8, max_epochs=50, max_minutes=1e-9)
    _, record, _ = fit(make("vae", True), x, y, lambda m: 1.0, cut, seed=0, progress=False, say=lines.append)
    assert (record["stopped"], record["cut_short"], record["epochs"]) == ("time limit", True, 1)
    assert "WARNING" in lines[-1] and "epoch 1 of 50" in lines[-1]


def test_no_recipe_has_a_clock() -> None:
    """The default zoo ends by epochs and early stopping on every machine, busy or not."""
    from training.data import load_dataset
    from training.families import FAMILIES
    from training.train import default_train_config

    for name in ("digits", "mnist5k"):
        spec = load_dataset(name).spec
        for family in FAMILIES:
            assert default_train_config(family, spec).max_minutes is None, (name, family)

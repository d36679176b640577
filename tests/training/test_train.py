"""The training loop and its settings."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.train import TrainConfig, fit

from ..tiny import batch, make


@pytest.mark.parametrize(
    ("cfg", "judged"),
    [
        ({"max_epochs": 3, "val_every": 2}, [2, 3]),  # an epoch limit off the validation grid
        ({"max_epochs": 50, "val_every": 10, "max_minutes": 1e-9}, [1]),  # cut by the clock
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

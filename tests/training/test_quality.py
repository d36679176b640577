"""Sample-quality helpers: the Fréchet distance and the validation choice of temperature."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch

from training.classifier import Classifier
from training.data import load_dataset
from training.quality import TEMPERATURE_GRID, frechet_distance, select_temperature


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift() -> None:
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert abs(frechet_distance(a, a)) < 1e-6
    assert frechet_distance(a, a + 1.0) > 3.9  # |Δμ|² = 4, equal covariances


def test_select_temperature_picks_the_samples_closest_to_validation() -> None:
    spec = load_dataset("digits").spec
    torch.manual_seed(0)
    judge = Classifier(spec).eval()  # untrained: any fixed feature map tells sets apart
    validation = torch.randint(0, spec.levels, (40, *spec.shape))
    calls: list[tuple[int, float]] = []

    def sampler(n: int, labels: torch.Tensor | None, seed: int, temperature: float) -> torch.Tensor:
        calls.append((seed, temperature))
        if temperature == 0.85:  # this temperature reproduces the validation images
            return validation[:n]
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, 3, (n, *spec.shape), generator=gen)  # dark, unlike the data

    model = cast(Any, SimpleNamespace(conditional=True, num_classes=10))
    best, distances = select_temperature(model, judge, validation, per_class=4, sampler=sampler)
    assert best == 0.85
    assert set(distances) == {f"{t:g}" for t in TEMPERATURE_GRID}
    assert distances["0.85"] < 1e-3 < min(v for k, v in distances.items() if k != "0.85")
    assert len({seed for seed, _ in calls}) == 1  # every temperature scales the same noise

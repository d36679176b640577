"""Sample-quality helpers: the Fréchet distance and the validation choice of sampling defaults
(temperature; diffusion guidance and steps)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import torch

from training.classifier import Classifier
from training.data import load_dataset
from training.quality import (
    GUIDANCE_GRID,
    STEPS_GRID,
    TEMPERATURE_GRID,
    SamplingChoice,
    frechet_distance,
    select_diffusion_sampling,
    select_temperature,
)


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

    def sampler(n: int, labels: torch.Tensor | None, seed: int, choice: SamplingChoice) -> torch.Tensor:
        calls.append((seed, choice.temperature))
        if choice.temperature == 0.85:  # this temperature reproduces the validation images
            return validation[:n]
        gen = torch.Generator().manual_seed(seed)
        return torch.randint(0, 3, (n, *spec.shape), generator=gen)  # dark, unlike the data

    model = cast(Any, SimpleNamespace(conditional=True, num_classes=10))
    chosen = select_temperature(model, judge, validation, per_class=4, sampler=sampler)
    assert chosen.choice == SamplingChoice(0.85)
    distances = chosen.validation_fid
    assert set(distances) == {f"{t:g}" for t in TEMPERATURE_GRID}
    assert distances["0.85"] < 1e-3 < min(v for k, v in distances.items() if k != "0.85")
    assert len({seed for seed, _ in calls}) == 1  # every temperature scales the same noise


def test_diffusion_guidance_is_the_closest_and_steps_the_fewest_near_the_best() -> None:
    spec = load_dataset("digits").spec
    torch.manual_seed(0)
    judge = Classifier(spec).eval()
    validation = torch.randint(0, spec.levels, (40, *spec.shape))
    calls: list[SamplingChoice] = []

    def sampler(n: int, labels: torch.Tensor | None, seed: int, choice: SamplingChoice) -> torch.Tensor:
        # Guidance 1 and 50 or more steps reproduce the validation images; 25 steps are
        # a few pixels off (within the tolerance of the best), 10 steps far off.
        calls.append(choice)
        out = validation[:n].clone()
        if choice.guidance != 1.0:
            return torch.randint(0, 3, (n, *spec.shape), generator=torch.Generator().manual_seed(seed))
        assert choice.steps is not None
        if choice.steps < 50:
            gen = torch.Generator().manual_seed(seed)
            wrong = torch.rand(out.shape, generator=gen) < (0.5 if choice.steps == 10 else 0.001)
            out[wrong] = 0
        return out

    model = cast(Any, SimpleNamespace(conditional=True, num_classes=10))
    chosen = select_diffusion_sampling(model, judge, validation, per_class=4, sampler=sampler)
    assert chosen is not None and chosen.choice.guidance == 1.0
    by_steps = {
        c.steps: d for c, d in ((c, chosen.validation_fid[c.key()]) for c in calls) if c.guidance == 1.0
    }
    assert set(by_steps) == set(STEPS_GRID)
    best = min(by_steps.values())
    expected = min(s for s, d in by_steps.items() if d <= best + 0.05 * max(best, 0.0))
    assert chosen.choice.steps == expected
    assert {c.guidance for c in calls} == set(GUIDANCE_GRID)
    assert select_diffusion_sampling(model, judge, validation, per_class=4) is None  # no served sampler

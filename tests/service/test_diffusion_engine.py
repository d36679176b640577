"""The served diffusion engine against the training code: the same noise gives the same
samples (DDIM, with and without guidance), the same draws give the same bound, inpainting
keeps every known pixel, and the seed decides every draw."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from service.engine import build_engine, noise_rng
from service.engine.base import SamplerOptions
from service.engine.diffusion import DiffusionEngine
from service.manifest import DatasetSpec, GraphSpec, Manifest, SamplingRecord
from training.export import EagerBackend, graph_defs, prepare_for_export
from training.families.diffusion import DiffusionConfig, DiffusionModel

SPEC = DatasetSpec(name="toy", shape=(1, 4, 4), levels=5, label_names=["a", "b", "c"])


def random_model(conditional: bool, **cfg: Any) -> DiffusionModel:
    """Random weights everywhere (the output layer too, which training starts at zero)."""
    torch.manual_seed(0)
    config = DiffusionConfig(channels=8, embedding=8, sample_steps=4, dropout=0.0, **cfg)
    model = DiffusionModel(SPEC, conditional, config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


class Calls:
    """The eager `denoise` graph as a graph caller, counting rows per call."""

    def __init__(self, model: DiffusionModel) -> None:
        self.backend = EagerBackend(prepare_for_export(model))
        self.rows: list[int] = []

    async def __call__(self, graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Any:
        self.rows.append(len(next(iter(inputs.values()))))
        return self.backend.run(graph, inputs)


def engine_for(
    model: DiffusionModel, sampling: SamplingRecord | None = None
) -> tuple[DiffusionEngine, Calls]:
    graphs = [
        GraphSpec(name=g.name, description=g.description, inputs=g.inputs, outputs=g.outputs, files={})
        for g in graph_defs(prepare_for_export(model))
    ]
    manifest = Manifest.model_construct(
        family="diffusion",
        dataset=model.spec,
        conditioning=type("C", (), {"conditional": model.conditional, "class_prior": [1 / 3] * 3})(),
        family_info=model.export_info(),
        graphs=graphs,
        sampling=sampling,
    )
    calls = Calls(model)
    engine = build_engine(manifest, calls)
    assert isinstance(engine, DiffusionEngine)
    return engine, calls


@pytest.mark.parametrize(("conditional", "guidance"), [(True, 0.0), (True, 1.5), (False, 0.0)])
def test_the_served_sampler_draws_what_the_training_sampler_draws(conditional: bool, guidance: float) -> None:
    model = random_model(conditional, guidance=guidance)
    engine, calls = engine_for(model)
    gen = torch.Generator().manual_seed(3)
    noise = model.draw_noise(6, gen)
    y = torch.tensor([0, 1, 2, 0, 1, 2]) if conditional else None
    with torch.no_grad():
        expected = model.sample_with_noise(noise, y)
    labels = engine.label_input(None if y is None else y.numpy(), 6)
    z0 = asyncio.run(
        engine.denoise_from(noise["z"].double().numpy(), 1.0, labels, 4, "ddim", guidance, noise_rng(0))
    )
    got = engine.decode(z0, noise["u"].double().numpy())
    assert (got == expected.numpy()).mean() >= 0.98  # float32 against float64 at level edges
    # One denoiser call per step, both halves of guidance in the same call.
    assert calls.rows == [12 if guidance else 6] * 4


def test_the_served_bound_is_the_training_bound_on_the_same_draws() -> None:
    model = random_model(True)
    engine, _ = engine_for(model)
    x = torch.randint(0, SPEC.levels, (5, *SPEC.shape), generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1, 0])
    samples, seed = 6, 11
    served = asyncio.run(engine.conditional_log_likelihood(x.numpy(), y.numpy(), samples, seed))
    # The engine's draws, in its order: the time offset, then ε per time, then the decoder's ε0.
    rng = noise_rng(seed)
    t = np.mod(rng.random() + np.arange(samples) / samples, 1.0)
    eps = torch.from_numpy(rng.standard_normal((samples, *SPEC.shape))).float()
    eps0 = torch.from_numpy(rng.standard_normal(SPEC.shape)).float()
    with torch.no_grad():
        terms = [
            model.bound_terms(x, y, torch.full((5,), float(t[s])), eps[s].expand_as(x), eps0.expand_as(x))
            for s in range(samples)
        ]
    expected = -torch.stack(terms).mean(dim=0).double().numpy()
    np.testing.assert_allclose(served, expected, rtol=1e-4)


def test_the_bound_and_the_posterior_follow_the_seed() -> None:
    engine, _ = engine_for(random_model(True))
    x = np.random.default_rng(0).integers(0, SPEC.levels, (3, *SPEC.shape))
    a = asyncio.run(engine.log_likelihood(x, None, 4, seed=5))
    b = asyncio.run(engine.log_likelihood(x, None, 4, seed=5))
    c = asyncio.run(engine.log_likelihood(x, None, 4, seed=6))
    np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)
    assert not np.array_equal(a.log_likelihood, c.log_likelihood)
    assert a.log_posterior is not None and a.log_posterior.shape == (3, 3)
    np.testing.assert_allclose(np.exp(a.log_posterior).sum(axis=1), 1.0)


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_samples_are_levels_and_follow_the_seed(sampler: str) -> None:
    engine, _ = engine_for(random_model(True))
    labels = np.array([0, 1, 2, 2])
    options = SamplerOptions(steps=3, sampler=sampler, guidance=1.0)

    def draw(seed: int) -> np.ndarray:
        return asyncio.run(engine.sample(4, labels, noise_rng(seed), 1.0, None, options))

    s = draw(1)
    assert s.shape == (4, *SPEC.shape) and s.dtype == np.int64
    assert s.min() >= 0 and s.max() < SPEC.levels
    np.testing.assert_array_equal(s, draw(1))
    assert not np.array_equal(s, draw(2))


def test_inpainting_keeps_every_known_pixel_and_denoising_follows_the_strength() -> None:
    engine, _ = engine_for(random_model(True))
    x = np.random.default_rng(0).integers(0, SPEC.levels, (4, *SPEC.shape))
    labels = np.array([0, 1, 2, 0])
    mask = np.ones_like(x)
    mask[:, :, 2:] = 0  # the bottom half is missing
    filled = asyncio.run(engine.reconstruct(x, labels, mask, noise_rng(3), options=SamplerOptions(steps=5)))
    out = filled.arrays["reconstruction"]
    assert out.shape == x.shape
    np.testing.assert_array_equal(out[mask == 1], x[mask == 1])
    again = asyncio.run(engine.reconstruct(x, labels, mask, noise_rng(3), options=SamplerOptions(steps=5)))
    np.testing.assert_array_equal(out, again.arrays["reconstruction"])
    # Without a mask: the input noised to `strength`; a tiny strength barely moves it.
    light = asyncio.run(
        engine.reconstruct(x, labels, None, noise_rng(3), options=SamplerOptions(steps=20, strength=0.02))
    )
    assert (light.arrays["reconstruction"] == x).mean() > 0.9
    assert "SDEdit" in light.description


def test_the_builds_choice_on_validation_replaces_the_configs_defaults() -> None:
    model = random_model(True, guidance=0.0)  # config: 4 steps, no guidance
    chosen = SamplingRecord(default_steps=7, default_guidance=0.5, selected_by="validation")
    engine, calls = engine_for(model, chosen)
    assert engine.sampling_options(SamplerOptions()) == SamplerOptions(steps=7, sampler="ddim", guidance=0.5)
    asyncio.run(engine.sample(2, np.array([0, 1]), noise_rng(0)))
    assert len(calls.rows) == 7 and calls.rows[0] == 4  # 7 steps, each with guidance's null pass
    engine, _ = engine_for(model, SamplingRecord(selected_by="an older store: temperature only"))
    assert engine.sampling_options(SamplerOptions()).steps == 4


def test_an_inpaintings_inferred_label_weighs_the_known_pixels_alone() -> None:
    model = random_model(True)
    engine, _ = engine_for(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, SPEC.levels, (3, *SPEC.shape))
    mask = np.ones_like(x, dtype=bool)
    mask[..., 2:, :] = False  # the bottom half to fill
    other = np.where(mask, x, rng.integers(0, SPEC.levels, x.shape))  # differs under the mask only
    post = asyncio.run(engine.label_posterior(x, mask, 4))
    assert np.allclose(np.exp(post).sum(axis=1), 1.0)
    assert np.array_equal(post, asyncio.run(engine.label_posterior(other, mask, 4)))
    whole = asyncio.run(engine.label_posterior(x, None, 4))  # no mask: the whole input is evidence
    assert not np.allclose(post, whole)

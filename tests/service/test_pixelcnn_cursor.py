"""Fast PixelCNN sampling: the incremental graphs draw what the full pass draws.

Tiny models with random weights (so no level is a near-tie by construction) and every
architectural option the step graphs must reproduce: dilations, a wider kernel, position
biases, ensembles, one-hot input, the logistic-mixture output, several channels, with and
without labels. Sampling, an exact (suffix) completion and the particle filter, each with
the same seed through both cursors, must give identical pixels, and the fast loops must
not run the full `logits` graph at all.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from service.engine import build_engine
from service.engine.pixelcnn import PixelCNNEngine
from service.manifest import DatasetSpec, GraphSpec, Manifest
from training.export import EagerBackend, graph_defs, prepare_for_export
from training.families.pixelcnn import PixelCNNConfig, PixelCNNModel

CASES: list[tuple[int, bool, dict[str, Any]]] = [
    (1, True, {}),
    (1, False, {"kernel": 5, "dilations": (1, 2), "position_bias": True, "members": 2}),
    (1, True, {"onehot_input": True, "output": "logistic_mixture", "dilations": (2, 1)}),
    (3, True, {"dilations": (1, 2)}),
]


def random_model(C: int, conditional: bool, **cfg: Any) -> PixelCNNModel:
    spec = DatasetSpec(name="toy", shape=(C, 5, 4), levels=6, label_names=["a", "b", "c"])
    torch.manual_seed(0)
    model = PixelCNNModel(spec, conditional, PixelCNNConfig(channels=6 * C, layers=3, **cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4)
    return model.eval()


class Counting:
    """The eager graphs, counting calls per graph."""

    def __init__(self, model: PixelCNNModel) -> None:
        self.backend = EagerBackend(model)
        self.calls: Counter[str] = Counter()

    async def __call__(self, graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Any:
        self.calls[graph] += 1
        return self.backend.run(graph, inputs)


def engine_pair(model: PixelCNNModel) -> tuple[PixelCNNEngine, PixelCNNEngine, Counting, Counting]:
    graphs = [
        GraphSpec(name=g.name, description=g.description, inputs=g.inputs, outputs=g.outputs, files={})
        for g in graph_defs(prepare_for_export(model))
    ]
    manifest = Manifest.model_construct(
        family="pixelcnn",
        dataset=model.spec,
        conditioning=type("C", (), {"conditional": model.conditional, "class_prior": [1 / 3] * 3})(),
        family_info={},
        graphs=graphs,
    )
    fast_calls, full_calls = Counting(model), Counting(model)
    fast, full = build_engine(manifest, fast_calls), build_engine(manifest, full_calls)
    assert isinstance(fast, PixelCNNEngine) and isinstance(full, PixelCNNEngine)
    assert fast.fast_steps  # the store has the step graphs
    full.fast_steps = False
    return fast, full, fast_calls, full_calls


@pytest.mark.parametrize(("C", "conditional", "cfg"), CASES)
def test_the_step_graphs_sample_and_complete_what_the_full_pass_does(
    C: int, conditional: bool, cfg: dict[str, Any]
) -> None:
    model = random_model(C, conditional, **cfg)
    fast, full, fast_calls, full_calls = engine_pair(model)
    _, H, W = model.spec.shape
    labels = np.array([0, 2, 1, 1], dtype=np.int64) if conditional else None

    def both(run: Any) -> tuple[np.ndarray, np.ndarray]:
        return asyncio.run(run(fast)), asyncio.run(run(full))

    drawn, expected = both(lambda e: e.sample(4, labels, np.random.default_rng(11), temperature=0.9))
    np.testing.assert_array_equal(drawn, expected)
    assert fast_calls.calls["logits"] == 0 and fast_calls.calls["row_step"] == H
    assert fast_calls.calls["pixel_step"] == H * W * C and full_calls.calls["logits"] == H * W * C

    x = np.random.default_rng(1).integers(0, model.spec.levels, (4, C, H, W))
    suffix = np.ones_like(x)  # the bottom rows missing: the exact completion
    suffix[:, :, 3:] = 0
    suffix[1, :, 2, 2:] = 0  # one row from a column on, in one image only
    scattered = (np.random.default_rng(2).random(x.shape) < 0.6).astype(np.int64)  # particles
    for mask, particles in ((suffix, None), (scattered, 6), (scattered, 1)):
        done, expected = both(
            lambda e, m=mask, p=particles: e.reconstruct(x, labels, m, np.random.default_rng(5), particles=p)
        )
        np.testing.assert_array_equal(done.arrays["reconstruction"], expected.arrays["reconstruction"])
        kept = done.arrays["reconstruction"][mask == 1]
        np.testing.assert_array_equal(kept, x[mask == 1])
    assert fast_calls.calls["logits"] == 0


def test_rows_at_different_positions_batch_into_one_step_call() -> None:
    """Two requests at different pixels in one `pixel_step` call give what each gives alone
    (the position is an input per row, so the batcher may merge them)."""
    model = random_model(1, True)
    backend = EagerBackend(model)
    g = {d.name: d for d in graph_defs(prepare_for_export(model))}["pixel_step"]
    assert g.example is not None
    x, y = torch.zeros(1), torch.tensor([0, 1, 2, 0, 1])
    ins = g.example(5, x, y, torch.Generator().manual_seed(0))
    feeds = {t.name: a.numpy() for t, a in zip(g.inputs, ins, strict=True)}
    together = backend.run("pixel_step", feeds)
    for row in range(5):
        alone = backend.run("pixel_step", {k: v[row : row + 1] for k, v in feeds.items()})
        for name, value in alone.items():
            np.testing.assert_allclose(value[0], together[name][row], rtol=1e-5, atol=1e-5)

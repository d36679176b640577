"""The vector-flow contract: shapes, finiteness, seeded determinism, export parity, inverses.

The same checks the image families pass (tests/training/test_families.py and test_export.py),
for every way a vector flow is conditioned: on a context, on labels, on both, on nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.vector_spec import Interval, Scaling, VectorSpec
from training.export import EagerBackend, export_graphs
from training.vectors.flows import VectorFlowConfig, VectorFlowModel

from ...conftest import TINY_VECTOR_FLOW

CASES = [(ctx, labels) for ctx in (True, False) for labels in (True, False)]


def spec(context: bool, labels: bool, dims: int = 3) -> VectorSpec:
    return VectorSpec(
        name="toy",
        features=[f"f{i}" for i in range(dims)],
        label_names=["a", "b"] if labels else None,
        context=["c1", "c2"] if context else None,
        support=[Interval(low=-1.0, high=1.0)] + [Interval()] * (dims - 1),
        scaling=Scaling(shift=[0.0] * dims, scale=[1.0] * dims),
        context_scaling=Scaling(shift=[0.0, 0.0], scale=[1.0, 1.0]) if context else None,
        density="p(x)",
    )


def make(context: bool, labels: bool, seed: int = 0, transform: str = "nsf") -> VectorFlowModel:
    torch.manual_seed(seed)
    return VectorFlowModel(
        spec(context, labels), labels, VectorFlowConfig(**TINY_VECTOR_FLOW, transform=transform)
    )


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 3, generator=g),
        torch.randint(0, 2, (n,), generator=g),
        torch.randn(n, 2, generator=g),
    )


def train(model: VectorFlowModel, steps: int = 3) -> None:
    opts = model.make_optimizers(1e-2, 0.0)
    model.train()
    for i in range(steps):
        x, y, c = data(16, seed=i)
        model.train_step(
            x, model.condition(y if model.num_classes else None, c if model.context_dims else None), opts, i
        )
    model.eval()


@pytest.mark.parametrize(("context", "labels"), CASES)
@pytest.mark.parametrize("transform", ["nsf", "maf"])
def test_contract(context: bool, labels: bool, transform: str) -> None:
    model = make(context, labels, transform=transform)
    train(model)
    x, y, c = data(8, seed=5)
    yy, cc = (y if labels else None), (c if context else None)
    with torch.no_grad():
        lp = model.log_prob(x, yy, cc)
        z = model(x, yy, cc)
        back = model.inverse(z, yy, cc)
    assert lp.shape == (8,) and torch.isfinite(lp).all()
    assert z.shape == x.shape and torch.allclose(back, x, atol=1e-4)
    # seeded determinism: same seed, same training, same weights
    twin = make(context, labels, transform=transform)
    train(twin)
    for (k, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    # the conditioning is used: other labels or context give other densities
    if labels:
        assert not torch.allclose(lp, model.log_prob(x, 1 - y, cc))
    if context:
        assert not torch.allclose(lp, model.log_prob(x, yy, cc + 1.0))


@pytest.mark.parametrize(("context", "labels"), [(True, True), (False, False)])
def test_export_parity_and_signatures(context: bool, labels: bool, tmp_path: Path) -> None:
    model = make(context, labels)
    train(model)
    x, y, c = data(12, seed=9)
    specs, gaps = export_graphs(model, tmp_path, x, y if labels else None, c if context else None)
    assert {g.name for g in specs} == {"log_prob", "forward", "inverse"}
    for g in specs:
        names = [t.name for t in g.inputs]
        assert names == [names[0], *(["y"] if labels else []), *(["c"] if context else [])]
        assert gaps[g.name]["onnx"] <= 1e-4 and gaps[g.name]["torchscript"] <= 1e-4
    # the ONNX graphs run at batch sizes the export never saw and agree with eager torch
    from service.runtime import open_backend

    feeds = {"x": data(7, 3)[0].numpy(), "z": data(7, 4)[0].numpy()}
    if labels:
        feeds["y"] = data(7, 3)[1].numpy()
    if context:
        feeds["c"] = data(7, 3)[2].numpy()
    onnx = open_backend(specs, tmp_path, "onnxruntime", "cpu", 1)
    eager = EagerBackend(model)
    for g in specs:
        want = [t.name for t in g.inputs]
        a, b = onnx.run(g.name, {k: feeds[k] for k in want}), eager.run(g.name, {k: feeds[k] for k in want})
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4)

"""Export -> load -> parity for every family and both formats; seeded samples across backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service.engine import build_engine, inline_caller
from service.manifest import Manifest, TensorSpec
from service.runtime import open_backend
from training.export import EagerBackend, ExportError, export_graphs, graph_defs, parity_gap
from training.graphdef import GraphDef

from ..tiny import CASES, SPEC, batch, make, steps


def exported(family: str, conditional: bool, folder: Path) -> tuple[object, list, dict]:
    model = make(family, conditional)
    steps(model, 3)
    x, y = batch(12, seed=5)
    specs, gaps = export_graphs(model, folder, x, y if conditional else None)
    return model, specs, gaps


def provisional_manifest(model: object, specs: list, folder: Path) -> Manifest:
    """Just enough manifest for an engine (the store fills the rest when publishing)."""
    from training.families import GenerativeModel

    assert isinstance(model, GenerativeModel)
    return Manifest.model_construct(
        family=model.family,
        dataset=SPEC,
        conditioning=type("C", (), {"conditional": model.conditional, "class_prior": [1 / 3] * 3})(),
        family_info=model.export_info(),
        graphs=specs,
    )


@pytest.mark.parametrize(("family", "conditional"), CASES)
def test_export_round_trip_parity(family: str, conditional: bool, tmp_path: Path) -> None:
    model, specs, gaps = exported(family, conditional, tmp_path)
    for g in specs:
        assert (tmp_path / g.files["onnx"]).is_file() and (tmp_path / g.files["torchscript"]).is_file()
        proto = onnx.load(str(tmp_path / g.files["onnx"]))
        assert proto.opset_import[0].version >= 17
        # dynamic axes survived export
        for inp in proto.graph.input:
            assert inp.type.tensor_type.shape.dim[0].dim_param, f"{g.name}.{inp.name} batch axis fixed"
        assert gaps[g.name]["onnx"] <= 1e-4 and gaps[g.name]["torchscript"] <= 1e-4
    # unconditional graphs take no labels
    names = {t.name for g in specs for t in g.inputs}
    assert ("y" in names) == conditional

    # the loaded graphs run at batch sizes never exported, in both backends, and agree
    x, y = batch(7, seed=9)
    examples = {g.name: getattr(g, "example", None) for g in graph_defs(model)}  # type: ignore[arg-type]
    for g in specs:
        feeds = {}
        make_example = examples[g.name]
        if make_example is not None:  # inputs with a meaning (levels, positions): the graph's own
            ins = make_example(7, x, y, torch.Generator().manual_seed(3))
            feeds = {t.name: a.numpy() for t, a in zip(g.inputs, ins, strict=True)}
        for t in g.inputs:
            if t.name in feeds:
                continue
            shape = [7 if d == "batch" else 3 if d == "samples" else int(d) for d in t.shape]
            feeds[t.name] = (
                y.numpy()
                if t.name == "y"
                else (x.float() + 0.3).numpy()
                if t.name == "x"
                else np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            )
        outs = [
            open_backend(specs, tmp_path, b, "cpu", 1).run(g.name, feeds)
            for b in ("onnxruntime", "torchscript")
        ]
        outs.append(EagerBackend(model).run(g.name, feeds))  # type: ignore[arg-type]
        for name in outs[0]:
            np.testing.assert_allclose(outs[0][name], outs[1][name], rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(outs[0][name], outs[2][name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["flow", "vae", "gan", "pixelcnn", "diffusion"])
def test_seeded_sample_identical_across_onnx_torchscript_and_eager(family: str, tmp_path: Path) -> None:
    model, specs, _ = exported(family, True, tmp_path)
    manifest = provisional_manifest(model, specs, tmp_path)
    labels = np.array([0, 1, 2, 1], dtype=np.int64)
    results = []
    for backend in (
        open_backend(specs, tmp_path, "onnxruntime", "cpu", 1),
        open_backend(specs, tmp_path, "torchscript", "cpu", 1),
        EagerBackend(model),  # type: ignore[arg-type]
    ):
        engine = build_engine(manifest, inline_caller(backend))
        rng = np.random.Generator(np.random.PCG64(1234))
        results.append(asyncio.run(engine.sample(4, labels, rng, temperature=1.0)))
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    assert results[0].shape == (4, *SPEC.shape)


def test_service_sampling_matches_the_training_sampler(tmp_path: Path) -> None:
    """The service's loop over exported graphs reproduces the model's own eager sampler."""
    model, specs, _ = exported("pixelcnn", True, tmp_path)
    manifest = provisional_manifest(model, specs, tmp_path)
    engine = build_engine(manifest, inline_caller(open_backend(specs, tmp_path, "onnxruntime", "cpu", 1)))
    labels = np.array([2, 0, 1], dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(5))
    served = asyncio.run(engine.sample(3, labels, rng))
    u = np.random.Generator(np.random.PCG64(5)).random((3, *SPEC.shape), dtype=np.float32)
    with torch.no_grad():
        eager = model.sample_with_noise({"u": torch.from_numpy(u)}, torch.from_numpy(labels))  # type: ignore[attr-defined]
    np.testing.assert_array_equal(served, eager.numpy())


def test_masks_are_baked_not_stored_twice(tmp_path: Path) -> None:
    exported("pixelcnn", False, tmp_path)
    proto = onnx.load(str(tmp_path / "logits.onnx"))
    names = [init.name for init in proto.graph.initializer]
    assert not any("mask" in n for n in names), names


def test_exporter_refuses_a_fixed_dynamic_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If an axis marked dynamic comes out fixed, the export fails instead of publishing."""
    import training.export as export

    model = make("gan", False)
    steps(model, 1)
    real = export._dims
    monkeypatch.setattr(export, "_dims", lambda tt: [2 if isinstance(d, str) else d for d in real(tt)])
    x, _ = batch(4)
    with pytest.raises(ExportError, match="was fixed"):
        export_graphs(model, tmp_path, x, None)


def test_graph_signatures_follow_the_design() -> None:
    expected = {
        "flow": {"log_prob", "forward", "inverse"},
        "vae": {"encode", "decode", "log_weights"},
        "gan": {"generate"},
        "pixelcnn": {"logits", "row_step", "pixel_step"},
    }
    for family, names in expected.items():
        model = make(family, True)
        defs = graph_defs(model)
        assert {g.name for g in defs} == names
        for g in defs:
            assert g.inputs[1].name == "y" and g.inputs[1].dtype == "int64"


def test_value_parity_is_relative_to_the_tensors_scale() -> None:
    # A deep flow's latents reach |z| ~ 10 and float32 layers err in proportion: 1e-4 at an
    # element near 0 is 1e-5 of the tensor's scale. On unit-scale tensors it stays absolute.
    spec = TensorSpec(name="z", dtype="float32", shape=["batch", 4])
    g = GraphDef(name="forward", description="", module=torch.nn.Identity(), inputs=[], outputs=[spec])
    z = torch.tensor([[10.0, -3.0, 0.01, 0.5]], dtype=torch.float64)
    assert parity_gap(g, (z,), [z + torch.tensor([0.0, 0.0, 1e-4, 0.0])]) == pytest.approx(1e-5)
    assert parity_gap(g, (z,), [z + torch.tensor([0.0, 0.0, 2e-2, 0.0])]) == pytest.approx(2e-3)
    small = torch.tensor([[0.5, -0.2]], dtype=torch.float64)
    assert parity_gap(g, (small,), [small + 2e-4]) == pytest.approx(2e-4)
    assert parity_gap(g, (z,), [torch.full_like(z, float("nan"))]) == float("inf")


def test_likelihood_parity_is_relative_per_row() -> None:
    spec = TensorSpec(name="log_prob", dtype="float32", shape=["batch"])
    g = GraphDef(
        name="log_prob",
        description="",
        module=torch.nn.Identity(),
        inputs=[],
        outputs=[spec],
        likelihood_outputs=("log_prob",),
    )
    lp = torch.tensor([-1285.0, -0.5], dtype=torch.float64)
    assert parity_gap(g, (lp,), [lp + torch.tensor([1.285e-3, 0.0])]) == pytest.approx(1e-6)
    assert parity_gap(g, (lp,), [lp + torch.tensor([0.0, 2e-4])]) == pytest.approx(2e-4)

"""Export a trained model's graphs to ONNX and TorchScript, and prove they match eager torch.

Every graph is deterministic (noise is an input), has a dynamic batch axis (and the
importance-sample axis of `log_weights`), and is checked after export: its ONNX inputs
must carry the symbolic axes, and ONNX Runtime and TorchScript must reproduce eager torch
on a held-out batch of a size the export never saw. A graph that fails is not published.
"""

from __future__ import annotations

import copy
import inspect
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from service.manifest import GraphSpec, TensorSpec

from .families import GenerativeModel
from .families.diffusion import DiffusionModel
from .families.flow import FlowModel
from .families.gan import GANModel
from .families.layers import bake_masks
from .families.pixelcnn import PixelCNNModel
from .families.vae import VAEModel
from .graphdef import GraphDef, wrap
from .pixelcnn_steps import pixelcnn_step_graphs
from .vectors.flows import VectorFlowModel

ExportableModel = GenerativeModel | VectorFlowModel

OPSET = 18
LIKELIHOOD_RTOL = 1e-4  # log-likelihoods: relative, per row
# Samples, latents, reconstructions, logits: absolute on tensors of unit scale, else relative
# to the tensor's largest magnitude. Float32 layers err in proportion to the values they
# carry, so a deep 28×28 flow's latents (|z| up to 10.6) differed by 1.07e-4 between ONNX
# Runtime and eager torch at an element near 0: 1e-5 of the tensor's scale, not a bug.
VALUE_TOL = 1e-4

log = logging.getLogger("genserve.export")
# The exporter warns on every export that torchvision's ops are not registered; noise here.
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


class ExportError(RuntimeError):
    """An export failed its checks (symbolic axes, parity, round trip)."""


def graph_defs(model: ExportableModel) -> list[GraphDef]:
    """The graphs of DESIGN.md's contract for this model's family.

    Data inputs are float32 in level units; labels are int64; unconditional graphs omit y.
    Vector flows define their own (standardised vectors, labels, context).
    """
    if isinstance(model, VectorFlowModel | DiffusionModel):  # families that define their own
        return model.graph_defs()
    C, H, W = model.spec.shape
    K = model.spec.levels
    cond = model.conditional
    img = ["batch", C, H, W]
    y = [TensorSpec(name="y", dtype="int64", shape=["batch"])] if cond else []

    def ins(first: TensorSpec, *rest: TensorSpec) -> list[TensorSpec]:
        return [first, *y, *rest]

    def with_y(fn: Callable[..., Any]) -> Callable[..., Any]:
        # conditional graphs take (data, y, ...); unconditional ones (data, ...)
        if cond:
            return fn
        return lambda m, a, *rest: fn(m, a, None, *rest)

    x_in = TensorSpec(name="x", dtype="float32", shape=img)
    defs: list[GraphDef] = []
    if isinstance(model, FlowModel):
        defs = [
            GraphDef(
                "log_prob",
                "log density of dequantized x (level units, x + u with u in [0,1)) in nats",
                wrap(model, with_y(lambda m, x, yy: m.log_prob(x, yy)), 1 + cond),
                ins(x_in),
                [TensorSpec(name="log_prob", dtype="float32", shape=["batch"])],
                ("log_prob",),
            ),
            GraphDef(
                "forward",
                "standardised latent z = f(x) of dequantized x; N(0, I) under the model",
                wrap(model, with_y(lambda m, x, yy: m(x, yy)[0]), 1 + cond),
                ins(x_in),
                [TensorSpec(name="z", dtype="float32", shape=img)],
            ),
            GraphDef(
                "inverse",
                "x = f^-1(z): continuous level units in [0, K); floor gives data",
                wrap(model, with_y(lambda m, z, yy: m.inverse(z, yy)), 1 + cond),
                ins(TensorSpec(name="z", dtype="float32", shape=img)),
                [TensorSpec(name="x", dtype="float32", shape=img)],
            ),
        ]
    elif isinstance(model, VAEModel):
        dz = model.cfg.latent
        defs = [
            GraphDef(
                "encode",
                "posterior q(z|x): mean and log-variance",
                wrap(model, with_y(lambda m, x, yy: m.encode(x, yy)), 1 + cond),
                ins(x_in),
                [
                    TensorSpec(name="mu", dtype="float32", shape=["batch", dz]),
                    TensorSpec(name="logvar", dtype="float32", shape=["batch", dz]),
                ],
            ),
            GraphDef(
                "decode",
                "p(x|z): per-pixel logits over the K levels",
                wrap(model, with_y(lambda m, z, yy: m.decode(z, yy)), 1 + cond),
                ins(TensorSpec(name="z", dtype="float32", shape=["batch", dz])),
                [TensorSpec(name="logits", dtype="float32", shape=["batch", C, H, W, K])],
            ),
            GraphDef(
                "log_weights",
                "importance log-weights log p(x,z_k) - log q(z_k|x), z_k = mu + sigma * eps_k",
                wrap(model, with_y(lambda m, x, yy, e: m.log_weights(x, yy, e)), 2 + cond),
                ins(x_in, TensorSpec(name="eps", dtype="float32", shape=["batch", "samples", dz])),
                [TensorSpec(name="log_w", dtype="float32", shape=["batch", "samples"])],
                ("log_w",),
            ),
        ]
    elif isinstance(model, GANModel):
        dz = model.cfg.latent
        defs = [
            GraphDef(
                "generate",
                "x = G(z) (EMA generator): continuous level units in [0, K); floor gives data",
                wrap(model, with_y(lambda m, z, yy: m.generate(z, yy)), 1 + cond),
                ins(TensorSpec(name="z", dtype="float32", shape=["batch", dz])),
                [TensorSpec(name="x", dtype="float32", shape=img)],
            )
        ]
    elif isinstance(model, PixelCNNModel):
        defs = [
            GraphDef(
                "logits",
                "per-pixel logits over the K levels; position i depends only on pixels before i",
                wrap(model, with_y(lambda m, x, yy: m.logits(x, yy)), 1 + cond),
                ins(x_in),
                [TensorSpec(name="logits", dtype="float32", shape=["batch", C, H, W, K])],
            ),
            *pixelcnn_step_graphs(model),
        ]
    else:  # pragma: no cover
        raise ExportError(f"no graphs defined for {type(model).__name__}")
    return defs


def example_inputs(
    g: GraphDef,
    batch: int,
    samples: int,
    x: Tensor,
    y: Tensor | None,
    gen: torch.Generator,
    c: Tensor | None = None,
    dequantize: bool = True,
) -> tuple[Tensor, ...]:
    """Inputs for a graph: real held-out data (and context) where it takes them, noise elsewhere."""
    if g.example is not None:
        return g.example(batch, x, y, gen)
    out: list[Tensor] = []
    for t in g.inputs:
        shape = [batch if d == "batch" else samples if d == "samples" else int(d) for d in t.shape]
        if t.name == "y":
            assert y is not None
            out.append(y[:batch].to(torch.long))
        elif t.name == "c":
            assert c is not None
            out.append(c[:batch].to(torch.float32))
        elif t.name == "x":
            xb = x[:batch].to(torch.float32)
            if dequantize and g.name in ("log_prob", "forward"):  # image flows see dequantized data
                xb = xb + torch.rand(xb.shape, generator=gen)
            out.append(xb)
        else:
            out.append(torch.randn(shape, generator=gen))
    return tuple(out)


def prepare_for_export(model: ExportableModel) -> ExportableModel:
    """A CPU copy in eval mode, masks baked into weights, cached inverses refreshed."""
    m = copy.deepcopy(model).cpu()
    bake_masks(m)
    m.eval()  # refreshes every InvConv1x1's cached inverse
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _dims(tensor_type: Any) -> list[int | str]:
    return [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]


def _export_onnx(g: GraphDef, example: tuple[Tensor, ...], path: Path) -> None:
    import onnx

    batch = torch.export.Dim("batch")
    samples = torch.export.Dim("samples")
    # One entry per positional input, in order (the modules' parameter names vary).
    dynamic: tuple[Any, ...] = tuple(
        {i: (batch if d == "batch" else samples) for i, d in enumerate(t.shape) if d in ("batch", "samples")}
        for t in g.inputs
    )
    forward = inspect.signature(g.module.forward).parameters.values()
    if any(p.kind is p.VAR_POSITIONAL for p in forward):  # forward(*inputs): one argument
        dynamic = (dynamic,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            g.module,
            example,
            str(path),
            input_names=g.input_names(),
            output_names=g.output_names(),
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
            dynamo=True,
            optimize=g.optimize,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    # The dynamo exporter can silently specialise an axis marked dynamic: assert them all.
    by_name = {i.name: i for i in proto.graph.input}
    for t in g.inputs:
        got = _dims(by_name[t.name].type.tensor_type)
        for want, have in zip(t.shape, got, strict=True):
            if isinstance(want, str) and not isinstance(have, str):
                raise ExportError(f"{g.name}.{t.name}: axis {want!r} was fixed to {have} by the exporter")
            if isinstance(want, int) and have != want:
                raise ExportError(f"{g.name}.{t.name}: expected {t.shape}, exported {got}")


def _export_torchscript(g: GraphDef, example: tuple[Tensor, ...], path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(g.module, example, check_trace=False)  # type: ignore[no-untyped-call]
        # Freezing inlines the weights the graph uses and drops the rest (a GAN's
        # discriminator, a flow's unused priors), so the archive holds one graph's worth.
        frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, str(path))


def export_graphs(
    model: ExportableModel,
    folder: Path,
    x_held_out: Tensor,
    y_held_out: Tensor | None,
    c_held_out: Tensor | None = None,
) -> tuple[list[GraphSpec], dict[str, dict[str, float]]]:
    """Write `<graph>.onnx` and `<graph>.pt` for every graph into `folder` and check parity.

    Held-out data feed the data inputs: integer images, or a vector model's standardised
    vectors (`c_held_out`: their standardised context).

    Returns the graph specs for the manifest and the measured parity gaps
    {graph: {"onnx": gap, "torchscript": gap}} (relative per row for likelihoods, else
    relative to the tensor's largest magnitude, or absolute where that is under 1).
    """
    import onnxruntime as ort

    m = prepare_for_export(model)
    gen = torch.Generator().manual_seed(0)
    specs: list[GraphSpec] = []
    gaps: dict[str, dict[str, float]] = {}
    for g in graph_defs(m):
        dequantize = not isinstance(m, VectorFlowModel)
        trace_in = example_inputs(g, 2, 3, x_held_out, y_held_out, gen, c_held_out, dequantize)
        onnx_path, ts_path = folder / f"{g.name}.onnx", folder / f"{g.name}.pt"
        _export_onnx(g, trace_in, onnx_path)
        _export_torchscript(g, trace_in, ts_path)

        # Parity on a batch (and sample count) the export never saw.
        check_in = example_inputs(
            g, min(16, len(x_held_out)), 5, x_held_out, y_held_out, gen, c_held_out, dequantize
        )
        with torch.no_grad():
            eager = _as_tuple(g.module(*check_in))
        feeds = {n: t.numpy() for n, t in zip(g.input_names(), check_in, strict=True)}
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        via_onnx = session.run(g.output_names(), feeds)
        scripted = torch.jit.load(str(ts_path))  # type: ignore[no-untyped-call]
        with torch.no_grad():
            via_ts = _as_tuple(scripted(*check_in))
        gaps[g.name] = {
            "onnx": parity_gap(g, eager, [torch.from_numpy(a) for a in via_onnx]),
            "torchscript": parity_gap(g, eager, via_ts),
        }
        for fmt, gap in gaps[g.name].items():
            limit = LIKELIHOOD_RTOL if g.likelihood_outputs else VALUE_TOL
            if not gap <= limit:
                raise ExportError(
                    f"{g.name} via {fmt} differs from eager torch by {gap:.3g} (limit {limit:g})"
                )
        specs.append(
            GraphSpec(
                name=g.name,
                description=g.description,
                inputs=g.inputs,
                outputs=g.outputs,
                files={"onnx": onnx_path.name, "torchscript": ts_path.name},
            )
        )
        log.info("exported %s: parity %s", g.name, gaps[g.name])
    if isinstance(m, FlowModel):
        _check_flow_round_trip(folder, m, x_held_out, y_held_out)
    return specs, gaps


def _check_flow_round_trip(folder: Path, m: FlowModel, x: Tensor, y: Tensor | None) -> None:
    """x -> z -> x through the exported ONNX graphs: catches a stale cached inverse."""
    import onnxruntime as ort

    fwd = ort.InferenceSession(str(folder / "forward.onnx"), providers=["CPUExecutionProvider"])
    inv = ort.InferenceSession(str(folder / "inverse.onnx"), providers=["CPUExecutionProvider"])
    xb = (x[:16].to(torch.float32) + 0.5).numpy()
    extra = {} if y is None else {"y": y[:16].numpy().astype(np.int64)}
    (z,) = fwd.run(["z"], {"x": xb, **extra})
    (back,) = inv.run(["x"], {"z": z, **extra})
    err = float(np.abs(back - xb).max())
    if err > 1e-2:
        raise ExportError(f"flow round trip x -> z -> x is off by {err:.3g} level units")


def _as_tuple(out: Any) -> tuple[Tensor, ...]:
    return tuple(out) if isinstance(out, tuple | list) else (out,)


def parity_gap(g: GraphDef, ref: tuple[Tensor, ...], other: tuple[Tensor, ...] | list[Tensor]) -> float:
    """How far `other` is from the eager outputs `ref`, in the units export_graphs checks."""
    worst = 0.0
    for spec, a, b in zip(g.outputs, ref, other, strict=True):
        a64, b64 = a.double(), b.double()
        if not torch.isfinite(b64).all():
            return float("inf")
        if spec.name in g.likelihood_outputs:
            worst = max(worst, float(((a64 - b64).abs() / a64.abs().clamp_min(1.0)).max()))
        else:
            scale = max(1.0, float(a64.abs().max())) if a64.numel() else 1.0
            worst = max(worst, float((a64 - b64).abs().max()) / scale)
    return worst


class EagerBackend:
    """The service's Backend protocol over eager torch graph modules (for parity tests)."""

    name = "eager"
    device = "cpu"
    lanes = 1

    def __init__(self, model: ExportableModel) -> None:
        self._graphs = {g.name: g for g in graph_defs(prepare_for_export(model))}

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        g = self._graphs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in g.input_names()]
        with torch.no_grad():
            outs = _as_tuple(g.module(*args))
        return {n: o.numpy() for n, o in zip(g.output_names(), outs, strict=True)}

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(graph, inputs)

    def close(self) -> None:
        self._graphs.clear()

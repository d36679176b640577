"""Runtime backends that execute a model version's graphs: ONNX Runtime and TorchScript.

A backend maps named numpy inputs to named numpy outputs for one graph. It knows nothing
about families; the engines (service.engine) build the serving logic on top of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from .manifest import GraphSpec
from .store import ModelVersion

log = logging.getLogger("genserve.runtime")

BackendName = Literal["onnxruntime", "torchscript"]
DeviceRequest = Literal["auto", "cpu", "cuda"]
Arrays = dict[str, np.ndarray]


class DeviceUnavailableError(RuntimeError):
    """`device=cuda` was asked for but the backend cannot use a GPU here."""


class Backend(Protocol):
    """Executes the graphs of one model version.

    `run` is one call on every runtime thread. `run_lane` is one call on a lane's share of
    them; up to `lanes` lane calls may run at once (data parallelism over rows). Backends
    that cannot split their threads have one lane, and `run_lane` is `run`.
    """

    name: str
    device: str
    lanes: int

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Run `graph` on named inputs; returns its outputs by name."""
        ...

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Run `graph` on one lane's threads (thread-safe for `lanes` concurrent calls)."""
        ...

    def close(self) -> None:
        """Release sessions and device memory."""
        ...


def onnx_cuda_available() -> bool:
    """Whether ONNX Runtime has a CUDA execution provider (onnxruntime-gpu) installed."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def torch_cuda_available() -> bool:
    """Whether torch can use a GPU."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional for ONNX-only serving
        return False
    return bool(torch.cuda.is_available())


def resolve_device(backend: BackendName, requested: DeviceRequest) -> str:
    """'auto' -> the GPU when this backend can use one, else the CPU; 'cuda' without a GPU fails."""
    available = onnx_cuda_available() if backend == "onnxruntime" else torch_cuda_available()
    if requested == "cuda" and not available:
        hint = (
            "install onnxruntime-gpu and make a CUDA device visible"
            if backend == "onnxruntime"
            else "install a CUDA build of torch and make a CUDA device visible"
        )
        raise DeviceUnavailableError(f"device 'cuda' requested but {backend} sees no usable GPU ({hint})")
    if requested == "cpu":
        return "cpu"
    return "cuda" if available else "cpu"


@dataclass
class OnnxBackend:
    """ONNX Runtime sessions, one per graph (files in `folder`).

    With `lanes` > 1 on the CPU each graph gets a second session with `threads // lanes`
    intra-op threads, shared by the lanes (ONNX Runtime sessions are safe to run
    concurrently). Small convolutional graphs scale poorly over intra-op threads: on two
    cores, two one-thread calls at once score 1.2x (VAE) to 1.7x (flow) the rows per
    second of one two-thread call (docs/benchmarks.md). The all-thread session stays for
    single rows, where one call alone is faster on every thread.
    """

    graphs: Sequence[GraphSpec]
    folder: Path
    device: str
    threads: int
    lanes: int = 1
    name: str = "onnxruntime"

    def __post_init__(self) -> None:
        if self.device == "cuda":
            self.lanes = 1  # one device stream: the batcher's merged call is the parallelism
        self.lanes = max(1, min(self.lanes, self.threads))
        self._sessions = self._open(self.threads)
        self._lane_sessions = self._open(self.threads // self.lanes) if self.lanes > 1 else self._sessions
        self._outputs = {g.name: [o.name for o in g.outputs] for g in self.graphs}

    def _open(self, threads: int) -> dict[str, Any]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Worker threads spin between the operators of a call (fast) but sleep when the
        # call ends: left spinning between requests they kept 1.8 of 2 cores busy at one
        # request at a time, starving the event loop and other processes (W2 p99 4.7 -> 2.3 ms).
        opts.add_session_config_entry("session.force_spinning_stop", "1")
        providers: list[Any] = ["CPUExecutionProvider"]
        if self.device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
        sessions: dict[str, Any] = {}
        for graph in self.graphs:
            path = self.folder / graph.files["onnx"]
            session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
            if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
                raise DeviceUnavailableError(f"ONNX Runtime could not place {graph.name} on the GPU")
            sessions[graph.name] = session
        return sessions

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Run one graph on every thread."""
        outs = self._sessions[graph].run(self._outputs[graph], dict(inputs))
        return dict(zip(self._outputs[graph], outs, strict=True))

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Run one graph on one lane's threads."""
        outs = self._lane_sessions[graph].run(self._outputs[graph], dict(inputs))
        return dict(zip(self._outputs[graph], outs, strict=True))

    def close(self) -> None:
        """Drop the sessions."""
        self._sessions.clear()
        self._lane_sessions.clear()


@dataclass
class TorchScriptBackend:
    """TorchScript modules, one per graph (needs torch, never the model code).

    One lane: torch's intra-op thread pool is process-wide, so concurrent calls would
    oversubscribe the cores rather than split them.
    """

    graphs: Sequence[GraphSpec]
    folder: Path
    device: str
    threads: int
    name: str = "torchscript"
    lanes: int = 1

    def __post_init__(self) -> None:
        import torch

        torch.set_num_threads(self.threads)
        self._torch = torch
        self._modules: dict[str, Any] = {}
        self._specs: dict[str, GraphSpec] = {}
        for graph in self.graphs:
            path = self.folder / graph.files["torchscript"]
            module = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
            module.eval()
            self._modules[graph.name] = module
            self._specs[graph.name] = graph

    def run(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """Run one graph (inputs in the manifest's order)."""
        torch = self._torch
        spec = self._specs[graph]
        args = [torch.from_numpy(np.ascontiguousarray(inputs[t.name])).to(self.device) for t in spec.inputs]
        with torch.inference_mode():
            out = self._modules[graph](*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return {t.name: o.detach().cpu().numpy() for t, o in zip(spec.outputs, outs, strict=True)}

    def run_lane(self, graph: str, inputs: Mapping[str, np.ndarray]) -> Arrays:
        """The one lane is the whole backend."""
        return self.run(graph, inputs)

    def close(self) -> None:
        """Drop the modules and cached device memory."""
        self._modules.clear()
        if self.device == "cuda":
            self._torch.cuda.empty_cache()


def open_backend(
    graphs: Sequence[GraphSpec],
    folder: Path,
    backend: BackendName,
    device: DeviceRequest,
    threads: int,
    lanes: int = 1,
) -> Backend:
    """Open the graph files in `folder` with the chosen backend on the resolved device.

    `lanes`: how many calls may run at once on a share of the threads each (ONNX Runtime
    on the CPU only; other backends and devices have one).
    """
    where = resolve_device(backend, device)
    if backend == "onnxruntime":
        return OnnxBackend(graphs, folder, where, threads, lanes)
    if backend == "torchscript":
        return TorchScriptBackend(graphs, folder, where, threads)
    raise ValueError(f"unknown backend {backend!r}")


def load_backend(
    version: ModelVersion, backend: BackendName, device: DeviceRequest, threads: int, lanes: int = 1
) -> Backend:
    """Open a verified store version in the chosen backend on the resolved device."""
    impl = open_backend(version.manifest.graphs, version.path, backend, device, threads, lanes)
    log.info(
        "loaded %s/%s with %s on %s (%d threads, %d lanes)",
        version.name,
        version.version,
        impl.name,
        impl.device,
        threads,
        impl.lanes,
    )
    return impl

"""The Open Inference Protocol over gRPC: the same data plane, tensors as raw bytes.

Inputs come as `raw_input_contents` (one entry per input, in order) or as typed
`contents`; outputs always go back as `raw_output_contents`, which every OIP client reads
(tritonclient reads nothing else). Runs on the HTTP server's event loop, so it shares the
batcher, the limits and the metrics.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np

from ...api.auth import token_matches
from ...core import Call
from ...errors import (
    GenserveError,
    InvalidInputError,
    MalformedBodyError,
    ManagementOffError,
    NotReadyError,
)
from ...lifecycle import Lifecycle
from ...metrics import Metrics, StageTimer
from ...model_control import ModelControl
from ..dataplane import DataPlane, InferRequest, RequestedOutput
from ..parameters import LoadParameters, UnloadParameters, parse_parameters
from ..tensors import DTYPES, InputTensor, array_from_bytes, datatype_of, raw_bytes
from .compile import stubs

pb, pb_grpc = stubs()
T = TypeVar("T")

# genserve's HTTP statuses -> gRPC codes (the protocol's own pairing: bad input is
# INVALID_ARGUMENT, an unknown model NOT_FOUND, a server that cannot take it UNAVAILABLE).
_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# Typed contents field per datatype (FP16 travels only as raw bytes).
_CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def grpc_code(exc: GenserveError) -> grpc.StatusCode:
    """The gRPC status of one of the service's errors."""
    return _CODES.get(exc.status, grpc.StatusCode.INTERNAL)


def _parameter(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _parameters(mapping: Any) -> dict[str, Any]:
    return {k: _parameter(v) for k, v in mapping.items()}


def _to_parameter(value: Any) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def decode_infer(request: Any) -> InferRequest:
    """A ModelInferRequest as the data plane's InferRequest."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise MalformedBodyError(
            f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} inputs "
            "(give one per input)"
        )
    inputs: dict[str, InputTensor] = {}
    for i, t in enumerate(request.inputs):
        name, datatype, shape = t.name, t.datatype, [int(d) for d in t.shape]
        if not name:
            raise InvalidInputError.field([f"inputs[{i}]", "name"], "is required")
        if name in inputs:
            raise InvalidInputError.field([name], "is given twice")
        if datatype not in DTYPES:
            raise InvalidInputError.field([name, "datatype"], f"must be one of {', '.join(DTYPES)}")
        if any(d < 0 for d in shape):
            raise InvalidInputError.field([name, "shape"], "must be non-negative integers")
        if raw:
            if t.HasField("contents"):
                raise InvalidInputError.field(
                    [name, "contents"], "give raw_input_contents or contents, not both"
                )
            data = array_from_bytes(raw[i], datatype, shape, name)
        else:
            field = _CONTENTS.get(datatype)
            if field is None:
                raise InvalidInputError.field([name], f"{datatype} travels only as raw_input_contents")
            values = getattr(t.contents, field)
            count = int(np.prod(shape, dtype=np.int64))
            if len(values) != count:
                raise InvalidInputError.field(
                    [name], f"holds {len(values)} values; shape {shape} needs {count}"
                )
            data = np.asarray(values, dtype=DTYPES[datatype]).reshape(shape)
        inputs[name] = InputTensor(name, datatype, shape, data, _parameters(t.parameters))
    if not inputs:
        raise InvalidInputError.field(["inputs"], "is required: a non-empty list of tensors")
    outputs = None
    if len(request.outputs):
        outputs = [RequestedOutput(o.name, _parameters(o.parameters)) for o in request.outputs]
    return InferRequest(inputs, _parameters(request.parameters), outputs, request.id or None)


class InferenceServicer:
    """GRPCInferenceService over the data plane."""

    def __init__(
        self,
        plane: DataPlane,
        lifecycle: Lifecycle,
        metrics: Metrics,
        token: str | None = None,
        control: ModelControl | None = None,
    ) -> None:
        self.plane = plane
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.token = token
        self.control = control  # explicit model control only: the repository RPCs

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        """UNAUTHENTICATED without the server's token (`authorization: Bearer <token>` metadata)."""
        if self.token is None:
            return
        sent = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        if not token_matches(sent if isinstance(sent, str) else None, self.token):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "send the server's token: metadata authorization: Bearer <token>",
            )

    async def _answer(
        self, rpc: str, context: grpc.aio.ServicerContext, work: Callable[[dict[str, str]], Awaitable[T]]
    ) -> T:
        """Run one RPC; a service error becomes its gRPC status; count it like HTTP requests."""
        labels = {"model": "-", "version": "-"}
        start, code = time.perf_counter(), "OK"
        try:
            await self._authorize(context)
            return await work(labels)
        except grpc.aio.AbortError:
            code = "UNAUTHENTICATED"
            raise
        except GenserveError as exc:
            code = grpc_code(exc).name
            await context.abort(grpc_code(exc), exc.detail)
            raise  # pragma: no cover - abort raises
        finally:
            endpoint = f"grpc:{rpc}"
            self.metrics.requests.labels(labels["model"], labels["version"], endpoint, code).inc()
            if rpc == "ModelInfer":
                self.metrics.latency.labels(labels["model"], labels["version"], endpoint).observe(
                    time.perf_counter() - start
                )

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self.lifecycle.accepting)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)  # not a probe: it names a model
        try:
            self.plane.resolve(request.name, request.version or None)
        except GenserveError:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.lifecycle.accepting)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._authorize(context)
        meta = self.plane.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(_: dict[str, str]) -> Any:
            md = self.plane.model_metadata(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=md["name"],
                versions=md["versions"],
                platform=md["platform"],
                inputs=[
                    tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["inputs"]
                ],
                outputs=[
                    tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in md["outputs"]
                ],
                properties=md["properties"],
            )

        return await self._answer("ModelMetadata", context, work)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(labels: dict[str, str]) -> Any:
            if not self.lifecycle.accepting:
                raise _not_accepting()
            call = Call(StageTimer(self.metrics, "grpc:ModelInfer"))
            model, operation = self.plane.resolve(request.model_name, request.model_version or None)
            labels.update(model=model.name, version=str(model.version.version))
            answer = await self.plane.infer(model, operation, decode_infer(request), call)
            out = pb.ModelInferResponse(
                model_name=answer.model_name,
                model_version=answer.model_version,
                id=answer.id or "",
                parameters={k: _to_parameter(v) for k, v in answer.parameters.items()},
            )
            for name, arr in answer.outputs.items():
                out.outputs.add(name=name, datatype=datatype_of(arr), shape=list(arr.shape))
                out.raw_output_contents.append(raw_bytes(arr))
            call.stages.done(model.name, model.version.version, "serialize")
            return out

        return await self._answer("ModelInfer", context, work)

    def _repository(self) -> ModelControl:
        if self.control is None:
            raise ManagementOffError(
                "model management is off: start the server with GENSERVE_MODEL_CONTROL=explicit"
            )
        if self.lifecycle.draining:
            raise _not_accepting()
        return self.control

    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(_: dict[str, str]) -> Any:
            entries = self._repository().index(ready_only=request.ready)
            index = pb.RepositoryIndexResponse.ModelIndex
            return pb.RepositoryIndexResponse(
                models=[
                    index(name=e.name, version=e.version, state=e.state, reason=e.reason) for e in entries
                ]
            )

        return await self._answer("RepositoryIndex", context, work)

    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(_: dict[str, str]) -> Any:
            control = self._repository()
            params = parse_parameters(LoadParameters, _parameters(request.parameters))
            await control.load(request.model_name, params.version)
            return pb.RepositoryModelLoadResponse()

        return await self._answer("RepositoryModelLoad", context, work)

    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def work(_: dict[str, str]) -> Any:
            control = self._repository()
            parse_parameters(UnloadParameters, _parameters(request.parameters))
            await control.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer("RepositoryModelUnload", context, work)


def _not_accepting() -> GenserveError:
    return NotReadyError("the server is not ready, or is shutting down; retry shortly or on another replica")


async def start_grpc(
    plane: DataPlane,
    lifecycle: Lifecycle,
    metrics: Metrics,
    host: str,
    port: int,
    max_bytes: int,
    token: str | None = None,
    control: ModelControl | None = None,
) -> grpc.aio.Server:
    """A gRPC server on host:port over the data plane, started on the running event loop."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", -1),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(plane, lifecycle, metrics, token, control), server
    )
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server


__all__ = ["InferenceServicer", "grpc_code", "start_grpc"]

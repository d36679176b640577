"""The Open Inference Protocol over HTTP (/v2), with the binary tensor data extension.

Thin: the body becomes an InferRequest, the data plane answers, the answer becomes JSON
or JSON plus binary tensors. The body is read raw, whatever its Content-Type: tritonclient
sends none, and its asyncio client labels JSON as application/octet-stream; the
Inference-Header-Content-Length header alone says whether binary tensors follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api.execution import rest_call
from ..errors import InvalidInputError, MalformedBodyError, NotReadyError
from .dataplane import DataPlane, InferRequest, InferResponse, RequestedOutput
from .schemas import (
    InferenceRequest,
    InferenceResponse,
    Live,
    ModelMetadata,
    ModelReady,
    Ready,
    ServerMetadata,
    errors,
    json_body,
)
from .tensors import datatype_of, raw_bytes, read_inputs

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "content": {"application/octet-stream": {}},
        "description": "The outputs: JSON, or (binary_data) the JSON header and the tensors' bytes after it",
    },
    **errors(503, 504),
}
INFER_BODY = json_body(InferenceRequest, binary=True)
HEADER_LENGTH = "inference-header-content-length"


def _plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.oip
    return plane


def _json(payload: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(payload), status_code=status, media_type="application/json")


@router.get(
    "",
    summary="Server metadata: name, version, extensions",
    responses={200: {"model": ServerMetadata}, **errors()},
)
async def server_metadata(request: Request) -> Response:
    return _json(_plane(request).server_metadata())


@router.get("/health/live", summary="The server is live", responses={200: {"model": Live}})
async def live() -> Response:
    return _json({"live": True})


@router.get(
    "/health/ready",
    summary="The server is ready for inference",
    responses={200: {"model": Ready}, **errors(503)},
)
async def ready(request: Request) -> Response:
    if not request.app.state.lifecycle.accepting:
        raise NotReadyError("the server is not ready (see /health/ready for the reasons)")
    return _json({"ready": True})


@router.get(
    "/models/{name}",
    summary="Model metadata: versions, platform, input and output tensors",
    responses={200: {"model": ModelMetadata}, **errors()},
)
async def model_metadata(request: Request, name: str) -> Response:
    return _json(_plane(request).model_metadata(name, None))


@router.get(
    "/models/{name}/versions/{version}",
    summary="Metadata of one model version",
    responses={200: {"model": ModelMetadata}, **errors()},
)
async def version_metadata(request: Request, name: str, version: str) -> Response:
    return _json(_plane(request).model_metadata(name, version))


@router.get(
    "/models/{name}/ready", summary="The model is ready", responses={200: {"model": ModelReady}, **errors()}
)
async def model_ready(request: Request, name: str) -> Response:
    _plane(request).resolve(name, None)  # 404 when it is not loaded
    return _json({"name": name, "ready": True})


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="The model version is ready",
    responses={200: {"model": ModelReady}, **errors()},
)
async def version_ready(request: Request, name: str, version: str) -> Response:
    _plane(request).resolve(name, version)
    return _json({"name": name, "ready": True})


@router.post(
    "/models/{name}/infer",
    summary="Inference on the model's highest loaded version",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on one model version",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_BODY,
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    call = rest_call(request, "/v2/infer", None)
    body = await request.body()
    plane = _plane(request)
    model, operation = plane.resolve(name, version)  # an unknown model is a 404 whatever the body
    request.state.model = model.name
    request.state.model_version = str(model.version.version)
    decoded = decode(body, request.headers.get(HEADER_LENGTH))
    answer = await plane.infer(model, operation, decoded, call)
    response = encode(answer, bool(decoded.parameters.get("binary_data_output") is True))
    call.stages.done(model.name, model.version.version, "serialize")
    return response


def decode(body: bytes, header_length: str | None) -> InferRequest:
    """The JSON header (all of the body, or its first Inference-Header-Content-Length bytes)
    and the binary tensors after it."""
    if header_length is None:
        head_bytes, tail = body, memoryview(b"")
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise MalformedBodyError(
                f"Inference-Header-Content-Length must be a byte count within the body's {len(body)} bytes"
            )
        cut = int(header_length)
        head_bytes, tail = body[:cut], memoryview(body)[cut:]
    try:
        head = orjson.loads(head_bytes)
    except orjson.JSONDecodeError:
        raise MalformedBodyError("the inference request header is not valid JSON") from None
    if not isinstance(head, dict):
        raise MalformedBodyError("the inference request must be a JSON object")
    params = head.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError.field(["parameters"], "must be an object")
    outputs = head.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidInputError.field(["outputs"], "must be a list of {name, parameters}")
        requested = []
        for i, out in enumerate(outputs):
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise InvalidInputError.field(["outputs", i], "must be an object with a name")
            out_params = out.get("parameters") or {}
            if not isinstance(out_params, dict):
                raise InvalidInputError.field(["outputs", i, "parameters"], "must be an object")
            requested.append(RequestedOutput(out["name"], out_params))
    request_id = head.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError.field(["id"], "must be a string")
    return InferRequest(read_inputs(head, tail), params, requested, request_id)


def encode(answer: InferResponse, binary_default: bool) -> Response:
    """JSON, or (when any output is asked for as binary) the JSON header and the binary
    tensors after it, with Inference-Header-Content-Length."""
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in answer.outputs.items():
        asked = answer.requested.get(name)
        flag = asked.parameters.get("binary_data") if asked is not None else None
        binary = flag if isinstance(flag, bool) else binary_default
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(arr), "shape": list(arr.shape)}
        if binary:
            blob = raw_bytes(arr)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = np.ascontiguousarray(arr).reshape(-1)
        outputs.append(entry)
    head: dict[str, Any] = {"model_name": answer.model_name, "model_version": answer.model_version}
    if answer.id is not None:
        head["id"] = answer.id
    head["parameters"] = answer.parameters
    head["outputs"] = outputs
    header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *blobs]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

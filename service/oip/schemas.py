"""OpenAPI documentation of the /v2 routes: the Open Inference Protocol's JSON objects.

Documentation and contract tests only (the property-based run over the OpenAPI document
checks every answer against these): the fronts read bodies raw, because a body may be a
JSON header followed by binary tensors, and a pydantic pass over every tensor would cost
the single-row path its latency.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .tensors import DATATYPES

Datatype = Literal[DATATYPES]  # type: ignore[valid-type]
Parameters = dict[str, bool | int | float | str]


class OipError(BaseModel):
    """Every failure under /v2 (and gRPC's status message)."""

    error: str = Field(description="What went wrong, naming the tensor, parameter or model.")


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class Live(BaseModel):
    live: bool


class Ready(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for the batch axis.")


class ModelMetadata(BaseModel):
    name: str = Field(description="`<model>.<operation>`.")
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    properties: dict[str, str]


class InputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = Field(
        default=None, description="`binary_data_size`: the tensor's bytes follow the JSON header."
    )
    data: Any = Field(default=None, description="Row-major values, flat or nested (absent when binary).")


class RequestedOutput(BaseModel):
    name: str
    parameters: Parameters | None = Field(default=None, description="`binary_data`: send it as bytes.")


class InferenceRequest(BaseModel):
    id: str | None = None
    parameters: Parameters | None = Field(
        default=None,
        description="seed, temperature, importance_samples, alpha, method, all_outlier_methods, fdr, "
        "check_context, particles, timeout (µs), binary_data_output (docs/api.md).",
    )
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None


class OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[OutputTensor]


class IndexLine(BaseModel):
    name: str
    version: str | None = None
    state: Literal["READY", "UNLOADING", "UNAVAILABLE"]
    reason: str


class Empty(BaseModel):
    """A successful load or unload: `{}`."""


class RepositoryRequest(BaseModel):
    parameters: Parameters | None = Field(
        default=None,
        description="load: `version` (genserve's: that version, pinned); unload: `unload_dependents`.",
    )


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the OIP error body. `4XX` also keeps FastAPI from
    documenting a 422 the /v2 routes never send (OIP's bad requests are 400s)."""
    out: dict[int | str, dict[str, Any]] = {"4XX": {"model": OipError, "description": "A bad request"}}
    for status in statuses:
        out[status] = {"model": OipError, "description": "Not ready, overloaded or past the deadline"}
    return out


def json_body(model: type[BaseModel], required: bool = True, binary: bool = False) -> dict[str, Any]:
    """An `openapi_extra` request body (the routes read the body themselves)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if binary:
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": required, "content": content}}

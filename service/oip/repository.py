"""The OIP model-repository extension over HTTP (`/v2/repository`): index, load, unload.

Mounted only with GENSERVE_MODEL_CONTROL=explicit (elsewhere these paths are 404), and
that mode cannot start without an access token, so every call here carries it. Thin: the
body's parameters are validated, model_control does the work.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from ..api.parsing import parse_json
from ..errors import InvalidInputError
from ..model_control import IndexEntry, ModelControl
from .parameters import IndexRequest, LoadParameters, UnloadParameters, parse_parameters
from .schemas import Empty, IndexLine, RepositoryRequest, errors, json_body

router = APIRouter(prefix="/v2/repository", tags=["model management"])


def _control(request: Request) -> ModelControl:
    control: ModelControl = request.app.state.control
    return control


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    return parse_json(raw) if raw.strip() else {}  # tritonclient sends no body to index


def _parameters(body: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(body) - {"parameters"})
    if unknown:
        raise InvalidInputError.field([unknown[0]], "is not a field of this request (only parameters)")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInputError.field(["parameters"], "must be an object")
    return params


def index_json(entries: list[IndexEntry]) -> list[dict[str, str]]:
    """The index as the extension writes it (no version on a model with none loaded)."""
    out = []
    for e in entries:
        line = {"name": e.name, "state": e.state, "reason": e.reason}
        if e.version:
            line["version"] = e.version
        out.append(line)
    return out


@router.post(
    "/index",
    summary="Every model in the store and every loaded version, with its state",
    responses={200: {"model": list[IndexLine]}, **errors()},
    openapi_extra=json_body(IndexRequest, required=False),
)
async def index(request: Request) -> Response:
    asked = parse_parameters(IndexRequest, await _body(request), where=())
    entries = _control(request).index(ready_only=asked.ready)
    return Response(orjson.dumps(index_json(entries)), media_type="application/json")


@router.post(
    "/models/{name}/load",
    summary="Load a model (verified and warmed up before it serves)",
    responses={200: {"model": Empty}, **errors(503)},
    openapi_extra=json_body(RepositoryRequest, required=False),
)
async def load(request: Request, name: str) -> Response:
    params = parse_parameters(LoadParameters, _parameters(await _body(request)))
    await _control(request).load(name, params.version)
    return Response(b"{}", media_type="application/json")


@router.post(
    "/models/{name}/unload",
    summary="Unload a model (requests running on it finish first)",
    responses={200: {"model": Empty}, **errors(503)},
    openapi_extra=json_body(RepositoryRequest, required=False),
)
async def unload(request: Request, name: str) -> Response:
    parse_parameters(UnloadParameters, _parameters(await _body(request)))
    await _control(request).unload(name)
    return Response(b"{}", media_type="application/json")

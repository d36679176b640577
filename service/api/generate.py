"""POST /sample, /log-likelihood and /reconstruct: parse, call the engine, shape the response."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..core import ReconstructQuery, ReconstructResult, SampleQuery, SampleResult, ScoreQuery, ScoreResult
from ..core.operations import Operations
from ..engine import SamplerOptions
from ..errors import InvalidInputError, UnsupportedMediaTypeError
from ..imaging import drawable_caption
from ..registry import LoadedModel
from .execution import rest_call
from .parsing import (
    array_from_json,
    array_from_npy,
    arrays_from_npz,
    params_from_query,
    parse_json,
    validate_model,
)
from .schemas import (
    LogLikelihoodRequest,
    LogLikelihoodResponse,
    Problem,
    ReconstructRequest,
    ReconstructResponse,
    SampleRequest,
    SampleResponse,
)

router = APIRouter(tags=["generate"])
NPY = "application/x-npy"
NPZ = "application/x-npz"
PROBLEMS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "content": {"application/problem+json": {}}}
    for code in (400, 404, 413, 415, 422, 503, 504)
}


def npy_query_parameters(cls: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI query parameters of an `application/x-npy` call: the JSON body's fields but
    the arrays, which travel in the body (see `params_from_query`)."""
    schema = cls.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        if name in ("inputs", "mask", "particles"):  # arrays travel in the body; particles need a mask
            continue
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        typed: dict[str, Any]
        if name == "context":
            typed = {"type": "string"}
            note = " One context row for all inputs, comma-separated numbers."
        elif name == "labels" or len(branches) != 1:
            typed = {"type": "string"}
            note = " One label for all rows or a comma-separated list, each an index or a class name."
        else:
            typed = {k: v for k, v in branches[0].items() if k not in ("title", "description")}
            note = ""
        if prop.get("default") is not None:
            typed["default"] = prop["default"]
        # Never `required` here: a JSON call sends every field in its body instead.
        need = "Required" if name in schema.get("required", []) else "Optional"
        text = " ".join(filter(None, [f"{need} with an {NPY} body.", prop.get("description"), note.strip()]))
        out.append({"name": name, "in": "query", "required": False, "description": text, "schema": typed})
    return out


def _operations(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json_body(request: Request) -> dict[str, Any]:
    media = _media_type(request)
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaTypeError(
            f"send Content-Type: application/json (got {media or 'none'})"
            + (
                "; /log-likelihood and /reconstruct also take application/x-npy and application/x-npz"
                if media
                else ""
            )
        )
    return parse_json(await request.body())


def _json(payload: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
        headers=headers,
    )


def _model_for(request: Request, name: str, version: int | None) -> LoadedModel:
    model = _operations(request).model(name, version)
    request.state.model = model.name
    request.state.model_version = str(model.version.version)
    return model


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@router.post(
    "/sample",
    summary="Draw samples",
    responses={200: {"model": SampleResponse, "content": {"image/png": {}, NPY: {}}}, **PROBLEMS},
    openapi_extra={
        "requestBody": {
            "content": {"application/json": {"schema": SampleRequest.model_json_schema()}},
            "required": True,
        }
    },
)
async def sample(request: Request) -> Response:
    """Samples in data units (JSON), as a labelled PNG grid, or as .npy; with the seed used."""
    call = rest_call(request, "/sample", None)
    req = validate_model(SampleRequest, await _json_body(request))
    call.timeout = req.timeout
    model = _model_for(request, req.model, req.version)
    query = SampleQuery(
        n=req.n,
        labels=req.labels,
        context=_optional_array(req.context, "context"),
        seed=req.seed,
        temperature=req.temperature,
        alpha=req.alpha,
        options=SamplerOptions(steps=req.steps, sampler=req.sampler, guidance=req.guidance),
    )
    result = await _operations(request).sample(model, query, call)
    response = _sample_response(result, req.format)
    call.stages.done(model.name, model.version.version, "serialize")
    return response


def _sample_response(result: SampleResult, fmt: str) -> Response:
    """Samples as .npy, a labelled PNG grid, or JSON in data units, with the seed in a header
    (and, for a context check, the smallest context p-value in X-Genserve-Context-P-Value)."""
    model, samples, labels = result.model, result.samples, result.labels
    spec, kind = model.manifest.dataset, model.kind
    headers = {
        "X-Genserve-Seed": str(result.seed),
        "X-Genserve-Model": f"{model.name}/{model.version.version}",
    }
    if result.smallest_context_p_value is not None:
        headers["X-Genserve-Context-P-Value"] = repr(result.smallest_context_p_value)
    if fmt == "npy":
        return Response(_npy_bytes(samples.astype(kind.sample_dtype)), media_type=NPY, headers=headers)
    names = spec.label_names
    if fmt == "png":
        captions = [drawable_caption(names, i) for i in labels] if (labels is not None and names) else None
        return Response(kind.samples_png(samples, captions), media_type="image/png", headers=headers)
    return _json(
        {
            "model": model.name,
            "version": model.version.version,
            "family": model.manifest.family,
            "seed": result.seed,
            "temperature": result.temperature,
            **result.options.used(),
            "shape": list(samples.shape),
            **kind.sample_fields(),
            "labels": None if labels is None else labels.tolist(),
            "label_names": None if labels is None or not names else [names[i] for i in labels],
            "context_check": result.context_rows(),
            "samples": samples,
        },
        headers,
    )


def _optional_array(value: Any, field: str) -> np.ndarray | None:
    return None if value is None else array_from_json(value, field)


async def _inputs_and_params(request: Request, cls: type[Any]) -> tuple[Any, np.ndarray]:
    """(validated request, raw input array) from a JSON body, or an .npy body (the inputs)
    or an .npz body (`inputs` and, per row, `context`) with the other fields in the query."""
    media = _media_type(request)
    if media in (NPY, NPZ):
        params = params_from_query(request.query_params, cls)
        if media == NPY:
            return validate_model(cls, params), array_from_npy(await request.body())
        limit = request.app.state.settings.max_body_bytes
        arrays = arrays_from_npz(await request.body(), ("inputs", "context"), limit)
        if "context" in arrays:
            if "context" in request.query_params:
                raise InvalidInputError.field(
                    ["context"], "send the context in the query or the .npz body, not both"
                )
            params["context"] = arrays["context"]
        if "inputs" not in arrays:
            raise InvalidInputError.field(["inputs"], "is required: an .npz body holds an 'inputs' array")
        return validate_model(cls, params), arrays["inputs"]
    body = await _json_body(request)
    req = validate_model(cls, body)
    return req, array_from_json(body.get("inputs"), "inputs")


@router.post(
    "/log-likelihood",
    summary="Score inputs: log-likelihood, bits/dim, label posterior, outlier verdict",
    responses={200: {"model": LogLikelihoodResponse, "content": {NPZ: {}}}, **PROBLEMS},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": LogLikelihoodRequest.model_json_schema()},
                NPY: {"schema": {"type": "string", "format": "binary"}},
                NPZ: {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        },
        "parameters": npy_query_parameters(LogLikelihoodRequest),
    },
)
async def log_likelihood(request: Request) -> Response:
    """Per row: log-likelihood (nats), bits/dim, and an outlier verdict; for a conditional
    model given no labels, the marginal over labels and the posterior p(y|x). As JSON rows,
    or (format=npz) as named columns."""
    call = rest_call(request, "/log-likelihood", None)
    req, raw = await _inputs_and_params(request, LogLikelihoodRequest)
    call.timeout = req.timeout
    model = _model_for(request, req.model, req.version)
    query = ScoreQuery(
        inputs=raw,
        labels=req.labels,
        context=_optional_array(req.context, "context"),
        importance_samples=req.importance_samples,
        seed=req.seed,
        alpha=req.alpha,
        outlier_method=req.outlier_method,
        all_outlier_methods=req.all_outlier_methods,
        fdr=req.fdr,
        check_context=req.check_context,
    )
    result = await _operations(request).score(model, query, call)
    response = _score_response(result, req.format)
    call.stages.done(model.name, model.version.version, "serialize")
    return response


def _score_response(result: ScoreResult, fmt: str) -> Response:
    """JSON rows; or an .npz of the columns with the facts of the estimate in headers."""
    if fmt == "npz":
        head = result.header()
        headers = {
            "X-Genserve-Model": f"{head['model']}/{head['version']}",
            "X-Genserve-Seed": str(head["seed"]),
            "X-Genserve-Estimator": head["estimator"],
            "X-Genserve-Importance-Samples": str(head["importance_samples"]),
            "X-Genserve-Marginal": "true" if head["marginal"] else "false",
        }
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **result.columns())
        return Response(buf.getvalue(), media_type=NPZ, headers=headers)
    return _json({**result.header(), "results": result.rows()})


@router.post(
    "/reconstruct",
    summary="Reconstruct (VAE, flow) or complete masked inputs (PixelCNN)",
    responses={200: {"model": ReconstructResponse, "content": {"image/png": {}, NPZ: {}}}, **PROBLEMS},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": ReconstructRequest.model_json_schema()},
                NPY: {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        },
        "parameters": npy_query_parameters(ReconstructRequest),
    },
)
async def reconstruct(request: Request) -> Response:
    """VAE: decode(encode(x)) and the latent; flow: the latent and its inverse; PixelCNN:
    the pixels where `mask` is 0 sampled given the known ones (seeded). As JSON, as an
    .npz of the named outputs, or as a PNG of each input beside its output."""
    call = rest_call(request, "/reconstruct", None)
    req, raw = await _inputs_and_params(request, ReconstructRequest)
    call.timeout = req.timeout
    model = _model_for(request, req.model, req.version)
    # With an .npy or .npz body the mask cannot travel (params_from_query refuses it).
    mask = _optional_array(req.mask, "mask") if _media_type(request) not in (NPY, NPZ) else None
    query = ReconstructQuery(
        inputs=raw,
        labels=req.labels,
        context=_optional_array(req.context, "context"),
        mask=mask,
        seed=req.seed,
        particles=req.particles,
        options=SamplerOptions(steps=req.steps, strength=req.strength),
    )
    result = await _operations(request).reconstruct(model, query, call)
    response = _reconstruct_response(result, req.format)
    call.stages.done(model.name, model.version.version, "serialize")
    return response


def _reconstruct_response(result: ReconstructResult, fmt: str) -> Response:
    """JSON with every output; an .npz of the outputs; or a PNG of inputs beside outputs."""
    model, rec = result.model, result.reconstruction
    headers = {"X-Genserve-Model": f"{model.name}/{model.version.version}"}
    if result.seed is not None:
        headers["X-Genserve-Seed"] = str(result.seed)
    if rec.particles is not None:
        headers["X-Genserve-Particles"] = str(rec.particles)
    if result.options.steps is not None:
        headers["X-Genserve-Steps"] = str(result.options.steps)
    if result.options.strength is not None:
        headers["X-Genserve-Strength"] = repr(result.options.strength)
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **result.columns())
        return Response(buf.getvalue(), media_type=NPZ, headers=headers)
    if fmt == "png":
        names = model.manifest.dataset.label_names
        labels = result.labels
        captions = [drawable_caption(names, i) for i in labels] if (labels is not None and names) else None
        png = model.kind.reconstruction_png(
            result.inputs, rec.arrays["reconstruction"], result.mask, captions
        )
        return Response(png, media_type="image/png", headers=headers)
    return _json(
        {
            "model": model.name,
            "version": model.version.version,
            "family": model.manifest.family,
            "seed": result.seed,
            "description": rec.description,
            "particles": rec.particles,
            **{k: v for k, v in result.options.used().items() if k in ("steps", "strength")},
            "labels": result.label_names(),
            "label_probability": result.label_probability,
            "outputs": rec.arrays,
        }
    )

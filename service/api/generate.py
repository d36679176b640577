"""POST /sample, /log-likelihood and /reconstruct: parse, call the engine, shape the response."""

from __future__ import annotations

import io
import secrets
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel

from ..engine import Likelihood, Reconstruction, noise_rng
from ..engine.completion import DEFAULT_PARTICLES, needs_particles
from ..errors import InvalidInputError, UnsupportedMediaTypeError
from ..imaging import drawable_caption
from ..metrics import StageTimer
from ..outliers import outlier_results
from ..registry import LoadedModel, Registry
from .execution import guarded
from .parsing import (
    array_from_json,
    array_from_npy,
    arrays_from_npz,
    check_mask,
    check_output_size,
    params_from_query,
    parse_json,
    resolve_labels,
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


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


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
    model = _registry(request).get(name, version)
    request.state.model = model.name
    request.state.model_version = str(model.version.version)
    return model


def _timeout(request: Request, req: Any) -> float:
    limit: float = request.app.state.settings.request_timeout_s
    return min(req.timeout, limit) if req.timeout is not None else limit


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
    settings = request.app.state.settings
    stages = StageTimer(request.app.state.metrics, "/sample")
    req = validate_model(SampleRequest, await _json_body(request))
    model = _model_for(request, req.model, req.version)
    spec, engine, kind = model.manifest.dataset, model.engine, model.kind
    limit = settings.sample_cap(model.manifest.family, kind.name)
    if req.n > limit:
        raise InvalidInputError.field(["n"], f"must be at most {limit} for a {model.manifest.family} model")
    check_output_size(req.n, kind.values_per_row, settings.max_output_values, "n")
    labels = resolve_labels(req.labels, req.n, spec, engine.conditional, model.name)
    sent = _optional_array(req.context, "context")
    context = kind.check_context(sent, req.n, model.name)
    seed = req.seed if req.seed is not None else secrets.randbits(63)
    temperature = req.temperature if req.temperature is not None else model.manifest.default_temperature
    rng = noise_rng(seed)
    if engine.conditional and labels is None:
        # Unlabelled samples from a conditional model: labels drawn from the class prior,
        # so the samples follow p(x) = Σ_y p(x|y) p(y); the labels used are returned.
        prior = np.exp(engine.log_prior) if engine.log_prior is not None else None
        labels = rng.choice(spec.num_classes, size=req.n, p=prior).astype(np.int64)
    stages.done(model.name, model.version.version, "parse")

    async def draw() -> tuple[np.ndarray, list[dict[str, Any]] | None]:
        drawn = await engine.sample(req.n, labels, rng, temperature, context)
        checked = None
        if context is not None and sent is not None and engine.checks_context:
            rows = context[:1] if sent.ndim == 1 or len(sent) == 1 else context  # one verdict per row sent
            checked = await engine.context_outliers(rows, req.alpha)
        return drawn, checked

    samples, context_check = await guarded(
        request, draw(), _timeout(request, req), lifecycle=request.app.state.lifecycle
    )
    stages.done(model.name, model.version.version, "compute")
    request.app.state.metrics.samples.labels(model.name).inc(req.n)
    response = _sample_response(model, req.format, samples, labels, seed, temperature, context_check)
    stages.done(model.name, model.version.version, "serialize")
    return response


def _sample_response(
    model: LoadedModel,
    fmt: str,
    samples: np.ndarray,
    labels: np.ndarray | None,
    seed: int,
    temperature: float,
    context_check: list[dict[str, Any]] | None = None,
) -> Response:
    """Samples as .npy, a labelled PNG grid, or JSON in data units, with the seed in a header
    (and, for a context check, the smallest context p-value in X-Genserve-Context-P-Value)."""
    spec, kind = model.manifest.dataset, model.kind
    headers = {"X-Genserve-Seed": str(seed), "X-Genserve-Model": f"{model.name}/{model.version.version}"}
    if context_check:
        headers["X-Genserve-Context-P-Value"] = repr(min(c["p_value"] for c in context_check))
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
            "seed": seed,
            "temperature": temperature,
            "shape": list(samples.shape),
            **kind.sample_fields(),
            "labels": None if labels is None else labels.tolist(),
            "label_names": None if labels is None or not names else [names[i] for i in labels],
            "context_check": context_check,
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
    responses={200: {"model": LogLikelihoodResponse}, **PROBLEMS},
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
    model given no labels, the marginal over labels and the posterior p(y|x)."""
    settings = request.app.state.settings
    stages = StageTimer(request.app.state.metrics, "/log-likelihood")
    req, raw = await _inputs_and_params(request, LogLikelihoodRequest)
    model = _model_for(request, req.model, req.version)
    spec, engine, manifest, kind = model.manifest.dataset, model.engine, model.manifest, model.kind
    engine.ensure_can_score()
    x = kind.check_inputs(raw, "inputs", settings.max_rows)
    labels = resolve_labels(req.labels, len(x), spec, engine.conditional, model.name)
    sent = _optional_array(req.context, "context")
    context = kind.check_context(sent, len(x), model.name)
    default_samples = int(manifest.family_info.get("default_samples", 1) or 1)
    samples = req.importance_samples or default_samples
    if samples > settings.max_importance_samples:
        raise InvalidInputError.field(
            ["importance_samples"], f"must be at most {settings.max_importance_samples}"
        )
    if not engine.sampled_estimator:  # exact: the answer says what was used, not what was asked
        samples = 1
    stages.done(model.name, model.version.version, "parse")

    async def score() -> tuple[Likelihood, list[dict[str, Any]]]:
        ll = await engine.log_likelihood(x, labels, samples, req.seed, context)
        outliers = await outlier_results(
            engine,
            manifest,
            x,
            labels,
            ll,
            samples,
            req.alpha,
            req.outlier_method,
            req.all_outlier_methods,
            req.fdr,
            req.seed,
            context,
        )
        if context is not None and sent is not None and engine.checks_context and req.check_context:
            one = sent.ndim == 1 or len(sent) == 1  # one row sent for all: checked once
            verdicts = await engine.context_outliers(context[:1] if one else context, req.alpha)
            for i, row in enumerate(outliers):
                row["context_outlier"] = verdicts[0 if one else i]
        return ll, outliers

    ll, outliers = await guarded(
        request, score(), _timeout(request, req), lifecycle=request.app.state.lifecycle
    )
    stages.done(model.name, model.version.version, "compute")
    request.app.state.metrics.rows_scored.labels(model.name, "log-likelihood").inc(len(x))
    units = kind.row_units(ll.log_likelihood)
    names = spec.label_names or []
    posterior = ll.posterior
    # Whole columns to Python lists first (one C pass each), then one dict per row.
    rows: list[dict[str, Any]] = [{"log_likelihood": v} for v in ll.log_likelihood.tolist()]
    for key, column in units.items():
        for row, v in zip(rows, column.tolist(), strict=True):
            row[key] = v
    if posterior is not None:
        best = posterior.argmax(axis=1).tolist()
        for row, post, top in zip(rows, posterior.tolist(), best, strict=True):
            row["label_posterior"] = dict(zip(names, post, strict=True))
            row["predicted_label"] = names[top]
    for row, extra in zip(rows, outliers, strict=True):
        row.update(extra)
    response = _json(
        {
            "model": model.name,
            "version": model.version.version,
            "family": manifest.family,
            "estimator": ll.estimator,
            "density": kind.density(),
            "importance_samples": samples,
            "seed": req.seed,
            "marginal": ll.marginal,
            "results": rows,
        }
    )
    stages.done(model.name, model.version.version, "serialize")
    return response


def _completion_particles(asked: int | None, mask: np.ndarray | None, cap: int) -> int | None:
    """Particles per row for a PixelCNN completion (None: the mask needs none).

    Each particle is one more row through every step of the sampling loop, so rows ×
    particles share the PixelCNN's sampling cap. By default as many as fit, up to
    DEFAULT_PARTICLES; a filter needs at least two, and a request too large for two is
    refused rather than quietly completed without the known pixels that follow.
    """
    rows = 0 if mask is None else len(mask)
    if asked is not None and rows * asked > cap:
        raise InvalidInputError.field(
            ["particles"], f"rows × particles must be at most {cap} (here {rows} × {asked})"
        )
    if mask is None or not needs_particles(mask):
        return None
    if asked is not None:
        return asked
    if cap // rows < 2:
        raise InvalidInputError.field(
            ["inputs"],
            f"a mask with known pixels after missing ones is completed by a particle filter of at "
            f"least 2 particles per row, and rows × particles must be at most {cap}: send at most "
            f"{cap // 2} rows, or particles=1 for the plain draw (which ignores those pixels)",
        )
    return min(DEFAULT_PARTICLES, cap // rows)


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
    settings = request.app.state.settings
    stages = StageTimer(request.app.state.metrics, "/reconstruct")
    req, raw = await _inputs_and_params(request, ReconstructRequest)
    model = _model_for(request, req.model, req.version)
    spec, engine, kind = model.manifest.dataset, model.engine, model.kind
    engine.ensure_can_reconstruct()
    x = kind.check_inputs(raw, "inputs", settings.max_rows)
    check_output_size(len(x), 3 * kind.values_per_row, settings.max_output_values, "inputs")
    mask = check_mask(req.mask, x) if _media_type(request) not in (NPY, NPZ) else None
    labels = resolve_labels(req.labels, len(x), spec, engine.conditional, model.name)
    context = kind.check_context(_optional_array(req.context, "context"), len(x), model.name)
    if engine.conditional and labels is None:
        raise InvalidInputError.field(
            ["labels"],
            f"model {model.name} is class-conditional: give a class index or name (per row or for all)",
        )
    pixelcnn_rows = settings.sample_cap("pixelcnn")
    if model.manifest.family == "pixelcnn" and len(x) > pixelcnn_rows:
        raise InvalidInputError.field(["inputs"], f"at most {pixelcnn_rows} rows for pixelcnn completion")
    if not engine.random_reconstruction and req.particles is not None:
        raise InvalidInputError.field(
            ["particles"],
            f"{model.manifest.family} reconstructions draw nothing: particles are for PixelCNN completion",
        )
    particles = (
        _completion_particles(req.particles, mask, pixelcnn_rows) if engine.random_reconstruction else None
    )
    # Flow and VAE reconstructions are deterministic: no seed is drawn, and none returned.
    seed = None
    if engine.random_reconstruction:
        seed = req.seed if req.seed is not None else secrets.randbits(63)
    stages.done(model.name, model.version.version, "parse")
    result = await guarded(
        request,
        engine.reconstruct(x, labels, mask, noise_rng(seed or 0), particles, context),
        _timeout(request, req),
        lifecycle=request.app.state.lifecycle,
    )
    stages.done(model.name, model.version.version, "compute")
    request.app.state.metrics.rows_scored.labels(model.name, "reconstruct").inc(len(x))
    response = _reconstruct_response(model, req.format, x, mask, labels, seed, result)
    stages.done(model.name, model.version.version, "serialize")
    return response


def _reconstruct_response(
    model: LoadedModel,
    fmt: str,
    x: np.ndarray,
    mask: np.ndarray | None,
    labels: np.ndarray | None,
    seed: int | None,
    result: Reconstruction,
) -> Response:
    """JSON with every output; an .npz of the outputs; or a PNG of inputs beside outputs."""
    headers = {"X-Genserve-Model": f"{model.name}/{model.version.version}"}
    if seed is not None:
        headers["X-Genserve-Seed"] = str(seed)
    if result.particles is not None:
        headers["X-Genserve-Particles"] = str(result.particles)
    if fmt == "npz":
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **result.arrays)
        return Response(buf.getvalue(), media_type=NPZ, headers=headers)
    if fmt == "png":
        names = model.manifest.dataset.label_names
        captions = [drawable_caption(names, i) for i in labels] if (labels is not None and names) else None
        png = model.kind.reconstruction_png(x, result.arrays["reconstruction"], mask, captions)
        return Response(png, media_type="image/png", headers=headers)
    return _json(
        {
            "model": model.name,
            "version": model.version.version,
            "family": model.manifest.family,
            "seed": seed,
            "description": result.description,
            "particles": result.particles,
            "outputs": result.arrays,
        }
    )

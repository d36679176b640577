"""Requests and answers, without a transport: what the sync and async clients both send
and read. Each call is `prepare_*` (a `Prepared` request) then `read_*` (a result)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from .errors import problem_error
from .results import ModelInfo, Reconstruction, Samples, Scores

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"

Label = int | str
Labels = Label | Sequence[Label] | np.ndarray | None

# Query strings are header-sized: per-row labels longer than this go in a JSON body.
MAX_QUERY_LABEL_CHARS = 4000


@dataclass
class Prepared:
    """One HTTP request: everything the transport needs, and the deadline sent with it."""

    method: str
    path: str
    params: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _labels_json(labels: Labels) -> Any:
    if labels is None:
        return None
    if isinstance(labels, np.ndarray):
        return labels.tolist()
    if isinstance(labels, str | int | np.integer):
        return labels.item() if isinstance(labels, np.integer) else labels
    return [v.item() if isinstance(v, np.integer) else v for v in labels]


def _labels_query(labels: Labels) -> str | None:
    value = _labels_json(labels)
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, str) and ("," in v or v.strip().isdigit()) for v in items):
        return None  # a name the query form would misread: JSON body instead
    text = ",".join(str(v) for v in items)
    return text if len(text) <= MAX_QUERY_LABEL_CHARS else None


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _as_json(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _binary(
    path: str,
    inputs: np.ndarray,
    fields: dict[str, Any],
    labels: Labels,
    context: np.ndarray | None,
) -> Prepared | None:
    """The request with the arrays in an .npy (or .npz) body, the rest in the query; None
    when some field cannot travel in a query string."""
    query = _labels_query(labels)
    if labels is not None and query is None:
        return None
    params = {k: _query_value(v) for k, v in _drop_none(fields).items()}
    if query is not None:
        params["labels"] = query
    if context is not None and context.ndim == 2 and len(context) > 1:
        content, kind = _npz(inputs=inputs, context=context), NPZ
    else:
        if context is not None:
            params["context"] = ",".join(repr(float(v)) for v in context.reshape(-1))
        content, kind = _npy(inputs), NPY
    return Prepared("POST", path, params=params, content=content, headers={"content-type": kind})


def prepare_sample(
    model: str,
    n: int,
    labels: Labels,
    *,
    version: int | None,
    seed: int | None,
    temperature: float | None,
    context: np.ndarray | None,
    alpha: float | None,
    sampler: dict[str, Any] | None = None,
) -> Prepared:
    """POST /sample as JSON (the labels a conditional model drew come back only in JSON);
    `sampler`: a diffusion model's steps, sampler and guidance."""
    body = _drop_none(
        {
            "model": model,
            "version": version,
            "n": n,
            "labels": _labels_json(labels),
            "seed": seed,
            "temperature": temperature,
            "context": _as_json(context),
            "alpha": alpha,
            **(sampler or {}),
        }
    )
    return Prepared("POST", "/sample", json=body)


def prepare_log_likelihood(
    model: str,
    inputs: np.ndarray,
    labels: Labels,
    *,
    binary_above: int,
    **options: Any,
) -> Prepared:
    """POST /log-likelihood asking for the `npz` columns; inputs of at least `binary_above`
    values travel as .npy (or .npz with per-row contexts) instead of JSON."""
    context = options.pop("context", None)
    fields = {**options, "format": "npz"}
    if inputs.size >= binary_above:
        prepared = _binary("/log-likelihood", inputs, {"model": model, **fields}, labels, context)
        if prepared is not None:
            return prepared
    body = _drop_none(
        {
            "model": model,
            "inputs": inputs.tolist(),
            "labels": _labels_json(labels),
            "context": _as_json(context),
            **fields,
        }
    )
    return Prepared("POST", "/log-likelihood", json=body)


def prepare_reconstruct(
    model: str,
    inputs: np.ndarray,
    labels: Labels,
    *,
    mask: np.ndarray | None,
    binary_above: int,
    **options: Any,
) -> Prepared:
    """POST /reconstruct asking for the `npz` outputs; large inputs without a mask (which
    travels in JSON bodies only) as .npy."""
    context = options.pop("context", None)
    fields = {**options, "format": "npz"}
    if mask is None and inputs.size >= binary_above and options.get("particles") is None:
        prepared = _binary("/reconstruct", inputs, {"model": model, **fields}, labels, context)
        if prepared is not None:
            return prepared
    body = _drop_none(
        {
            "model": model,
            "inputs": inputs.tolist(),
            "labels": _labels_json(labels),
            "context": _as_json(context),
            "mask": None if mask is None else np.asarray(mask).astype(np.int64).tolist(),
            **fields,
        }
    )
    return Prepared("POST", "/reconstruct", json=body)


# --- answers ----------------------------------------------------------------------------
def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (delta-seconds form; the server sends no dates)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def raise_for_problem(response: httpx.Response) -> None:
    """Raise the typed error for a non-2xx answer."""
    if response.status_code < 400:
        return
    body: dict[str, Any] | None = None
    try:
        parsed = response.json()
        body = parsed if isinstance(parsed, dict) else None
    except ValueError:
        body = None
    raise problem_error(response.status_code, body, retry_after(response), response.text)


def _model_header(response: httpx.Response) -> tuple[str, int]:
    name, _, version = response.headers.get("x-genserve-model", "/0").rpartition("/")
    return name, int(version or 0)


def _npz_arrays(response: httpx.Response) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(response.content), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def read_sample(response: httpx.Response) -> Samples:
    """The /sample JSON answer as arrays."""
    raise_for_problem(response)
    body = response.json()
    kind = np.float64 if "features" in body else np.int64
    samples = np.asarray(body["samples"], dtype=kind).reshape(body["shape"])
    labels = body.get("labels")
    return Samples(
        model=body["model"],
        version=int(body["version"]),
        samples=samples,
        labels=None if labels is None else np.asarray(labels, dtype=np.int64),
        label_names=body.get("label_names"),
        seed=int(body["seed"]),
        temperature=float(body["temperature"]),
        context_check=body.get("context_check"),
        steps=body.get("steps"),
        sampler=body.get("sampler"),
        guidance=body.get("guidance"),
    )


def read_png(response: httpx.Response) -> tuple[bytes, int]:
    """A PNG answer and its seed header."""
    raise_for_problem(response)
    return response.content, int(response.headers.get("x-genserve-seed", "0"))


def read_scores(response: httpx.Response) -> Scores:
    """The /log-likelihood npz answer and its headers."""
    raise_for_problem(response)
    cols = _npz_arrays(response)
    name, version = _model_header(response)
    h = response.headers
    return Scores(
        model=name,
        version=version,
        estimator=h.get("x-genserve-estimator", ""),
        importance_samples=int(h.get("x-genserve-importance-samples", "1")),
        seed=int(h.get("x-genserve-seed", "0")),
        marginal=h.get("x-genserve-marginal", "false").lower() == "true",
        log_likelihood=cols["log_likelihood"],
        bits_per_dim=cols.get("bits_per_dim"),
        posterior=cols.get("posterior"),
        predicted_label=cols.get("predicted_label"),
        outlier_score=cols.get("outlier_score"),
        outlier_p_value=cols.get("outlier_p_value"),
        is_outlier=cols.get("is_outlier"),
        columns=cols,
    )


def read_reconstruction(response: httpx.Response) -> Reconstruction:
    """The /reconstruct npz answer and its headers."""
    raise_for_problem(response)
    cols = _npz_arrays(response)
    name, version = _model_header(response)
    labels = cols.pop("labels", None)
    probability = cols.pop("label_probability", None)
    seed = response.headers.get("x-genserve-seed")
    particles = response.headers.get("x-genserve-particles")
    steps = response.headers.get("x-genserve-steps")
    strength = response.headers.get("x-genserve-strength")
    return Reconstruction(
        model=name,
        version=version,
        outputs=cols,
        labels=labels,
        label_probability=probability,
        seed=None if seed is None else int(seed),
        particles=None if particles is None else int(particles),
        steps=None if steps is None else int(steps),
        strength=None if strength is None else float(strength),
    )


def read_models(response: httpx.Response) -> list[ModelInfo]:
    """GET /models."""
    raise_for_problem(response)
    return [ModelInfo.from_json(m) for m in response.json()]


def read_model(response: httpx.Response) -> ModelInfo:
    """GET /models/{name}."""
    raise_for_problem(response)
    return ModelInfo.from_json(response.json())


def request_timeout(deadline: float | None, default: float) -> float:
    """The transport's timeout for one attempt: the server's deadline plus a margin for the
    answer to travel, so a 504 arrives as an answer rather than a client-side timeout."""
    return default if deadline is None else max(0.001, deadline) + 5.0

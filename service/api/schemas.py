"""Request and response bodies of the HTTP API.

Array fields (`inputs`, `mask`) are declared loosely here and validated with numpy in
api.parsing: per-element pydantic validation of a 10,000-row array would cost more than
the model call, and numpy lets the error name the field and the problem precisely.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from ..core.fields import (
    Alpha,
    AtLeastOne,
    Fdr,
    Guidance,
    SamplerName,
    Seed,
    Steps,
    Strength,
    Temperature,
    Timeout,
)

# Strict: lax parsing turned `true` into class 1 and `3.0` into class 3.
Label = StrictInt | StrictStr
LabelsField = Label | list[Label] | None

_SEED = Field(default=None, description="Noise seed; the server picks one if absent.")


class RequestModel(BaseModel):
    """Base: unknown fields are an error (a typo should not be silently ignored)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Model name in the store, e.g. 'pixelcnn-digits'.", max_length=128)
    version: AtLeastOne | None = Field(
        default=None, description="Model version; default the highest version loaded."
    )
    timeout: Timeout | None = Field(
        default=None, description="Deadline in seconds (capped by the server's request_timeout_s)."
    )


class SampleRequest(RequestModel):
    """POST /sample."""

    n: AtLeastOne = Field(default=1, description="Number of samples.")
    labels: LabelsField = Field(
        default=None, description="Class index or name for all samples, or one per sample."
    )
    seed: Seed | None = _SEED
    temperature: Temperature | None = Field(
        default=None,
        description=(
            "Scales latent noise (softmax temperature for PixelCNN); default the model's "
            "`default_temperature` (GET /models/{name})."
        ),
    )
    context: Any = Field(
        default=None,
        description="Vector models with a context (e.g. an SBI posterior's observation x): one row "
        "[C] for all samples, or one per sample [n, C], in the context's units.",
    )
    alpha: Alpha = Field(default=0.05, description="Significance level of the context check (vector models).")
    steps: Steps | None = Field(
        default=None, description="Diffusion: denoiser steps from noise to data; default the model's."
    )
    sampler: SamplerName | None = Field(
        default=None,
        description="Diffusion: `ddim` (deterministic given the seed's starting noise) or `ancestral`; "
        "default the model's.",
    )
    guidance: Guidance | None = Field(
        default=None,
        description="Diffusion, conditional: classifier-free guidance weight w, ε = (1+w)·ε(y) − w·ε(∅); "
        "0 is none. Default the model's.",
    )
    format: Literal["json", "png", "npy"] = "json"


class ContextCheckResult(BaseModel):
    """Whether a context row is one the model's training data could have produced."""

    method: str
    score: float = Field(
        description="Negative log-density of the context under the training contexts (nats)."
    )
    p_value: float = Field(description="Conformal p-value against held-out contexts.")
    is_outlier: bool = Field(
        description="p_value <= alpha: the model answers a question its data never asked."
    )
    alpha: float


class SampleResponse(BaseModel):
    """Samples in data units: integer levels (images) or real values (vectors)."""

    model: str
    version: int
    family: str
    seed: int
    temperature: float
    steps: int | None = Field(default=None, description="Diffusion: the denoiser steps taken.")
    sampler: str | None = Field(default=None, description="Diffusion: the sampler used.")
    guidance: float | None = Field(default=None, description="Diffusion: the guidance weight used.")
    shape: list[int]
    levels: int | None = Field(default=None, description="Images: the number of grey levels K.")
    features: list[str] | None = Field(default=None, description="Vectors: the feature names.")
    labels: list[int] | None
    label_names: list[str] | None
    context_check: list[ContextCheckResult] | None = Field(
        default=None,
        description="Vector models with a context check: one verdict per context row sent (e.g. is "
        "the observation one the simulator can produce?).",
    )
    samples: list[Any] = Field(
        description="Images: nested lists [n, C, H, W] of integers 0..K-1; vectors: [n, D] values."
    )


class LogLikelihoodRequest(RequestModel):
    """POST /log-likelihood (JSON form; an application/x-npy body takes these as query parameters)."""

    inputs: Any = Field(
        description="Integer images [N, H, W] or [N, C, H, W] in 0..K-1; or real vectors [N, D]."
    )
    labels: LabelsField = Field(default=None, description="Omit for a conditional model to marginalise.")
    context: Any = Field(
        default=None,
        description="Vector models with a context: one row [C] for all inputs, or one per input "
        "[N, C] (with an .npy body: one row, comma-separated).",
    )
    importance_samples: AtLeastOne | None = Field(
        default=None,
        description="Estimator samples (VAE importance samples, flow dequantization draws).",
    )
    seed: Seed = Field(default=0, description="Seed of the estimator noise.")
    alpha: Alpha = Field(default=0.05, description="Outlier significance level.")
    outlier_method: str | None = Field(default=None, description="Outlier score; default the model's.")
    all_outlier_methods: bool = Field(default=False, description="Report every outlier method.")
    fdr: Fdr | None = Field(
        default=None,
        description="Also select outliers across the rows by Benjamini-Hochberg at this false-discovery rate",
    )
    check_context: bool = Field(
        default=True,
        description="Vector models with a context check: check each row's context (one more graph "
        "pass over the rows; false skips it, e.g. for bulk scoring of simulations).",
    )
    format: Literal["json", "npz"] = Field(
        default="json",
        description="json: one object per row; npz: every per-row output as a named array "
        "(log_likelihood, bits_per_dim, posterior, predicted_label, outlier_score, outlier_p_value, "
        "is_outlier, context_p_value, ...), the estimator and seed in X-Genserve-* headers.",
    )


class OutlierResult(BaseModel):
    """An outlier verdict for one row."""

    method: str
    score: float = Field(description="Larger is more anomalous.")
    p_value: float = Field(description="Conformal p-value against the calibration split.")
    is_outlier: bool = Field(description="p_value <= alpha.")
    alpha: float
    fdr: float | None = Field(default=None, description="The request's false-discovery rate, when given.")
    bh_selected: bool | None = Field(
        default=None, description="Selected by Benjamini-Hochberg across the request's rows at `fdr`."
    )


class LikelihoodRow(BaseModel):
    """Per-row result of /log-likelihood."""

    log_likelihood: float = Field(description="Nats per example (an estimate or bound; see estimator).")
    bits_per_dim: float | None = Field(default=None, description="Images: bits per dimension.")
    label_posterior: dict[str, float] | None = Field(
        default=None, description="p(y | x) by Bayes' rule, for a conditional model given no labels."
    )
    predicted_label: str | None = None
    outlier: OutlierResult | None = None
    outliers: list[OutlierResult] | None = None
    context_outlier: ContextCheckResult | None = Field(
        default=None, description="Vector models with a context check: the verdict on this row's context."
    )


class LogLikelihoodResponse(BaseModel):
    """Likelihoods and outlier verdicts per row."""

    model: str
    version: int
    family: str
    estimator: str
    density: str = Field(description="What log_likelihood is the log of, and in which units.")
    importance_samples: int
    seed: int
    marginal: bool = Field(description="True when log p(x) was marginalised over the labels.")
    results: list[LikelihoodRow]


class ReconstructRequest(RequestModel):
    """POST /reconstruct."""

    inputs: Any = Field(
        description="Integer images [N, H, W] or [N, C, H, W] in 0..K-1; or real vectors [N, D]."
    )
    labels: LabelsField = Field(
        default=None,
        description="The class to reconstruct under, one for all rows or one per row; a conditional "
        "model given none uses each row's most probable class (returned with its probability).",
    )
    context: Any = Field(default=None, description="Vector models with a context: [C] or [N, C].")
    mask: Any = Field(
        default=None, description="Same shape as inputs: 1 = known pixel, 0 = fill in (PixelCNN)."
    )
    seed: Seed | None = _SEED
    particles: AtLeastOne | None = Field(
        default=None,
        description="PixelCNN completion: particles per row when known pixels follow missing ones.",
    )
    steps: Steps | None = Field(
        default=None,
        description="Diffusion: denoiser steps (from noise with a mask; without one, this share of "
        "them from `strength`); default the model's.",
    )
    strength: Strength | None = Field(
        default=None,
        description="Diffusion without a mask: the time in (0, 1] the input is noised to before it "
        "is denoised again (small: close to the input; 1: a new sample). Default 0.5.",
    )
    format: Literal["json", "png", "npz"] = Field(
        default="json",
        description="json: every output; npz: every output as named arrays; png: inputs beside outputs.",
    )


class ReconstructResponse(BaseModel):
    """Reconstructions (data units) and latents."""

    model: str
    version: int
    family: str
    seed: int | None = Field(description="Seed of the completion's draws (PixelCNN); null if none drawn.")
    description: str
    particles: int | None = Field(
        default=None, description="PixelCNN completion: particles per row (1: exact, none needed)."
    )
    steps: int | None = Field(default=None, description="Diffusion: the denoiser steps taken.")
    strength: float | None = Field(
        default=None, description="Diffusion without a mask: the time the input was noised to."
    )
    labels: list[str] | None = Field(
        default=None,
        description="Conditional models: the class each row was reconstructed under (given, or "
        "inferred when the request named none); null for unconditional models.",
    )
    label_probability: list[float] | None = Field(
        default=None,
        description="Asked without labels: each row's posterior probability of the label used; "
        "null when labels were given.",
    )
    outputs: dict[str, list[Any]] = Field(description="Named nested arrays, e.g. reconstruction and latent.")


class ModelSummary(BaseModel):
    """One loaded model, as GET /models lists it."""

    name: str
    version: int
    default: bool = Field(
        description="Whether requests that name no version get this version (the highest loaded)."
    )
    family: str
    description: str
    conditional: bool
    labels: list[str] | None
    warnings: list[str] = Field(
        description="What a client should know before relying on this model, e.g. that its "
        "training was cut short by a time limit (then `training.cut_short` is true); empty if nothing."
    )
    data: dict[str, Any]
    capabilities: list[str]
    backend: str
    device: str
    lanes: int = Field(
        description="Parts of a batch the runtime runs side by side, one per share of the threads."
    )


class ModelDetail(ModelSummary):
    """GET /models/{name}: the summary plus evaluation, estimator and calibration facts."""

    graphs: list[dict[str, Any]]
    estimator: str
    default_samples: int
    sampling: dict[str, Any] = Field(description="Default sampling temperature and how it was chosen.")
    limits: dict[str, Any] = Field(
        description="What this server accepts for the model: largest n, rows per request (and per "
        "PixelCNN completion), importance samples, numbers per answer, body bytes, deadline (s)."
    )
    evaluation: dict[str, Any]
    outlier_detection: dict[str, Any] | None
    training: dict[str, Any]
    versions: dict[str, str]
    created: str


class Problem(BaseModel):
    """RFC 9457 problem details (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None

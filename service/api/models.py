"""GET /models and /models/{name}: what is loaded, and what it can do."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ..config import Settings
from ..outliers import METHODS
from ..registry import LoadedModel, Registry
from .generate import PROBLEMS
from .schemas import ModelDetail, ModelSummary

router = APIRouter(tags=["models"])


def _registry(request: Request) -> Registry:
    registry: Registry = request.app.state.registry
    return registry


def summary(model: LoadedModel, default: bool) -> dict[str, Any]:
    """The fields of ModelSummary."""
    m = model.manifest
    return {
        "name": model.name,
        "version": model.version.version,
        "default": default,
        "family": m.family,
        "description": m.description,
        "conditional": m.conditioning.conditional,
        "labels": m.dataset.label_names,
        "warnings": [w for w in (m.training.cut_short_warning(),) if w is not None],
        "data": model.kind.describe(),
        "capabilities": model.capabilities,
        "backend": model.backend.name,
        "device": model.backend.device,
        "lanes": model.backend.lanes,
    }


SAMPLER_DEFAULTS = ("default_steps", "default_sampler", "default_guidance")


def request_limits(settings: Settings, family: str, kind: str = "images") -> dict[str, Any]:
    """What this server accepts for the model: the caps a client would otherwise learn from a 4xx."""
    samples = settings.sample_cap(family, kind)
    limits: dict[str, Any] = {
        "max_samples": samples,
        "max_rows": settings.max_rows,
        "max_importance_samples": settings.max_importance_samples,
        "max_output_values": settings.max_output_values,
        "max_body_bytes": settings.max_body_bytes,
        "request_timeout_s": settings.request_timeout_s,
    }
    if family == "pixelcnn":  # a completion samples every missing pixel: the sampling cap
        limits["max_completion_rows"] = samples
        limits["max_completion_particle_rows"] = samples  # rows × particles per row
    return limits


def outlier_description(model: LoadedModel) -> dict[str, Any] | None:
    """How outlier scores are computed and calibrated for this model."""
    cal = model.manifest.calibration
    if cal is None:
        return None
    means = {m: sum(v.values()) / len(v) for m, v in cal.selection.items() if v}
    return {
        "default_method": cal.default_method,
        "default_chosen_by": (
            "best mean AUROC of validation images against synthetic outlier sets built from "
            "validation images (transformed and simpler inputs)"
            if cal.selection
            else "fixed default"
        ),
        "methods": {
            name: {
                "description": METHODS[name][1],
                "statistics": cal.stats.get(name, {}),
                "validation_auroc_mean": means.get(name),
                "validation_auroc": cal.selection.get(name, {}),
            }
            for name in cal.scores
            if name in METHODS
        },
        "background_model": (
            None
            if cal.background is None
            else {
                **cal.background.model_dump(exclude={"log_probs"}),
                "description": (
                    "log p(pixel | quantized left and upper neighbours), counted on the training split"
                ),
            }
        ),
        "p_value": "conformal: (1 + #{calibration scores >= score}) / (n + 1)",
        "is_outlier": "p_value <= alpha (request parameter, default 0.05)",
        "fdr": "optional request parameter: Benjamini-Hochberg selection across the request's rows",
        "calibration": {
            "split": cal.split,
            "size": cal.size,
            "created": cal.created,
            "data": model.manifest.split.dataset,
            "split_seed": model.manifest.split.seed,
            "statistics_from": "validation split",
            "estimator": cal.estimator,
            "estimator_samples": cal.samples,
            "estimator_seed": cal.seed,
            "given_labels": cal.scores_given_labels is not None,
        },
    }


@router.get("/models", response_model=list[ModelSummary], summary="List loaded models")
async def list_models(request: Request) -> list[dict[str, Any]]:
    """Every loaded model version with family, data spec, labels, capabilities, backend, device,
    and whether it is the one a request naming no version gets."""
    registry = _registry(request)
    return [summary(m, registry.is_default(m)) for m in registry.models()]


@router.get("/models/{name}", response_model=ModelDetail, responses=PROBLEMS, summary="Describe one model")
async def get_model(
    name: str,
    request: Request,
    version: Annotated[int | None, Query(ge=1, description="A loaded version; default the highest.")] = None,
) -> dict[str, Any]:
    """A model in detail: graphs, estimator, held-out evaluation, outlier calibration, training."""
    registry = _registry(request)
    model = registry.get(name, version)
    m = model.manifest
    return {
        **summary(model, registry.is_default(model)),
        "graphs": [g.model_dump() for g in m.graphs],
        "estimator": str(m.family_info.get("estimator", "")),
        "default_samples": int(m.family_info.get("default_samples", 0) or 0),
        "sampling": {
            # An iterative sampler's configured defaults (diffusion: steps, sampler,
            # guidance), which the build's choice on validation data replaces.
            **{k: v for k, v in m.family_info.items() if k in SAMPLER_DEFAULTS},
            **(
                m.sampling.model_dump(exclude_none=True)
                if m.sampling is not None
                else {
                    "default_temperature": m.default_temperature,
                    "selected_by": "not recorded (store built before selection)",
                }
            ),
        },
        "limits": {
            **request_limits(request.app.state.settings, m.family, m.dataset.kind),
            **(
                {"max_denoiser_passes": request.app.state.settings.max_denoiser_passes}
                if model.engine.sampler_fields
                else {}
            ),
        },
        "evaluation": m.evaluation,
        "outlier_detection": outlier_description(model),
        "training": m.training.model_dump(),
        "versions": m.versions,
        "created": m.created,
    }

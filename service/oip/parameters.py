"""The request parameters each OIP operation takes, validated at the boundary.

Their ranges are the genserve API's (core/fields.py). Unknown parameters are ignored:
clients add their own (tritonclient's binary_data_output, priority, sequence_id, ...).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..core.fields import Alpha, AtLeastOne, Fdr, Guidance, SamplerName, Seed, Steps, Strength, Temperature
from ..errors import FieldError, InvalidInputError

P = TypeVar("P", bound=BaseModel)


class OperationParameters(BaseModel):
    """Parameters every operation takes."""

    model_config = ConfigDict(extra="ignore")

    # Triton's request timeout, in microseconds; the server's request_timeout_s caps it.
    timeout: AtLeastOne | None = None

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout is None else self.timeout / 1e6


class SampleParameters(OperationParameters):
    seed: Seed | None = None
    temperature: Temperature | None = None
    alpha: Alpha = 0.05
    steps: Steps | None = None
    sampler: SamplerName | None = None
    guidance: Guidance | None = None


class ScoreParameters(OperationParameters):
    seed: Seed = 0
    importance_samples: AtLeastOne | None = None
    alpha: Alpha = 0.05
    method: str | None = None
    all_outlier_methods: bool = False
    fdr: Fdr | None = None
    check_context: bool = True


class ReconstructParameters(OperationParameters):
    seed: Seed | None = None
    particles: AtLeastOne | None = None
    steps: Steps | None = None
    strength: Strength | None = None


def parse_parameters(cls: type[P], raw: dict[str, Any], where: tuple[str, ...] = ("parameters",)) -> P:
    """Typed parameters, or a 400 naming each bad one (under `where` in the body)."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errors = [
            FieldError([*where, *e["loc"]], e["msg"].removeprefix("Value error, ")) for e in exc.errors()
        ]
        named = "; ".join(f"{'.'.join(str(p) for p in e.loc) or 'body'}: {e.msg}" for e in errors)
        raise InvalidInputError(f"invalid parameter(s): {named}", errors) from None


class LoadParameters(BaseModel):
    """The repository extension's load parameters. Triton's `config` and model files are
    refused by name: a genserve model version is configured by its manifest alone."""

    model_config = ConfigDict(extra="forbid")

    # genserve's own: load (and pin the model to) this store version; default its latest.
    version: Annotated[int, Field(ge=1, le=999_999_999)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_triton_config(cls, value: Any) -> Any:
        if isinstance(value, dict) and any(k == "config" or str(k).startswith("file:") for k in value):
            raise ValueError(
                "genserve takes no model configuration or files in a load: a store version's "
                "manifest is its configuration (publish a new version instead)"
            )
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _numeric_text(cls, value: Any) -> Any:
        # Parameters often travel as strings (gRPC string_param, tritonclient's config).
        if isinstance(value, str) and value.isascii() and value.isdigit():
            return int(value)
        return value


class UnloadParameters(BaseModel):
    """The repository extension's unload parameters."""

    model_config = ConfigDict(extra="forbid")

    # A genserve model has no dependents (no ensembles); accepted so Triton clients work.
    unload_dependents: bool = False


class IndexRequest(BaseModel):
    """The repository index request."""

    model_config = ConfigDict(extra="forbid")

    ready: bool = False

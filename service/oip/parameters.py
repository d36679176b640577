"""The request parameters each OIP operation takes, validated at the boundary.

Their ranges are the genserve API's (core/fields.py). Unknown parameters are ignored:
clients add their own (tritonclient's binary_data_output, priority, sequence_id, ...).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.fields import Alpha, AtLeastOne, Fdr, Seed, Temperature
from ..errors import FieldError, InvalidInputError

P = TypeVar("P", bound="OperationParameters")


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


def parse_parameters(cls: type[P], raw: dict[str, Any]) -> P:
    """Typed parameters, or a 400 naming each bad one."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errors = [FieldError(["parameters", *e["loc"]], e["msg"]) for e in exc.errors()]
        where = ", ".join(".".join(str(p) for p in e.loc) for e in errors)
        raise InvalidInputError(f"invalid parameter(s): {where}", errors) from None

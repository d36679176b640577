"""The contract's description of vector data: features, context, support, scaling, simulation.

A vector model's graphs work in a *standard space*: each feature is first mapped to the
whole real line (a bounded feature by a scaled logit, a half-bounded one by a log), then
standardised by the training split's mean and spread. The service applies that map
(service/vector_transform.py), so clients send and receive raw units, and every density
it answers carries the map's log-determinant: densities are in the client's units.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, Literal

from pydantic import Field, model_validator

from .strict import StrictModel


class Interval(StrictModel):
    """A feature's support: [low, high] with either end open to infinity (null)."""

    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Interval:
        for end in (self.low, self.high):
            if end is not None and not math.isfinite(end):
                raise ValueError("interval ends must be finite numbers or null")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"interval low {self.low} must be below high {self.high}")
        return self

    @property
    def bounded(self) -> bool:
        """Whether either end is finite (then a bijection maps it to the real line)."""
        return self.low is not None or self.high is not None

    def describe(self) -> str:
        """e.g. '[-1, 1]', '(0, inf)', 'real'."""
        if not self.bounded:
            return "real"
        lo = "(-inf" if self.low is None else f"[{self.low:g}"
        hi = "inf)" if self.high is None else f"{self.high:g}]"
        return f"{lo}, {hi}"


class Scaling(StrictModel):
    """Affine standardisation: z = (unconstrained - shift) / scale per feature, then
    standard = whitening @ z when a whitening matrix is given (the inverse Cholesky factor
    of z's correlation: lower-triangular, so its log-determinant is its diagonal's)."""

    shift: list[float]
    scale: list[float]
    whitening: list[list[float]] | None = Field(
        default=None, description="[D, D] lower-triangular matrix with a positive diagonal; null: none."
    )

    @model_validator(mode="after")
    def _positive(self) -> Scaling:
        if len(self.shift) != len(self.scale):
            raise ValueError("shift and scale must have one entry per feature")
        if self.whitening is not None:
            D, w = len(self.shift), self.whitening
            if len(w) != D or any(len(row) != D for row in w):
                raise ValueError(f"whitening must be a {D} x {D} matrix")
            if any(w[i][j] != 0.0 for i in range(D) for j in range(i + 1, D)):
                raise ValueError("whitening must be lower-triangular")
            if not all(math.isfinite(v) for row in w for v in row) or not all(w[i][i] > 0 for i in range(D)):
                raise ValueError("whitening must be finite with a positive diagonal")
        if not all(math.isfinite(s) and s > 0 for s in self.scale):
            raise ValueError("scales must be positive and finite")
        if not all(math.isfinite(s) for s in self.shift):
            raise ValueError("shifts must be finite")
        return self


class SimulationRecord(StrictModel):
    """What a simulation-based-inference model was trained on, and what it answers."""

    task: str = Field(description="Simulator name, e.g. 'two_moons' (sbibm's definitions).")
    method: Literal["npe", "nle"] = Field(
        description="npe: the model is the posterior p(θ | x); nle: the likelihood p(x | θ)."
    )
    simulations: int = Field(ge=1, description="Simulation budget the model was trained on.")
    parameters: list[str] = Field(description="θ's names.")
    observations: list[str] = Field(description="x's names.")
    prior: str = Field(description="The prior, in words.")
    reference: str = Field(default="", description="Where the task's definition comes from.")


class ContextCheck(StrictModel):
    """Is a request's context one the training data could have produced? For an SBI
    posterior: is the observation one the simulator can produce (misspecification)?

    A flow on the training contexts alone (the simulator's marginal p(x) for NPE), exported
    as the graph `context_log_prob`, scores a context by its negative log-density; the
    p-value ranks that score among those of held-out contexts (conformal, exact for
    contexts from the same distribution)."""

    method: Literal["nll"] = "nll"
    description: str = Field(description="Where the reference contexts came from.")
    scores: list[float] = Field(
        min_length=1, description="Negative log-density (nats) of each reference context."
    )
    training_epochs: int = Field(ge=0, description="Epochs the context flow trained for.")


class VectorSpec(StrictModel):
    """Real vectors [N, D] in the client's units, optionally with labels and a context [N, C]."""

    kind: Literal["vectors"] = "vectors"
    name: str = Field(description="Dataset name, e.g. 'two_moons' or 'breast_cancer'.")
    source: str = Field(default="", description="Where the data came from.")
    features: list[str] = Field(min_length=1, description="Feature names; D = their count.")
    label_names: list[str] | None = Field(default=None, description="Class names; None without labels.")
    context: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Names of the context features the model conditions on; None without.",
    )
    support: list[Interval] = Field(description="Per feature: where the density is positive.")
    scaling: Scaling = Field(description="Standardisation of the features, after the support's bijection.")
    context_scaling: Scaling | None = Field(default=None, description="Standardisation of the context.")
    density: str = Field(description="What the model's density is, in words, e.g. 'p(θ | x)'.")
    simulation: SimulationRecord | None = None

    @model_validator(mode="after")
    def _consistent(self) -> VectorSpec:
        D = len(self.features)
        if len(self.support) != D or len(self.scaling.shift) != D:
            raise ValueError(f"support and scaling need one entry per feature ({D})")
        if (self.context is None) != (self.context_scaling is None):
            raise ValueError("a context needs its scaling, and scaling needs a context")
        scaling = self.context_scaling
        if self.context is not None and scaling is not None and len(scaling.shift) != len(self.context):
            raise ValueError("context_scaling needs one entry per context feature")
        return self

    @property
    def dims(self) -> int:
        """D, the number of features."""
        return len(self.features)

    @property
    def context_dims(self) -> int:
        """C, the number of context features (0 without a context)."""
        return len(self.context or [])

    @property
    def num_classes(self) -> int:
        """Number of classes; 0 when the data carries no labels."""
        return len(self.label_names) if self.label_names else 0

    @cached_property
    def label_index(self) -> dict[str, int]:
        """Class name -> label index."""
        return {name: i for i, name in enumerate(self.label_names or [])}

    def signature(self) -> tuple[Any, ...]:
        """What a client's requests depend on: versions of one model name must agree on it."""
        return (self.kind, tuple(self.features), tuple(self.context or ()))

    def summary(self) -> str:
        """The data in a few words."""
        given = f" given {len(self.context)} context features" if self.context else ""
        return f"vectors of {self.dims} features{given}"

"""Conditional normalizing flows over real vectors, built on zuko.

zuko (github.com/probabilists/zuko) is the well-kept library for exactly this: neural
spline flows (NSF: monotonic rational-quadratic splines, Durkan et al. 2019) and masked
autoregressive flows (MAF, Papamakarios et al. 2017), with a context input. Its flows
export to ONNX (dynamo, opset 18) and TorchScript with parity to eager torch (checked at
every export), including the autoregressive inverse, which the trace unrolls into one
pass per feature. The project's own coupling layers stay with the image flows, where
they are multi-scale and convolutional.

The model works in the standard space of service/vector_transform.py (the support's
bijection, then standardisation); its conditioning vector is the standardised context
followed by the label's one-hot.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
import zuko
from pydantic import Field
from torch import Tensor

from service.manifest import TensorSpec, VectorSpec

from ..families.base import FamilyConfig, Trainable
from ..graphdef import GraphDef, wrap


class VectorFlowConfig(FamilyConfig):
    """Architecture of a vector flow. Defaults: sbi's NPE density estimator (NSF coupling, 5
    transforms, two hidden layers of 50, 10 bins), the one sbibm's published figures used;
    SBI recipes widen it (training/vectors/pipeline.py)."""

    transform: Literal["nsf", "maf"] = "nsf"
    # Coupling (2 passes: half the features given the other half, alternating), as sbi's
    # NSF; None is fully autoregressive (one pass per feature to sample, and an exported
    # inverse graph that grows with the feature count).
    passes: int | None = Field(2, ge=2)
    transforms: int = Field(5, ge=1)
    hidden: int = Field(50, ge=1)
    layers: int = Field(2, ge=1)
    bins: int = Field(10, ge=2)


class VectorFlowModel(Trainable):
    """p(s | y, c) for standardised vectors s [B, D], labels y [B] and context c [B, C]."""

    family: ClassVar[str] = "flow"
    grad_clip = 5.0  # sbi's

    def __init__(
        self, spec: VectorSpec, conditional: bool, config: VectorFlowConfig, role: str = "model"
    ) -> None:
        super().__init__()
        # "context": the density of a model's contexts alone, exported as `context_log_prob`.
        self.role = role
        self.spec = spec
        self.config = config
        self.conditional = conditional
        self.num_classes = spec.num_classes if conditional else 0
        self.context_dims = spec.context_dims
        cond = self.context_dims + self.num_classes
        hidden = [config.hidden] * config.layers
        if config.transform == "nsf":
            self.flow: zuko.flows.Flow = zuko.flows.NSF(
                spec.dims,
                cond,
                transforms=config.transforms,
                hidden_features=hidden,
                bins=config.bins,
                passes=config.passes,
            )
        else:
            self.flow = zuko.flows.MAF(
                spec.dims, cond, transforms=config.transforms, hidden_features=hidden, passes=config.passes
            )

    @property
    def dims(self) -> int:
        return self.spec.dims

    def condition(self, y: Tensor | None, c: Tensor | None) -> Tensor | None:
        """[B, C + L]: standardised context, then the label's one-hot; None if neither."""
        parts = []
        if self.context_dims:
            assert c is not None, "this flow takes a context"
            parts.append(c.to(torch.float32))
        if self.num_classes:
            assert y is not None, "this flow is class-conditional"
            parts.append(F.one_hot(y, self.num_classes).to(torch.float32))
        return torch.cat(parts, dim=1) if parts else None

    def _dist(self, cond: Tensor | None) -> Any:
        return self.flow(cond)

    def log_prob_given(self, s: Tensor, cond: Tensor | None) -> Tensor:
        """log p(s | cond) [B] in nats of the standard space."""
        return self._dist(cond).log_prob(s)

    def log_prob(self, s: Tensor, y: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        return self.log_prob_given(s, self.condition(y, c))

    def forward(self, s: Tensor, y: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        """s -> z, standard normal under the model."""
        return self._dist(self.condition(y, c)).transform(s)

    def inverse(self, z: Tensor, y: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        """z -> s."""
        return self._dist(self.condition(y, c)).transform.inv(z)

    def training_loss(
        self, x: Tensor, y: Tensor | None, aug: Tensor | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """Mean negative log-likelihood; `y` is the batch's conditioning vector (see fit)."""
        nll = -self.log_prob_given(x, y).mean()
        return nll, {"nll": float(nll.detach())}

    def graph_defs(self) -> list[GraphDef]:
        """log_prob(x, [y], [c]), forward(x, [y], [c]), inverse(z, [y], [c]); for a context
        flow, context_log_prob(c) alone."""
        D, C = self.dims, self.context_dims
        if self.role == "context":
            return [
                GraphDef(
                    "context_log_prob",
                    "log density of a standardised context c under the training contexts (nats; the "
                    "service adds the standardisation's log-det)",
                    wrap(self, lambda m, c: m.log_prob(c), 1),
                    [TensorSpec(name="c", dtype="float32", shape=["batch", D])],
                    [TensorSpec(name="log_prob", dtype="float32", shape=["batch"])],
                    ("log_prob",),
                    optimize=False,
                )
            ]
        extra: list[TensorSpec] = []
        if self.num_classes:
            extra.append(TensorSpec(name="y", dtype="int64", shape=["batch"]))
        if C:
            extra.append(TensorSpec(name="c", dtype="float32", shape=["batch", C]))
        has_y, has_c = bool(self.num_classes), bool(C)

        def call(fn: Any) -> Any:
            # Graph arguments are (data, [y], [c]); the model's methods take (data, y, c).
            def graph(m: VectorFlowModel, a: Tensor, *rest: Tensor) -> Tensor:
                it = iter(rest)
                y = next(it) if has_y else None
                c = next(it) if has_c else None
                out: Tensor = fn(m, a, y, c)
                return out

            return graph

        arity = 1 + len(extra)

        def vec(name: str) -> TensorSpec:
            return TensorSpec(name=name, dtype="float32", shape=["batch", D])

        return [
            GraphDef(
                "log_prob",
                "log density of standardised vectors x in nats (the service adds the map's log-det)",
                wrap(self, call(lambda m, a, y, c: m.log_prob(a, y, c)), arity),
                [vec("x"), *extra],
                [TensorSpec(name="log_prob", dtype="float32", shape=["batch"])],
                ("log_prob",),
                optimize=False,
            ),
            GraphDef(
                "forward",
                "standardised x -> latent z (standard normal under the model)",
                wrap(self, call(lambda m, a, y, c: m(a, y, c)), arity),
                [vec("x"), *extra],
                [vec("z")],
                optimize=False,
            ),
            GraphDef(
                "inverse",
                "latent z -> standardised x",
                wrap(self, call(lambda m, a, y, c: m.inverse(a, y, c)), arity),
                [vec("z"), *extra],
                [vec("x")],
                optimize=False,
            ),
        ]

    def export_info(self) -> dict[str, Any]:
        return {"library": f"zuko {zuko.__version__}", "transform": self.config.transform}


__all__ = ["VectorFlowConfig", "VectorFlowModel"]

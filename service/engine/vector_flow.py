"""Flows over real vectors: exact densities in the client's units, conditioned on a context.

The graphs model the standard space of service/vector_transform.py; this engine maps raw
values there and back and adds the map's log-determinant, so `log_likelihood` is the
density of the raw values. With a context (an SBI posterior's observation x, a
likelihood's parameters θ) the flow is a conditional density: p(features | context).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..manifest import Manifest, VectorSpec
from ..outliers import Verdicts, conformal_p_values
from ..vector_transform import FeatureMap
from .base import Arrays, Engine, GraphCaller, Reconstruction, SamplerOptions


class VectorFlowEngine(Engine):
    """Sampling through `inverse`, densities through `log_prob`, latents through `forward`."""

    family = "flow"
    sampled_estimator = False

    spec: VectorSpec

    def __init__(self, manifest: Manifest, call: GraphCaller) -> None:
        super().__init__(manifest, call)
        assert isinstance(manifest.dataset, VectorSpec), "a vector engine needs vector data"
        self.features = FeatureMap.of(self.spec.support, self.spec.scaling)
        scaling = self.spec.context_scaling
        self.context_map = None if scaling is None else FeatureMap.of(None, scaling)

    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        row = (self.spec.dims,)
        return {"reconstruction": (np.dtype(np.float64), row), "latent": (np.dtype(np.float32), row)}

    def vector_feeds(
        self, data: Mapping[str, np.ndarray], labels: np.ndarray | None, context: np.ndarray | None
    ) -> Arrays:
        """Graph inputs: the data, `y` for a conditional model, `c` (standardised) for a context."""
        out = self.feeds(data, labels)
        if self.context_map is not None:
            assert context is not None, "the data kind checks that a context is given"
            c, _ = self.context_map.to_standard(context)
            out["c"] = c.astype(np.float32)
        return out

    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> NDArray[np.float64]:
        """x = T^-1(f^-1(T·z)), z ~ N(0, I): [n, D] raw values inside the support."""
        z = rng.standard_normal((n, self.spec.dims), dtype=np.float32) * np.float32(temperature)
        s = (await self.call_rows("inverse", self.vector_feeds({"z": z}, labels, context)))["x"]
        return self.features.from_standard(s.astype(np.float64))

    def estimator(self, samples: int) -> str:
        return "exact (change of variables)"

    async def conditional_log_likelihood(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log p(x | y, context) = log p_s(T(x)) + log |dT/dx|, in nats of the raw units."""
        s, log_det = self.features.to_standard(x.astype(np.float64))
        feeds = self.vector_feeds({"x": s.astype(np.float32)}, labels, context)
        lp = (await self.call_rows("log_prob", feeds))["log_prob"]
        return lp.astype(np.float64) + log_det

    @property
    def checks_context(self) -> bool:  # type: ignore[override]
        """Whether this model can say if a context is one its training data could produce."""
        return self.manifest.context_check is not None and self.context_map is not None

    async def context_nll(self, context: np.ndarray) -> NDArray[np.float64]:
        """-log p(context) per row [N] (nats, raw units) under the flow of training contexts."""
        assert self.context_map is not None, "a model without a context has no context flow"
        c, log_det = self.context_map.to_standard(context.astype(np.float64))
        lp = (await self.call_rows("context_log_prob", {"c": c.astype(np.float32)}))["log_prob"]
        return -(lp.astype(np.float64) + log_det)

    async def context_outliers(self, context: np.ndarray, alpha: float) -> Verdicts:
        """Per context row [N, C]: its negative log-density under the training contexts' flow
        (nats, raw units), the conformal p-value against held-out contexts, and the verdict."""
        check = self.manifest.context_check
        assert check is not None, "checks_context says when there is a check"
        nll = await self.context_nll(context)
        return Verdicts(check.method, nll, conformal_p_values(np.asarray(check.scores), nll), alpha)

    async def reconstruct(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        mask: np.ndarray | None,
        rng: np.random.Generator,
        particles: int | None = None,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),  # noqa: B008 - frozen, shared safely
    ) -> Reconstruction:
        """z = f(T(x)) and its inverse T^-1(f^-1(z)): the latent a client can inspect, and the
        round trip that shows the flow inverts."""
        self.check_mask_unsupported(mask)
        s, _ = self.features.to_standard(x.astype(np.float64))
        z = (
            await self.call_rows("forward", self.vector_feeds({"x": s.astype(np.float32)}, labels, context))
        )["z"]
        back = (await self.call_rows("inverse", self.vector_feeds({"z": z}, labels, context)))["x"]
        return Reconstruction(
            {
                "reconstruction": self.features.from_standard(back.astype(np.float64)),
                "latent": z.astype(np.float32),
            },
            "latent z = f(T(x)), standard normal under the model (T: support map + standardisation); "
            "reconstruction = T^-1(f^-1(z))",
        )


__all__ = ["VectorFlowEngine"]

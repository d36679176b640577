"""What every family engine shares: graph calls, labels, noise, categorical draws.

Engines implement each family's serving logic (sampling loops, importance sampling,
dequantization) purely in terms of the version's graphs, called through a `GraphCaller`
so that the dynamic batcher can merge concurrent requests' calls.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from ..errors import InvalidInputError, UnsupportedOperationError
from ..manifest import DatasetSpec, Manifest, VectorSpec

if TYPE_CHECKING:  # outliers.py imports the engines' Likelihood
    from ..outliers import Verdicts

Arrays = dict[str, np.ndarray]
IntImages = NDArray[np.int64]


# Work units (rows x estimator samples) per graph call. Larger requests are cut into calls
# of at most this much work: it bounds one call's memory, and how long one call holds the
# runtime, which every model shares (between calls, other requests get their turn, and a
# cancelled request stops).
MAX_CALL_UNITS = 4096


class GraphCaller(Protocol):
    """Runs one graph of this model version on named inputs (batched along axis 0).

    `units` is the call's work when it is more than its rows (rows x importance samples);
    the batcher merges calls up to a budget of units.
    """

    def __call__(
        self, graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None
    ) -> Awaitable[Arrays]: ...


def row_chunks(rows: int, units_per_row: int = 1) -> list[slice]:
    """Consecutive row ranges of at most MAX_CALL_UNITS work each (at least one row)."""
    step = max(1, MAX_CALL_UNITS // max(1, units_per_row))
    return [slice(a, min(rows, a + step)) for a in range(0, rows, step)]


@dataclass
class Likelihood:
    """Per-row log-likelihoods (nats) and how they were estimated."""

    log_likelihood: NDArray[np.float64]  # [B]
    estimator: str
    samples: int
    marginal: bool = False
    log_posterior: NDArray[np.float64] | None = None  # [B, L], log p(y | x), when marginalised

    @property
    def posterior(self) -> NDArray[np.float64] | None:
        """p(y | x) [B, L] for a marginalised call, else None."""
        return None if self.log_posterior is None else np.exp(self.log_posterior)


@dataclass
class Reconstruction:
    """Named output arrays of /reconstruct (reconstruction in data units, latents, ...)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    description: str = ""
    particles: int | None = None  # PixelCNN completion: particles per row (1: exact, none needed)


@dataclass(frozen=True)
class SamplerOptions:
    """How an iterative sampler runs (diffusion models): None takes the model's default.
    Engines list the fields they take in `sampler_fields` (sampling) and
    `reconstruct_fields` (reconstruction); the core refuses the others by name."""

    steps: int | None = None  # denoiser steps from t = 1 (or from `strength`) to 0
    sampler: str | None = None  # "ddim" (deterministic) or "ancestral"
    guidance: float | None = None  # classifier-free guidance weight w (0: none)
    strength: float | None = None  # reconstruction without a mask: the time x is noised to

    def given(self) -> set[str]:
        """The fields the request set."""
        return set(self.used())

    def used(self) -> dict[str, int | str | float]:
        """The fields that are set, by name (what an answer reports)."""
        return {k: v for k, v in vars(self).items() if v is not None}


def noise_rng(seed: int) -> np.random.Generator:
    """The per-request generator: all serving noise comes from here."""
    return np.random.Generator(np.random.PCG64(seed))


def log_softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable log-softmax in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


# From this many draws on, the level-major layout pays for its per-level Python loop.
_LEVEL_MAJOR_DRAWS = 256


def log_sum_exp(joint: np.ndarray) -> NDArray[np.float64]:
    """log Σ_y exp(joint[:, y]) per row, without overflow: [B, L] -> [B]."""
    top = joint.max(axis=1, keepdims=True)
    out: NDArray[np.float64] = top[:, 0] + np.log(np.exp(joint - top).sum(axis=1))
    return out


def categorical_from_uniform(logits: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw over the last axis, one uniform per draw (same rule as training):
    logits [..., K], u [...] in [0, 1) -> int64 [...], one logits row per draw."""
    K = logits.shape[-1]
    if u.size < _LEVEL_MAJOR_DRAWS:  # PixelCNN steps: a few rows, numpy's call overhead dominates
        cdf = np.cumsum(np.exp(log_softmax(logits)), axis=-1)
        idx = (cdf < u[..., None]).sum(axis=-1)
        return np.minimum(idx, K - 1).astype(np.int64)
    # VAE decoder draws: reductions over a short last axis (K = 17) are slow in numpy, so
    # work level-major, one vector operation per level over every draw at once (~4x
    # faster for 64 8x8 images). Comparing the unnormalised CDF with u times its total is
    # the same rule without the division.
    z = np.empty((K, u.size), dtype=np.float64)  # [K, N]
    np.copyto(z, logits.reshape(-1, K).T)
    z -= z.max(axis=0)
    np.exp(z, out=z)
    for k in range(1, K):  # cumsum over axis 0, which numpy runs slowly for this layout
        z[k] += z[k - 1]
    idx = (z < u.reshape(-1) * z[-1]).sum(axis=0)
    return np.minimum(idx, K - 1).reshape(u.shape).astype(np.int64)


def discretize(x: np.ndarray, levels: int) -> IntImages:
    """Continuous values in level units [0, K) -> integer levels 0..K-1."""
    return np.clip(np.floor(x), 0, levels - 1).astype(np.int64)


class Engine:
    """Base engine: subclasses implement the operations their family admits."""

    family: str = ""
    can_score: bool = True
    can_reconstruct: bool = True
    sampled_estimator: bool = True  # False: the likelihood is exact, importance_samples unused
    random_reconstruction: bool = False  # True: /reconstruct draws (and returns) a seed
    uses_particles: bool = False  # True: a completion runs a particle filter (PixelCNN)
    sampler_fields: frozenset[str] = frozenset()  # SamplerOptions that sample() takes
    reconstruct_fields: frozenset[str] = frozenset()  # ... and that reconstruct() takes

    def __init__(self, manifest: Manifest, call: GraphCaller) -> None:
        self.manifest = manifest
        self.call = call
        self.spec: DatasetSpec | VectorSpec = manifest.dataset
        self.conditional = manifest.conditioning.conditional
        prior = manifest.conditioning.class_prior
        with np.errstate(divide="ignore"):  # a class without training examples: log 0 = -inf
            self.log_prior = None if prior is None else np.log(np.asarray(prior, dtype=np.float64))

    # --- helpers ---------------------------------------------------------------------------
    def feeds(self, data: Mapping[str, np.ndarray], labels: np.ndarray | None) -> Arrays:
        """Graph inputs, with `y` added for a conditional model."""
        out = dict(data)
        if self.conditional:
            assert labels is not None
            out["y"] = labels.astype(np.int64)
        return out

    def all_labels(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every (row, class) pair: row indices and labels, [rows * L] each."""
        L = self.spec.num_classes
        return np.repeat(np.arange(rows), L), np.tile(np.arange(L, dtype=np.int64), rows)

    def sampling_options(self, options: SamplerOptions) -> SamplerOptions:
        """The options sample() will use, defaults filled in (none for one-pass families)."""
        return SamplerOptions()

    def reconstruct_options(self, options: SamplerOptions, masked: bool) -> SamplerOptions:
        """The options reconstruct() will use, defaults filled in."""
        return SamplerOptions()

    def denoiser_passes(self, rows: int, options: SamplerOptions) -> int:
        """Network passes per graph row that resolved options cost (the diffusion cap)."""
        return 0

    def label_inference_passes(self, rows: int, masked: bool, options: SamplerOptions, samples: int) -> int:
        """The passes of label_posterior for a reconstruction asked without labels (the
        diffusion cap; 0 where it costs no iterative sampling)."""
        return 0

    # --- operations ----------------------------------------------------------------------
    async def sample(
        self,
        n: int,
        labels: np.ndarray | None,
        rng: np.random.Generator,
        temperature: float = 1.0,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),
    ) -> np.ndarray:
        """`n` samples in data units ([n, C, H, W] levels, or [n, D] values).

        `context` [n, C] is the conditioning vector of a model that takes one (validated
        by the data kind: never given to a model without one)."""
        raise NotImplementedError

    async def conditional_log_likelihood(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log p(x | y[, context]) per row (nats), estimator noise shared by all rows."""
        self.ensure_can_score()
        raise NotImplementedError

    def estimator(self, samples: int) -> str:
        """Human-readable name of the likelihood estimator."""
        return "exact"

    async def call_rows(self, graph: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """One graph over many rows, as calls of at most MAX_CALL_UNITS rows."""
        rows = len(next(iter(feeds.values())))
        parts = [await self.call(graph, {k: v[p] for k, v in feeds.items()}) for p in row_chunks(rows)]
        return parts[0] if len(parts) == 1 else {k: np.concatenate([o[k] for o in parts]) for k in parts[0]}

    async def log_likelihood(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        samples: int,
        seed: int,
        context: np.ndarray | None = None,
    ) -> Likelihood:
        """log p(x | y) with labels; for a conditional model without labels, the marginal
        log p(x) = log Σ_y p(x | y) p(y) and the posterior p(y | x) (Bayes' rule)."""
        if self.conditional and labels is None:
            assert self.log_prior is not None
            classes = len(self.log_prior)
            per_parts = []
            # Row by row range: every row is scored under every label, and the copies
            # of a whole 20,000-row request would not be small.
            for part in row_chunks(len(x), classes):
                rows, labs = self.all_labels(part.stop - part.start)
                ctx = None if context is None else context[part][rows]
                per_parts.append(
                    await self.conditional_log_likelihood(x[part][rows], labs, samples, seed, ctx)
                )
            per = np.concatenate(per_parts)
            joint = per.reshape(len(x), -1) + self.log_prior[None, :]
            marginal = log_sum_exp(joint)
            # Kept in log space: a confident row's runner-up label is e^-700 and beyond.
            log_posterior = joint - marginal[:, None]
            return Likelihood(marginal, self.estimator(samples), samples, True, log_posterior)
        ll = await self.conditional_log_likelihood(x, labels, samples, seed, context)
        return Likelihood(ll, self.estimator(samples), samples)

    async def label_posterior(
        self,
        x: np.ndarray,
        mask: np.ndarray | None,
        samples: int,
        context: np.ndarray | None = None,
    ) -> NDArray[np.float64]:
        """log p(y | x) [B, L] by Bayes' rule, for a reconstruction asked without labels.

        The whole input is the evidence (the estimator's calibrated noise, seed 0); families
        that complete a mask override this to weigh the known pixels alone."""
        lik = await self.log_likelihood(x, None, samples, 0, context)
        assert lik.log_posterior is not None
        return lik.log_posterior

    async def reconstruct(
        self,
        x: np.ndarray,
        labels: np.ndarray | None,
        mask: np.ndarray | None,
        rng: np.random.Generator,
        particles: int | None = None,
        context: np.ndarray | None = None,
        options: SamplerOptions = SamplerOptions(),
    ) -> Reconstruction:
        """Family-specific reconstruction or completion (`particles`: PixelCNN only)."""
        self.ensure_can_reconstruct()
        raise NotImplementedError

    def reconstruction_outputs(self) -> dict[str, tuple[np.dtype[Any], tuple[int, ...]]]:
        """What reconstruct returns: per output, its dtype and the shape of one row."""
        return {}

    checks_context: bool = False  # True: context_outliers says whether a context is unusual

    async def context_outliers(self, context: np.ndarray, alpha: float) -> Verdicts:
        """Per context row: is it one the training data could have produced (score, p-value)?"""
        raise UnsupportedOperationError(f"{self.family} models have no context check")

    def ensure_can_score(self) -> None:
        """422 for families without a tractable likelihood."""
        if not self.can_score:
            raise UnsupportedOperationError(
                f"{self.family} models have no tractable likelihood; score with a flow, VAE or PixelCNN"
            )

    def ensure_can_reconstruct(self) -> None:
        """422 for families without an encoder."""
        if not self.can_reconstruct:
            raise UnsupportedOperationError(
                f"{self.family} models have no encoder to reconstruct with; use a VAE, flow or PixelCNN"
            )

    def check_mask_unsupported(self, mask: np.ndarray | None) -> None:
        """Families that cannot condition on a mask say so."""
        if mask is not None:
            raise InvalidInputError.field(
                ["mask"], f"masks are supported by pixelcnn models, not {self.family}"
            )


class ImageEngine(Engine):
    """Engines of integer-level images: levels, shape, bits per dimension."""

    spec: DatasetSpec

    def __init__(self, manifest: Manifest, call: GraphCaller) -> None:
        super().__init__(manifest, call)
        spec = manifest.dataset
        assert isinstance(spec, DatasetSpec), "an image engine needs image data"
        self.levels = spec.levels
        self.shape = spec.shape

    def bits_per_dim(self, nats: np.ndarray) -> np.ndarray:
        """Nats per example -> bits per dimension of the discrete data."""
        return -nats / (self.spec.dims * math.log(2))


def inline_caller(backend: Any) -> GraphCaller:
    """A GraphCaller that runs graphs directly on `backend` (offline use: calibration, tests)."""

    async def call(graph: str, inputs: Mapping[str, np.ndarray], units: int | None = None) -> Arrays:
        return backend.run(graph, inputs)

    return call

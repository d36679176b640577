"""The three operations, once for every front: check the query against the model, run
the engine under the call's deadline, count the work, return a result object."""

from __future__ import annotations

import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..config import Settings
from ..engine import noise_rng
from ..engine.completion import DEFAULT_PARTICLES, needs_particles
from ..errors import InvalidInputError
from ..metrics import Metrics
from ..outliers import Verdicts, outlier_results
from ..registry import LoadedModel, Registry
from .calls import Call, guarded
from .queries import ReconstructQuery, SampleQuery, ScoreQuery
from .results import ReconstructResult, SampleResult, ScoreResult
from .validation import check_mask, check_output_size, check_sampler_fields, resolve_labels

if TYPE_CHECKING:
    from ..lifecycle import Lifecycle

T = TypeVar("T")


@dataclass
class Operations:
    """sample, score and reconstruct over the loaded models, with the server's limits."""

    registry: Registry
    settings: Settings
    metrics: Metrics
    lifecycle: Lifecycle | None = None

    def model(self, name: str, version: int | None = None) -> LoadedModel:
        """A loaded model version (404 if none); the highest loaded when version is None."""
        return self.registry.get(name, version)

    def deadline(self, asked: float | None) -> float:
        """The client's deadline, capped by the server's request_timeout_s."""
        limit = self.settings.request_timeout_s
        return min(asked, limit) if asked is not None else limit

    async def _run(self, work: Coroutine[Any, Any, T], call: Call) -> T:
        return await guarded(work, self.deadline(call.timeout), call.gone, self.lifecycle)

    async def sample(self, model: LoadedModel, q: SampleQuery, call: Call) -> SampleResult:
        """Draw q.n samples; unlabelled draws of a conditional model take labels from its class prior."""
        with model.in_use():  # an unload of this version waits for the answer
            return await self._sample(model, q, call)

    async def _sample(self, model: LoadedModel, q: SampleQuery, call: Call) -> SampleResult:
        spec, engine, kind = model.manifest.dataset, model.engine, model.kind
        limit = self.settings.sample_cap(model.manifest.family, kind.name)
        if q.n > limit:
            raise InvalidInputError.field(
                ["n"], f"must be at most {limit} for a {model.manifest.family} model"
            )
        check_output_size(q.n, kind.values_per_row, self.settings.max_output_values, "n")
        labels = resolve_labels(q.labels, q.n, spec, engine.conditional, model.name)
        context = kind.check_context(q.context, q.n, model.name)
        seed = q.seed if q.seed is not None else secrets.randbits(63)
        temperature = q.temperature if q.temperature is not None else model.manifest.default_temperature
        family = model.manifest.family
        check_sampler_fields(q.options, engine.sampler_fields, family, "sampling")
        options = engine.sampling_options(q.options)
        self.check_passes(engine.denoiser_passes(q.n, options))
        rng = noise_rng(seed)
        if engine.conditional and labels is None:
            # Unlabelled samples from a conditional model: labels drawn from the class prior,
            # so the samples follow p(x) = Σ_y p(x|y) p(y); the labels used are returned.
            prior = np.exp(engine.log_prior) if engine.log_prior is not None else None
            labels = rng.choice(spec.num_classes, size=q.n, p=prior).astype(np.int64)
        call.stages.done(model.name, model.version.version, "parse")

        async def draw() -> tuple[np.ndarray, Verdicts | None]:
            drawn = await engine.sample(q.n, labels, rng, temperature, context, options)
            checked = None
            if context is not None and q.context is not None and engine.checks_context:
                sent = q.context
                rows = (
                    context[:1] if sent.ndim == 1 or len(sent) == 1 else context
                )  # one verdict per row sent
                checked = await engine.context_outliers(rows, q.alpha)
            return drawn, checked

        samples, checked = await self._run(draw(), call)
        call.stages.done(model.name, model.version.version, "compute")
        self.metrics.samples.labels(model.name).inc(q.n)
        return SampleResult(model, samples, labels, seed, temperature, checked, options)

    def check_passes(self, passes: int) -> None:
        """The cost cap of iterative samplers: rows × steps network passes per request."""
        limit = self.settings.max_denoiser_passes
        if passes > limit:
            raise InvalidInputError.field(
                ["steps"],
                f"asks for {passes} denoiser passes (rows × steps, twice with guidance; an "
                f"inpainting without labels also completes and scores every row for every "
                f"class); at most {limit}: fewer steps or rows, or give the labels",
            )

    async def score(self, model: LoadedModel, q: ScoreQuery, call: Call) -> ScoreResult:
        """Log-likelihoods, the label posterior when no labels are given, outlier verdicts."""
        with model.in_use():  # an unload of this version waits for the answer
            return await self._score(model, q, call)

    async def _score(self, model: LoadedModel, q: ScoreQuery, call: Call) -> ScoreResult:
        spec, engine, manifest, kind = model.manifest.dataset, model.engine, model.manifest, model.kind
        engine.ensure_can_score()
        x = kind.check_inputs(q.inputs, "inputs", self.settings.max_rows)
        labels = resolve_labels(q.labels, len(x), spec, engine.conditional, model.name)
        context = kind.check_context(q.context, len(x), model.name)
        default_samples = int(manifest.family_info.get("default_samples", 1) or 1)
        samples = q.importance_samples or default_samples
        if samples > self.settings.max_importance_samples:
            raise InvalidInputError.field(
                ["importance_samples"], f"must be at most {self.settings.max_importance_samples}"
            )
        if not engine.sampled_estimator:  # exact: the answer says what was used, not what was asked
            samples = 1
        call.stages.done(model.name, model.version.version, "parse")

        async def score() -> ScoreResult:
            ll = await engine.log_likelihood(x, labels, samples, q.seed, context)
            outliers = await outlier_results(
                engine,
                manifest,
                x,
                labels,
                ll,
                samples,
                q.alpha,
                q.outlier_method,
                q.all_outlier_methods,
                q.fdr,
                q.seed,
                context,
            )
            checked = None
            sent = q.context
            if context is not None and sent is not None and engine.checks_context and q.check_context:
                one = sent.ndim == 1 or len(sent) == 1  # one row sent for all: checked once
                checked = await engine.context_outliers(context[:1] if one else context, q.alpha)
            return ScoreResult(
                model, ll, kind.row_units(ll.log_likelihood), samples, q.seed, outliers, checked
            )

        result = await self._run(score(), call)
        call.stages.done(model.name, model.version.version, "compute")
        self.metrics.rows_scored.labels(model.name, "log-likelihood").inc(len(x))
        return result

    async def reconstruct(self, model: LoadedModel, q: ReconstructQuery, call: Call) -> ReconstructResult:
        """VAE/flow reconstructions and latents; PixelCNN completion of the entries where mask is 0."""
        with model.in_use():  # an unload of this version waits for the answer
            return await self._reconstruct(model, q, call)

    async def _reconstruct(self, model: LoadedModel, q: ReconstructQuery, call: Call) -> ReconstructResult:
        settings = self.settings
        spec, engine, kind = model.manifest.dataset, model.engine, model.kind
        engine.ensure_can_reconstruct()
        x = kind.check_inputs(q.inputs, "inputs", settings.max_rows)
        check_output_size(len(x), 3 * kind.values_per_row, settings.max_output_values, "inputs")
        mask = check_mask(q.mask, x)
        labels = resolve_labels(q.labels, len(x), spec, engine.conditional, model.name)
        context = kind.check_context(q.context, len(x), model.name)
        pixelcnn_rows = settings.sample_cap("pixelcnn")
        if model.manifest.family == "pixelcnn" and len(x) > pixelcnn_rows:
            raise InvalidInputError.field(["inputs"], f"at most {pixelcnn_rows} rows for pixelcnn completion")
        if not engine.uses_particles and q.particles is not None:
            why = "take no particles" if engine.random_reconstruction else "draw nothing"
            raise InvalidInputError.field(
                ["particles"],
                f"{model.manifest.family} reconstructions {why}: particles are for PixelCNN completion",
            )
        particles = completion_particles(q.particles, mask, pixelcnn_rows) if engine.uses_particles else None
        check_sampler_fields(q.options, engine.reconstruct_fields, model.manifest.family, "reconstruction")
        options = engine.reconstruct_options(q.options, mask is not None)
        default_samples = int(model.manifest.family_info.get("default_samples", 1) or 1)
        passes = engine.denoiser_passes(len(x), options)
        if engine.conditional and labels is None:  # the label is inferred first
            passes += engine.label_inference_passes(len(x), mask is not None, options, default_samples)
        self.check_passes(passes)
        # Flow and VAE reconstructions are deterministic: no seed is drawn, and none returned.
        seed = None
        if engine.random_reconstruction:
            seed = q.seed if q.seed is not None else secrets.randbits(63)
        call.stages.done(model.name, model.version.version, "parse")

        async def rebuild() -> ReconstructResult:
            used, probability = labels, None
            if engine.conditional and labels is None:
                # No label: the most probable class of the input (the known pixels of a
                # completion) by Bayes' rule; the answer says which and how probable.
                log_post = await engine.label_posterior(x, mask, default_samples, context)
                used = log_post.argmax(axis=1).astype(np.int64)
                probability = np.exp(np.take_along_axis(log_post, used[:, None], axis=1)[:, 0])
            done = await engine.reconstruct(x, used, mask, noise_rng(seed or 0), particles, context, options)
            return ReconstructResult(model, x, mask, used, seed, done, probability, options)

        result = await self._run(rebuild(), call)
        call.stages.done(model.name, model.version.version, "compute")
        self.metrics.rows_scored.labels(model.name, "reconstruct").inc(len(x))
        return result


def completion_particles(asked: int | None, mask: np.ndarray | None, cap: int) -> int | None:
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

"""`Client`: genserve over HTTP from scripts and notebooks, answers as NumPy arrays."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

import httpx

from .common import (
    Reader,
    Settings,
    T,
    model_request,
    models_request,
    reconstruct_request,
    retryable,
    sample_request,
    score_request,
    transport_error,
    transport_timeout,
)
from .protocol import Labels, Prepared, read_png
from .results import ModelInfo, Reconstruction, Samples, Scores
from .retry import Attempts, RetryPolicy


class Client:
    """A genserve server's API, synchronously.

    >>> from genserve.client import Client
    >>> with Client("http://127.0.0.1:8000") as gs:                      # doctest: +SKIP
    ...     drawn = gs.sample("vae-digits", n=4, labels=7, seed=1)
    ...     drawn.samples.shape                                           # (4, 1, 8, 8)
    ...     scores = gs.log_likelihood("vae-digits", drawn.samples)
    ...     scores.predicted_label, scores.outlier_p_value

    Answers are NumPy arrays; errors are typed (`genserve.client.errors`) and carry the
    server's problem fields. A 503 (queue full, starting, draining) is retried after the
    server's `Retry-After`, up to `retry.attempts` tries and never past the call's
    deadline (`timeout`, which the server also enforces: its work stops there).
    Inputs of `binary_above` values or more travel as `.npy` bodies.
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        binary_above: int | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = Settings.of(url, token, timeout, retry, binary_above)
        self._http = httpx.Client(base_url=url, headers=self.settings.headers(), transport=transport)

    # --- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- the API --------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        """Every loaded model version (`GET /models`)."""
        return self._call(*models_request(), None)

    def model(self, name: str, version: int | None = None) -> ModelInfo:
        """One model's description (`GET /models/{name}`): limits, evaluation, outliers..."""
        return self._call(*model_request(name, version), None)

    def ready(self) -> bool:
        """Whether every configured model is loaded and warmed up (`GET /health/ready`)."""
        try:
            return self._http.get("/health/ready", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def sample(
        self,
        model: str,
        n: int = 1,
        labels: Labels = None,
        *,
        version: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        context: Any = None,
        alpha: float | None = None,
        steps: int | None = None,
        sampler: str | None = None,
        guidance: float | None = None,
        timeout: float | None = None,
    ) -> Samples:
        """Draw `n` samples (`POST /sample`); `labels` one class (index or name) for all or
        one per sample; same `seed`, same samples. A diffusion model also takes `steps`,
        `sampler` ("ddim" or "ancestral") and `guidance` (its defaults otherwise).

        >>> gs.sample("gan-digits", n=8, labels=range(8), seed=0).samples.shape  # doctest: +SKIP
        (8, 1, 8, 8)
        """
        diffusion = {"steps": steps, "sampler": sampler, "guidance": guidance}
        prepared, read = sample_request(
            model, n, labels, version, seed, temperature, context, alpha, diffusion
        )
        return self._call(prepared, read, timeout)

    def sample_png(
        self,
        model: str,
        n: int = 1,
        labels: Labels = None,
        *,
        version: int | None = None,
        seed: int | None = None,
        temperature: float | None = None,
        timeout: float | None = None,
    ) -> tuple[bytes, int]:
        """The server's captioned PNG grid of `n` samples, and the seed that drew them."""
        prepared, _ = sample_request(model, n, labels, version, seed, temperature, None, None)
        assert prepared.json is not None
        prepared.json["format"] = "png"
        return self._call(prepared, read_png, timeout)

    def log_likelihood(
        self,
        model: str,
        inputs: Any,
        labels: Labels = None,
        *,
        version: int | None = None,
        importance_samples: int | None = None,
        seed: int | None = None,
        alpha: float | None = None,
        outlier_method: str | None = None,
        all_outlier_methods: bool | None = None,
        fdr: float | None = None,
        context: Any = None,
        check_context: bool | None = None,
        timeout: float | None = None,
    ) -> Scores:
        """Score `inputs` (`POST /log-likelihood`): log-likelihoods, bits/dim, the class
        posterior when no labels are given, outlier p-values, as arrays.

        >>> s = gs.log_likelihood("flow-digits", images)                     # doctest: +SKIP
        >>> s.posterior.argmax(axis=1), s.is_outlier                         # doctest: +SKIP
        """
        options = {
            "version": version,
            "importance_samples": importance_samples,
            "seed": seed,
            "alpha": alpha,
            "outlier_method": outlier_method,
            "all_outlier_methods": all_outlier_methods,
            "fdr": fdr,
            "context": context,
            "check_context": check_context,
        }
        return self._call(*score_request(self.settings, model, inputs, labels, options), timeout)

    def reconstruct(
        self,
        model: str,
        inputs: Any,
        labels: Labels = None,
        *,
        mask: Any = None,
        version: int | None = None,
        seed: int | None = None,
        particles: int | None = None,
        context: Any = None,
        steps: int | None = None,
        strength: float | None = None,
        timeout: float | None = None,
    ) -> Reconstruction:
        """Reconstruct `inputs` (VAE, flow) or complete the pixels where `mask` is 0
        (PixelCNN, diffusion) (`POST /reconstruct`); a diffusion model without a mask
        noises the input to time `strength` and denoises it in `steps`. Without labels a
        conditional model uses each row's most probable class (`labels`,
        `label_probability` in the answer).

        >>> done = gs.reconstruct("pixelcnn-digits", images, mask=top_half, seed=3)  # doctest: +SKIP
        >>> done.reconstruction.shape, done.labels                                    # doctest: +SKIP
        """
        options = {
            "version": version,
            "seed": seed,
            "particles": particles,
            "context": context,
            "steps": steps,
            "strength": strength,
        }
        return self._call(*reconstruct_request(self.settings, model, inputs, labels, mask, options), timeout)

    # --- sending ---------------------------------------------------------------------------
    def _call(self, prepared: Prepared, read: Reader[T], timeout: float | None) -> T:
        attempts = Attempts(self.settings.retry, timeout if timeout is not None else self.settings.timeout)
        while True:
            sent = attempts.stamp(prepared)
            try:
                response = self._http.request(
                    sent.method,
                    sent.path,
                    params=sent.params or None,
                    json=sent.json,
                    content=sent.content,
                    headers=sent.headers or None,
                    timeout=transport_timeout(self.settings, attempts.remaining()),
                )
            except httpx.HTTPError as exc:
                wait = attempts.next_wait(None) if retryable(exc) else None
                if wait is None:
                    raise transport_error(exc, self.settings.url) from exc
                time.sleep(wait)
                continue
            wait = attempts.next_wait(response)
            if wait is None:
                return read(response)
            time.sleep(wait)

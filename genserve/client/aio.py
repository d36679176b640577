"""`AsyncClient`: the same API as `Client` for asyncio code (notebooks, services)."""

from __future__ import annotations

import asyncio
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
from .protocol import Labels, Prepared
from .results import ModelInfo, Reconstruction, Samples, Scores
from .retry import Attempts, RetryPolicy


class AsyncClient:
    """A genserve server's API for asyncio; every method is `Client`'s, awaited.

    >>> async with AsyncClient("http://127.0.0.1:8000") as gs:               # doctest: +SKIP
    ...     draws = await asyncio.gather(*(gs.sample("vae-digits", 4, d, seed=d) for d in range(10)))
    """

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        binary_above: int | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.settings = Settings.of(url, token, timeout, retry, binary_above)
        self._http = httpx.AsyncClient(base_url=url, headers=self.settings.headers(), transport=transport)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def models(self) -> list[ModelInfo]:
        """See `Client.models`."""
        return await self._call(*models_request(), None)

    async def model(self, name: str, version: int | None = None) -> ModelInfo:
        """See `Client.model`."""
        return await self._call(*model_request(name, version), None)

    async def ready(self) -> bool:
        """See `Client.ready`."""
        try:
            return (await self._http.get("/health/ready", timeout=10)).status_code == 200
        except httpx.HTTPError:
            return False

    async def sample(
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
        """See `Client.sample`."""
        diffusion = {"steps": steps, "sampler": sampler, "guidance": guidance}
        prepared, read = sample_request(
            model, n, labels, version, seed, temperature, context, alpha, diffusion
        )
        return await self._call(prepared, read, timeout)

    async def log_likelihood(
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
        """See `Client.log_likelihood`."""
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
        return await self._call(*score_request(self.settings, model, inputs, labels, options), timeout)

    async def reconstruct(
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
        """See `Client.reconstruct`."""
        options = {
            "version": version,
            "seed": seed,
            "particles": particles,
            "context": context,
            "steps": steps,
            "strength": strength,
        }
        prepared, read = reconstruct_request(self.settings, model, inputs, labels, mask, options)
        return await self._call(prepared, read, timeout)

    async def _call(self, prepared: Prepared, read: Reader[T], timeout: float | None) -> T:
        attempts = Attempts(self.settings.retry, timeout if timeout is not None else self.settings.timeout)
        while True:
            sent = attempts.stamp(prepared)
            try:
                response = await self._http.request(
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
                await asyncio.sleep(wait)
                continue
            wait = attempts.next_wait(response)
            if wait is None:
                return read(response)
            await asyncio.sleep(wait)

"""The loaded models: open the store, verify, load into a backend, warm up, look up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import Batcher, BatchLimits
from .config import Settings
from .engine import Engine, build_engine
from .errors import FieldError, ModelNotFoundError, NotReadyError
from .manifest import Manifest
from .metrics import Metrics
from .resources import thread_layout
from .runtime import Backend, DeviceUnavailableError, load_backend
from .store import ModelStore, ModelVersion, StoreError

log = logging.getLogger("genserve.registry")


@dataclass
class LoadedModel:
    """One model version, loaded, with its engine."""

    version: ModelVersion
    backend: Backend
    engine: Engine

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def manifest(self) -> Manifest:
        return self.version.manifest

    @property
    def capabilities(self) -> list[str]:
        caps = ["sample"]
        if self.engine.can_score:
            caps.append("log-likelihood")
        if self.engine.can_reconstruct:
            caps.append("reconstruct")
        return caps


def warmup_inputs(manifest: Manifest, graph: str) -> dict[str, np.ndarray]:
    """Batch-of-one inputs (zeros, label 0) for every input of a graph."""
    spec = manifest.graph(graph)
    feeds: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = [1 if isinstance(d, str) else d for d in t.shape]
        feeds[t.name] = np.zeros(shape, dtype=np.int64 if t.dtype == "int64" else np.float32)
    return feeds


@dataclass
class Registry:
    """Models by name (latest version of each), plus what failed to load and why."""

    settings: Settings
    batcher: Batcher
    metrics: Metrics
    models: dict[str, LoadedModel] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def load(self) -> None:
        """Open, verify and load every configured model; failures are recorded, not raised.

        A DeviceUnavailableError (device=cuda without a GPU) is raised: that is a
        configuration error the operator must see at start-up.
        """
        store = ModelStore(self.settings.model_store)
        try:
            names = self.settings.models or store.names()
        except StoreError as exc:  # e.g. a store folder the server may not read
            names, self.failures["store"] = [], str(exc)
            log.error("model store not loaded: %s", exc)
        if not names and "store" not in self.failures:
            self.failures["store"] = f"no models in {self.settings.model_store}"
        threads, lanes = thread_layout(self.settings.threads, self.settings.lanes)
        for name in names:
            try:
                version = store.open(name)  # verifies every hash
            except StoreError as exc:
                self.failures[name] = str(exc)
                log.error("model %s not loaded: %s", name, exc)
                continue
            try:
                backend = load_backend(version, self.settings.backend, self.settings.device, threads, lanes)
            except DeviceUnavailableError:
                raise
            except Exception as exc:  # a verified file the runtime still refuses
                self.failures[name] = f"{name}/{version.version}: the runtime could not load it ({exc})"
                log.error("model %s not loaded: %s", name, self.failures[name])
                continue
            limits = BatchLimits(
                max_batch=self.settings.max_batch,
                max_delay=self.settings.max_delay_ms / 1000.0,
                max_queue=self.settings.max_queue,
            )
            engine = build_engine(
                version.manifest, self.batcher.caller(f"{name}/v{version.version}", backend, limits)
            )
            loaded = LoadedModel(version, backend, engine)
            self.models[name] = loaded
            self.metrics.model_info.labels(
                name, str(version.version), version.manifest.family, backend.name, backend.device
            ).set(1)
            log.info(
                "model %s v%d (%s) ready on %s with %s",
                name,
                version.version,
                version.manifest.family,
                backend.device,
                backend.name,
            )

    async def warm_up(self) -> None:
        """Run every graph once so the first request pays no initialisation."""
        for name, model in list(self.models.items()):
            try:
                for g in model.manifest.graphs:
                    feeds = warmup_inputs(model.manifest, g.name)
                    await self.batcher.run_direct(model.backend, g.name, feeds)
            except Exception as exc:
                self.failures[name] = f"{name}/{model.version.version}: warm-up failed ({exc})"
                log.error("model %s not loaded: %s", name, self.failures[name])
                model.backend.close()
                del self.models[name]

    @property
    def ready(self) -> bool:
        return bool(self.models) and not self.failures

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model `name` (at `version`, which must be the one loaded)."""
        model = self.models.get(name)
        if model is None and name in self.failures:
            # 503, not 404: the model exists but this replica could not load it; a load
            # balancer may retry on one that did.
            raise NotReadyError("that model failed verification or loading here; see /health/ready")
        if model is None:
            loaded = ", ".join(sorted(self.models)) or "none"
            msg = f"no loaded model named that (loaded: {loaded})"
            raise ModelNotFoundError(msg, [FieldError(["model"], msg)])
        if version is not None and version != model.version.version:
            msg = f"version {version} of {name} is not loaded (loaded: {model.version.version})"
            raise ModelNotFoundError(msg, [FieldError(["version"], msg)])
        return model

    def close(self) -> None:
        """Release every backend."""
        for model in self.models.values():
            model.backend.close()
        self.models.clear()

    def status(self) -> dict[str, Any]:
        """What /health/ready reports."""
        return {
            "ready": self.ready,
            "models": {n: f"v{m.version.version} on {m.backend.device}" for n, m in self.models.items()},
            "failures": self.failures,
        }

"""The loaded models: open the store, verify, load into a backend, warm up, look up."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import Batcher, BatchLimits
from .config import ModelEntry, Settings
from .datakinds import DataKind, data_kind
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
    entry: str = ""  # the `models` entry that loaded it: name or name@version
    kind: DataKind = field(init=False)

    def __post_init__(self) -> None:
        self.kind = data_kind(self.version.manifest)

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


_FAILED_HERE = "that model failed verification or loading here; see /health/ready"


@dataclass
class Registry:
    """The loaded model versions, plus what failed to load and why.

    Each configured entry loads one version: a name alone its latest, `name@version` that
    one. Several versions of a model may be loaded side by side; a request that names no
    version gets the highest one loaded.
    """

    settings: Settings
    batcher: Batcher
    metrics: Metrics
    loaded: dict[tuple[str, int], LoadedModel] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def load(self) -> None:
        """Open, verify and load every configured model; failures are recorded, not raised.

        A DeviceUnavailableError (device=cuda without a GPU) is raised: that is a
        configuration error the operator must see at start-up.
        """
        store = ModelStore(self.settings.model_store)
        try:
            entries = self.settings.model_entries or [ModelEntry(n, None) for n in store.names()]
        except StoreError as exc:  # e.g. a store folder the server may not read
            entries, self.failures["store"] = [], str(exc)
            log.error("model store not loaded: %s", exc)
        if not entries and "store" not in self.failures:
            self.failures["store"] = f"no models in {self.settings.model_store}"
        threads, lanes = thread_layout(self.settings.threads, self.settings.lanes)
        for entry in entries:
            name = entry.name
            try:
                version = store.open(name, entry.version)  # verifies every hash
            except StoreError as exc:
                self.failures[entry.label] = str(exc)
                log.error("model %s not loaded: %s", entry.label, exc)
                continue
            key = (name, version.version)
            if key in self.loaded:  # e.g. `name` and `name@<its latest>` both listed
                log.info("model %s v%d listed twice; loaded once", name, version.version)
                continue
            try:
                backend = load_backend(version, self.settings.backend, self.settings.device, threads, lanes)
            except DeviceUnavailableError:
                raise
            except Exception as exc:  # a verified file the runtime still refuses
                why = f"{name}/{version.version}: the runtime could not load it ({exc})"
                self.failures[entry.label] = why
                log.error("model %s not loaded: %s", entry.label, why)
                continue
            limits = BatchLimits(
                max_batch=self.settings.max_batch,
                max_delay=self.settings.max_delay_ms / 1000.0,
                max_queue=self.settings.max_queue,
            )
            engine = build_engine(
                version.manifest, self.batcher.caller(f"{name}/v{version.version}", backend, limits)
            )
            self.loaded[key] = LoadedModel(version, backend, engine, entry.label)
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
            if (cut := version.manifest.training.cut_short_warning()) is not None:
                log.warning("model %s v%d: %s", name, version.version, cut)

    async def warm_up(self) -> None:
        """Run every graph once so the first request pays no initialisation."""
        for key, model in list(self.loaded.items()):
            try:
                for g in model.manifest.graphs:
                    feeds = warmup_inputs(model.manifest, g.name)
                    await self.batcher.run_direct(model.backend, g.name, feeds)
            except Exception as exc:
                self.failures[model.entry] = f"{model.name}/{model.version.version}: warm-up failed ({exc})"
                log.error("model %s not loaded: %s", model.entry, self.failures[model.entry])
                model.backend.close()
                del self.loaded[key]

    @property
    def ready(self) -> bool:
        return bool(self.loaded) and not self.failures

    def models(self) -> list[LoadedModel]:
        """Every loaded version, by name and then version."""
        return [self.loaded[k] for k in sorted(self.loaded)]

    def _by_name(self) -> dict[str, list[LoadedModel]]:
        groups: dict[str, list[LoadedModel]] = {}
        for model in self.models():
            groups.setdefault(model.name, []).append(model)
        return groups

    def is_default(self, model: LoadedModel) -> bool:
        """Whether `model` answers the requests that name no version."""
        return model.name not in self.failures and model.version.version == self.versions(model.name)[-1]

    def versions(self, name: str) -> list[int]:
        """The loaded versions of `name`, ascending."""
        return sorted(v for n, v in self.loaded if n == name)

    def get(self, name: str, version: int | None = None) -> LoadedModel:
        """The loaded model `name` at `version` (default: the highest version loaded)."""
        versions = self.versions(name)
        # 503, not 404, for a model that exists but failed to load on this replica: a load
        # balancer may retry on one that did.
        if version is None:
            if name in self.failures:  # its latest version, the default, failed here
                raise NotReadyError(_FAILED_HERE)
            if versions:
                return self.loaded[name, versions[-1]]
        elif (name, version) in self.loaded:
            return self.loaded[name, version]
        elif f"{name}@{version}" in self.failures or (name in self.failures and not versions):
            raise NotReadyError(_FAILED_HERE)
        if not versions:
            loaded = ", ".join(sorted({n for n, _ in self.loaded})) or "none"
            msg = f"no loaded model named that (loaded: {loaded})"
            raise ModelNotFoundError(msg, [FieldError(["model"], msg)])
        msg = f"version {version} of {name} is not loaded (loaded: {', '.join(map(str, versions))})"
        raise ModelNotFoundError(msg, [FieldError(["version"], msg)])

    def close(self) -> None:
        """Release every backend."""
        for model in self.loaded.values():
            model.backend.close()
        self.loaded.clear()

    def status(self) -> dict[str, Any]:
        """What /health/ready reports."""
        return {
            "ready": self.ready,
            "models": {
                name: ", ".join(f"v{m.version.version}" for m in group) + f" on {group[-1].backend.device}"
                for name, group in self._by_name().items()
            },
            "failures": self.failures,
        }

"""The loaded models: open the store, verify, load into a backend, warm up, look up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batching import Batcher, BatchLimits
from .config import ModelEntry, Settings
from .datakinds import DataKind, data_kind
from .engine import Engine, build_engine
from .errors import FieldError, ModelLoadError, ModelNotFoundError, NotReadyError
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
    # Requests using this version now. An unloaded version leaves `Registry.loaded` at once
    # (no new request finds it) and closes its backend only when the last one is done.
    users: int = field(default=0, init=False)
    retired: bool = field(default=False, init=False)
    _idle: asyncio.Event | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.kind = data_kind(self.version.manifest)

    @contextlib.contextmanager
    def in_use(self) -> Iterator[LoadedModel]:
        """Hold the version for one request's work, so an unload waits for it to finish."""
        if self.retired and self.users == 0:
            # Found before an unload and used only after it closed: a retry finds the new one.
            raise NotReadyError(f"{self.name} v{self.version.version} was just unloaded; retry")
        self.users += 1
        try:
            yield self
        finally:
            self.users -= 1
            if self.users == 0 and self._idle is not None:
                self._idle.set()

    async def idle(self) -> None:
        """Return once no request is using the version."""
        while self.users:
            self._idle = asyncio.Event()
            await self._idle.wait()

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
    # Versions a live load refused (`name@version` -> why) while what served before still does.
    rejected: dict[str, str] = field(default_factory=dict)

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
        for entry in entries:
            try:
                version = store.open(entry.name, entry.version)  # verifies every hash
            except StoreError as exc:
                self.failures[entry.label] = str(exc)
                log.error("model %s not loaded: %s", entry.label, exc)
                continue
            if (entry.name, version.version) in self.loaded:  # `name` and `name@<its latest>`
                log.info("model %s v%d listed twice; loaded once", entry.name, version.version)
                continue
            try:
                model = self.build(version, entry.label)
            except ModelLoadError as exc:
                self.failures[entry.label] = exc.detail
                log.error("model %s not loaded: %s", entry.label, exc.detail)
                continue
            self.activate(model)

    def build(self, version: ModelVersion, label: str) -> LoadedModel:
        """A verified version in its backend, with its engine; not yet serving.

        Raises ModelLoadError when the runtime refuses a verified file, and
        DeviceUnavailableError (device=cuda without a GPU) as it is.
        """
        name = version.name
        threads, lanes = thread_layout(self.settings.threads, self.settings.lanes)
        try:
            backend = load_backend(version, self.settings.backend, self.settings.device, threads, lanes)
        except DeviceUnavailableError:
            raise
        except Exception as exc:  # a verified file the runtime still refuses
            raise ModelLoadError(f"{name}/{version.version}: the runtime could not load it ({exc})") from exc
        limits = BatchLimits(
            max_batch=self.settings.max_batch,
            max_delay=self.settings.max_delay_ms / 1000.0,
            max_queue=self.settings.max_queue,
        )
        engine = build_engine(
            version.manifest, self.batcher.caller(f"{name}/v{version.version}", backend, limits)
        )
        return LoadedModel(version, backend, engine, label)

    def activate(self, model: LoadedModel) -> None:
        """Make a built version answer requests (the highest loaded one answers those that name none)."""
        version = model.version
        self.loaded[model.name, version.version] = model
        self.metrics.model_info.labels(*self._info_labels(model)).set(1)
        log.info(
            "model %s v%d (%s) ready on %s with %s",
            model.name,
            version.version,
            version.manifest.family,
            model.backend.device,
            model.backend.name,
        )
        if (cut := version.manifest.training.cut_short_warning()) is not None:
            log.warning("model %s v%d: %s", model.name, version.version, cut)

    @staticmethod
    def _info_labels(model: LoadedModel) -> tuple[str, str, str, str, str]:
        m = model.version
        return (m.name, str(m.version), m.manifest.family, model.backend.name, model.backend.device)

    async def warm(self, model: LoadedModel) -> None:
        """Run every graph of a built version once, so that its first request pays no
        initialisation (and a graph the runtime cannot run fails here, not in a request)."""
        for g in model.manifest.graphs:
            feeds = warmup_inputs(model.manifest, g.name)
            await self.batcher.run_direct(model.backend, g.name, feeds)

    async def warm_up(self) -> None:
        """Warm every loaded version up; one that fails is unloaded and recorded."""
        for key, model in list(self.loaded.items()):
            try:
                await self.warm(model)
            except Exception as exc:
                self.failures[model.entry] = f"{model.name}/{model.version.version}: warm-up failed ({exc})"
                log.error("model %s not loaded: %s", model.entry, self.failures[model.entry])
                model.backend.close()
                del self.loaded[key]
                self.metrics.model_info.remove(*self._info_labels(model))

    async def retire(self, model: LoadedModel) -> None:
        """Unload a version: no new request finds it at once; the ones using it finish on
        it; then its backend is closed."""
        key = (model.name, model.version.version)
        if self.loaded.get(key) is model:
            del self.loaded[key]
        if model.retired:
            return
        model.retired = True
        with contextlib.suppress(KeyError):
            self.metrics.model_info.remove(*self._info_labels(model))
        await model.idle()
        await self.batcher.release(model.backend)
        model.backend.close()
        log.info("model %s v%d unloaded", model.name, model.version.version)

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
            **({"rejected": self.rejected} if self.rejected else {}),
        }

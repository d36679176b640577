"""Live model management: Triton's model-control modes over the registry.

- `none`: the versions loaded at start-up serve until the process restarts.
- `poll`: every `poll_interval_s` the store is listed (names and version numbers only, no
  hashing); each model that *follows its latest version* (an entry `name`, or every model
  when `GENSERVE_MODELS` is unset) loads a newly published version, which then answers
  the requests that name no version, and the version it replaces is unloaded. A model
  whose every version left the store is unloaded. Pinned entries (`name@version`) never move.
- `explicit`: the OIP model-repository extension (`index`, `load`, `unload`), always
  behind the access token.

A load verifies every hash, loads the backend and runs every graph once before the
version takes a request. Requests that found the old version finish on it (its backend
closes after the last one, `Registry.retire`). A version that fails leaves whatever served
before serving and is recorded with its reason; polling does not try it again until its
files change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from . import heap
from .config import Settings
from .errors import FieldError, GenserveError, ModelLoadError, ModelNotFoundError, NotReadyError
from .metrics import Metrics
from .registry import LoadedModel, Registry
from .store import ModelNotFoundError as NoSuchVersionError
from .store import ModelStore, StoreError

if TYPE_CHECKING:
    from .lifecycle import Lifecycle

log = logging.getLogger("genserve.models")

State = Literal["READY", "UNLOADING", "UNAVAILABLE"]
# The operations an OIP model name may end in: `load flow-digits.sample` loads flow-digits.
_OPERATION_SUFFIXES = (".sample", ".log_likelihood", ".reconstruct")
ABSENT_POLLS = 2  # polls in a row a followed model must be missing from the store to be unloaded


@dataclass(frozen=True)
class IndexEntry:
    """One line of the repository index: a model version and its state."""

    name: str
    version: str
    state: State
    reason: str = ""


Fingerprint = tuple[tuple[str, int, int, int, int], ...]


class ModelControl:
    """Loads and unloads model versions while the server runs (poll or explicit mode)."""

    def __init__(
        self, registry: Registry, settings: Settings, lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.mode = settings.model_control
        self.store = ModelStore(settings.model_store)
        entries = settings.model_entries
        self.every_model = entries is None  # poll also picks up models published later
        self.follow: set[str] = {e.name for e in entries or [] if e.version is None}
        self.pins: dict[str, set[int]] = {}
        for e in entries or []:
            if e.version is not None:
                self.pins.setdefault(e.name, set()).add(e.version)
        self.following: dict[str, int] = {}  # followed model -> the version serving for it
        self.rejected: dict[tuple[str, int], tuple[str, Fingerprint]] = {}
        self.retiring: dict[int, tuple[LoadedModel, asyncio.Task[None]]] = {}
        self._absent: dict[str, int] = {}  # followed model -> polls in a row it was not in the store
        self._lock = asyncio.Lock()
        self._poller: asyncio.Task[None] | None = None

    # --- start and stop ----------------------------------------------------------------
    def adopt(self) -> None:
        """Take over what start-up loaded: which version serves each followed model, and
        which versions failed (so polling does not retry them until they change)."""
        if self.every_model:
            self.follow = {n for n, _ in self.registry.loaded} | {
                label for label in self.registry.failures if label != "store"
            }
        for name in self.follow:
            versions = [v for v in self.registry.versions(name) if v not in self.pins.get(name, ())]
            if versions:
                self.following[name] = versions[-1]
            elif name in self.registry.failures:
                with contextlib.suppress(StoreError):
                    self._reject(name, self.store.latest(name), self.registry.failures[name])
        for label, reason in self.registry.failures.items():
            name, at, version = label.partition("@")
            if at:
                self._reject(name, int(version), reason)

    def start(self) -> None:
        """In poll mode, start reading the store every poll_interval_s."""
        if self.mode == "poll":
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(), name="genserve-poll")

    async def stop(self) -> None:
        """Stop polling and finish the unloads under way."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for _, task in list(self.retiring.values()):
            with contextlib.suppress(Exception):
                await task

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.poll_interval_s)
            try:
                await self.poll()
            except Exception:  # a poll that breaks must not end polling
                log.exception(
                    "reading the model store failed; trying again in %gs", self.settings.poll_interval_s
                )

    # --- poll mode ---------------------------------------------------------------------
    async def poll(self) -> None:
        """One look at the store: follow each followed model to its latest version."""
        async with self._lock:
            if self.lifecycle.draining:
                return
            listing = await asyncio.to_thread(self._listing)
            if listing is None:
                return
            if self.every_model:
                self.follow |= {n for n, versions in listing.items() if versions}
            for name in sorted(self.follow):
                if name not in listing:  # unreadable this time: leave it as it is
                    continue
                try:
                    await self._poll_model(name, listing[name])
                except Exception:  # one model's trouble must not starve the others
                    log.exception("polling model %s failed", name)

    async def _poll_model(self, name: str, versions: list[int]) -> None:
        if not versions:
            # Gone from a store that could be read: unloaded only when it is still gone at
            # the next poll (a version folder being replaced by hand, a slow remount), and
            # still followed, so that a version published again is loaded again.
            self._absent[name] = self._absent.get(name, 0) + 1
            if self._absent[name] >= ABSENT_POLLS and name in self.following:
                log.warning("model %s has no version left in the store; unloading it", name)
                self.following.pop(name)
                self._retire_unwanted(name)
            return
        self._absent.pop(name, None)
        latest = versions[-1]
        if latest == self.following.get(name) or self._known_bad(name, latest):
            return
        with contextlib.suppress(ModelLoadError):  # recorded and logged by _load
            await self._load(name, latest, name)
            self.following[name] = latest
            self._retire_unwanted(name)

    def _listing(self) -> dict[str, list[int]] | None:
        """Each model's published versions; a model that cannot be read is left out, and
        a store root that is missing or unreadable gives None (nothing is unloaded for it)."""
        try:
            if not self.store.root.is_dir():
                log.warning(
                    "the model store %s is missing; nothing changes until it is back", self.store.root
                )
                return None
            names = set(self.store.names()) if self.every_model else set()
        except (StoreError, OSError) as exc:
            log.warning("cannot list the model store: %s", exc)
            return None
        found: dict[str, list[int]] = {}
        for name in sorted(names | self.follow):
            try:
                found[name] = self.store.versions(name)
            except StoreError as exc:
                log.warning("cannot list model %s: %s", name, exc)
        return found

    def _known_bad(self, name: str, version: int) -> bool:
        bad = self.rejected.get((name, version))
        return bad is not None and bad[1] == self.store.fingerprint(name, version)

    # --- explicit mode -----------------------------------------------------------------
    async def load(self, name: str, version: int | None = None) -> None:
        """Load a model (the repository extension's load): `version` pins it to that version;
        without one, a pinned model reloads its pinned versions and any other follows its latest."""
        name = self.store_name(name)
        async with self._lock:
            if version is not None:
                await self._load(name, version, f"{name}@{version}")
                self.pins[name] = {version}
                self._stop_following(name)
            elif name in self.pins:
                for v in sorted(self.pins[name]):
                    await self._load(name, v, f"{name}@{v}")
            else:
                try:
                    latest = self.store.latest(name)
                except StoreError as exc:
                    raise ModelLoadError(f"{name}: {exc}") from None
                await self._load(name, latest, name)
                self.follow.add(name)
                self.following[name] = latest
            self._retire_unwanted(name)

    async def unload(self, name: str) -> None:
        """Unload every version of a model (the repository extension's unload); requests
        already running on it finish first."""
        name = self.store_name(name, loaded_ok=True)
        async with self._lock:
            self.pins.pop(name, None)
            self._stop_following(name)
            for label in [k for k in self.registry.failures if k.partition("@")[0] == name]:
                del self.registry.failures[label]
            for n, v in [k for k in self.rejected if k[0] == name]:
                self._forget_rejection(n, v)
            self._retire_unwanted(name)
            self._after_change()

    def store_name(self, name: str, loaded_ok: bool = False) -> str:
        """The store model a repository call names: a store name, or an OIP model name
        `<model>.<operation>` (which stands for its model)."""
        candidates = [name]
        for suffix in _OPERATION_SUFFIXES:
            if name.endswith(suffix):
                candidates.append(name.removesuffix(suffix))
        for candidate in candidates:
            if loaded_ok and self.registry.versions(candidate):
                return candidate
            try:
                if self.store.versions(candidate):
                    return candidate
            except StoreError:
                continue
        msg = f"no model {name[:80]!r} in the model store"
        raise ModelNotFoundError(msg, [FieldError(["model"], msg)])

    def index(self, ready_only: bool = False) -> list[IndexEntry]:
        """Every model of the store and every loaded version, with its state and why."""
        try:
            names = set(self.store.names())
        except StoreError as exc:
            raise NotReadyError(f"cannot list the model store: {exc}") from None
        entries: list[IndexEntry] = []
        names |= {n for n, _ in self.registry.loaded}
        for name in sorted(names):
            lines = [IndexEntry(name, str(v), "READY") for v in self.registry.versions(name)]
            lines += [
                IndexEntry(name, str(m.version.version), "UNLOADING", "requests in progress are finishing")
                for m, _ in self.retiring.values()
                if m.name == name
            ]
            if not ready_only:
                lines += [
                    IndexEntry(name, str(v), "UNAVAILABLE", reason)
                    for (n, v), (reason, _) in sorted(self.rejected.items())
                    if n == name and (n, v) not in self.registry.loaded
                ]
                if not lines:
                    lines.append(IndexEntry(name, "", "UNAVAILABLE", "not loaded"))
            entries += [e for e in lines if not ready_only or e.state == "READY"]
        return entries

    # --- loading and unloading ---------------------------------------------------------
    async def _load(self, name: str, version: int, label: str) -> LoadedModel:
        """Verify, load and warm one version, then let it take requests; ModelLoadError
        (with the reason, recorded) when any step fails."""
        existing = self.registry.loaded.get((name, version))
        if existing is not None:  # a store version never changes: nothing to reload
            return existing
        log.info("loading model %s v%d", name, version)
        # Taken before verifying: files that change while (or after) they are verified make
        # a different fingerprint, so polling tries them again.
        fingerprint = self.store.fingerprint(name, version)
        model: LoadedModel | None = None
        try:
            opened = await asyncio.to_thread(self.store.open, name, version)
            model = await asyncio.to_thread(self.registry.build, opened, label)
            await self.registry.warm(model)
        except asyncio.CancelledError:  # shutdown, or a gRPC caller's deadline: not a verdict
            if model is not None:
                model.backend.close()
            log.warning("loading model %s v%d was cancelled", name, version)
            raise
        except Exception as exc:  # verification, the runtime (a cuda device too), warm-up
            if model is not None:  # built, then failed its warm-up
                model.backend.close()
                reason = f"{name}/{version}: warm-up failed ({exc})"
            else:
                reason = exc.detail if isinstance(exc, GenserveError) else str(exc)
            if not isinstance(exc, NoSuchVersionError):  # nothing there to remember
                self._reject(name, version, reason, fingerprint)
            self.metrics.model_loads.labels(name, "refused").inc()
            serving = ", ".join(f"v{v}" for v in self.registry.versions(name)) or "nothing"
            log.error("model %s v%d refused (%s still serving): %s", name, version, serving, reason)
            raise ModelLoadError(f"{name} v{version} refused ({serving} still serving): {reason}") from None
        self.registry.activate(model)
        # A refusal of this version or an older one is history once this one serves.
        for n, v in [k for k in self.rejected if k[0] == name and k[1] <= version]:
            self._forget_rejection(n, v)
        for stale in (name, f"{name}@{version}", "store"):
            self.registry.failures.pop(stale, None)
        self.metrics.model_loads.labels(name, "loaded").inc()
        self._after_change()
        heap.settle()  # the new version's objects join the frozen heap
        return model

    def _reject(self, name: str, version: int, reason: str, fingerprint: Fingerprint | None = None) -> None:
        if fingerprint is None:
            fingerprint = self.store.fingerprint(name, version)
        self.rejected[name, version] = (reason, fingerprint)
        self.registry.rejected[f"{name}@{version}"] = reason

    def _forget_rejection(self, name: str, version: int) -> None:
        self.rejected.pop((name, version), None)
        self.registry.rejected.pop(f"{name}@{version}", None)

    def _stop_following(self, name: str) -> None:
        self.follow.discard(name)
        self.following.pop(name, None)

    def _retire_unwanted(self, name: str) -> None:
        """Unload, in the background, the loaded versions of `name` nothing asks for."""
        wanted = set(self.pins.get(name, ()))
        if name in self.following:
            wanted.add(self.following[name])
        for version in self.registry.versions(name):
            if version not in wanted:
                model = self.registry.loaded[name, version]
                # Out of `loaded` now, so no new request finds it; closed when the last
                # request using it is done.
                del self.registry.loaded[name, version]
                task = asyncio.get_running_loop().create_task(self._retire(model))
                self.retiring[id(model)] = (model, task)

    async def _retire(self, model: LoadedModel) -> None:
        try:
            await self.registry.retire(model)
            self.metrics.model_loads.labels(model.name, "unloaded").inc()
            heap.settle()  # the retired version's cycles, if any, are collected now
        finally:
            self.retiring.pop(id(model), None)

    def _after_change(self) -> None:
        """A server that started degraded becomes ready once every failure is resolved."""
        lc = self.lifecycle
        if lc.state == "degraded" and self.registry.ready:
            lc.state = "ready"
            lc.reason = ""
            self.metrics.ready.set(1)
            log.info("every model loaded: the server is ready")

"""The model store: versioned, self-describing, hash-verified model folders.

    <root>/<name>/<version>/manifest.json      the Manifest (see service.manifest)
    <root>/<name>/<version>/manifest.sha256    sha256 of manifest.json
    <root>/<name>/<version>/<graph>.onnx       one per graph (+ <graph>.onnx.data if external)
    <root>/<name>/<version>/<graph>.pt         TorchScript, one per graph

A version appears only by an atomic rename of a fully written, fsynced and verified
staging folder (`.staging-*`, never listed), so a reader never sees half a version and
a crash leaves nothing that looks complete. Names and versions come from the store's own
listing; anything that would leave the root is refused. Only ONNX and TorchScript files
are allowed, and nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import threading
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .manifest import FileEntry, Manifest

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}(?:\.[a-z0-9_-]+)*$")
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"
STAGING_PREFIX = ".staging-"
# Per model: publishers hold an exclusive flock on LOCK_FILE while they stage and commit;
# NEXT_VERSION records the next number, so a deleted latest version's number is never reused.
LOCK_FILE = ".lock"
NEXT_VERSION = ".next-version"
# Version folders are written by `Staging.commit` as str(int): "08" or "+8" are not versions.
VERSION_PATTERN = re.compile(r"^[1-9][0-9]{0,8}$")


class StoreError(Exception):
    """Base of everything the store refuses or cannot do."""


class InvalidNameError(StoreError):
    """A model name or version that is not a plain store entry (traversal, odd characters)."""


class ModelNotFoundError(StoreError):
    """No such model, or no such version of it."""


class IntegrityError(StoreError):
    """A version failed verification: hashes, allowlist, manifest schema or layout."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        super().__init__(f"{where}: " + "; ".join(problems))

    def __reduce__(self) -> tuple[type[IntegrityError], tuple[str, list[str]]]:
        # Rebuilt from its own arguments: a build worker process raises it to its parent.
        return (type(self), (self.where, self.problems))


def file_format(name: str) -> str | None:
    """The allowlisted format of a graph file by its name, or None when not allowed."""
    if name.endswith(".onnx.data"):
        return "onnx-data"
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".pt"):
        return "torchscript"
    return None


def sha256_file(path: Path) -> str:
    """Streaming sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reason(exc: OSError | UnicodeDecodeError) -> str:
    """What went wrong reading a file, with its name but not the whole path."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{Path(exc.filename).name}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_torchscript_archive(path: Path) -> bool:
    """A TorchScript archive is a zip with compiled code; a pickled state dict is not."""
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    except zipfile.BadZipFile:
        return False


@dataclass(frozen=True)
class ModelVersion:
    """A verified, complete model version on disk."""

    name: str
    version: int
    path: Path
    manifest: Manifest

    def file(self, relative: str) -> Path:
        """Absolute path of one of the version's files (as listed in its manifest)."""
        return self.path / relative


class ModelStore:
    """Read, verify and publish model versions under one root folder."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    # --- naming and paths ----------------------------------------------------------------
    @staticmethod
    def check_name(name: str) -> str:
        """Refuse anything but a plain entry name ('..', slashes, absolute paths, odd chars)."""
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
            raise InvalidNameError(f"invalid model name {name!r}")
        return name

    def _model_dir(self, name: str) -> Path:
        path = self.root / self.check_name(name)
        if path.is_symlink():
            raise InvalidNameError(f"model {name!r} is a symbolic link; refused")
        resolved_root = self.root.resolve()
        if not path.resolve().is_relative_to(resolved_root):
            raise InvalidNameError(f"model {name!r} resolves outside the store")
        return path

    def _version_dir(self, name: str, version: int) -> Path:
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise InvalidNameError(f"invalid version {version!r}")
        path = self._model_dir(name) / str(version)
        if path.is_symlink() or not path.resolve().is_relative_to(self.root.resolve()):
            raise InvalidNameError(f"version {name}/{version} is a link or leaves the store; refused")
        return path

    # --- listing ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Model names with at least one version folder."""
        try:
            if not self.root.is_dir():
                return []
            children = sorted(self.root.iterdir())
        except OSError as exc:
            raise StoreError(f"cannot read the store at {self.root} ({exc.strerror})") from None
        out = []
        for child in children:
            try:
                plain = not child.is_symlink() and NAME_PATTERN.fullmatch(child.name) and child.is_dir()
                if not plain:
                    continue
                listed = bool(self.versions(child.name))
            except (StoreError, OSError):
                # Unreadable: listed, so that opening it fails for this model alone (and
                # names the problem) instead of hiding it or failing every other model.
                listed = True
            if listed:
                out.append(child.name)
        return out

    def versions(self, name: str) -> list[int]:
        """Published versions of `name`, ascending (staging folders are never listed).

        A numbered folder without a manifest is listed too: publishing renames a complete
        folder into place, so such a folder is damage, and it must fail verification
        rather than be skipped, which would silently serve an older version instead.
        """
        folder = self._model_dir(name)
        try:
            if not folder.is_dir():
                return []
            found = [
                int(c.name)
                for c in folder.iterdir()
                if VERSION_PATTERN.fullmatch(c.name) and not c.is_symlink() and c.is_dir()
            ]
        except OSError as exc:  # e.g. a folder that may be listed but not searched
            raise StoreError(f"cannot read {folder} ({exc.strerror})") from None
        return sorted(found)

    def latest(self, name: str) -> int:
        """The highest complete version of `name`."""
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"no model named {name!r} in the store")
        return versions[-1]

    def fingerprint(self, name: str, version: int) -> tuple[tuple[str, int, int, int, int], ...]:
        """Each file's name, size, inode and change times in a version folder: cheap to read,
        and different once anything in it was rewritten or replaced (a refused version
        repaired in place, even by a copy that keeps sizes and modification times)."""
        try:
            path = self._version_dir(name, version)
            return tuple(
                (c.name, (st := c.stat()).st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
                for c in sorted(path.iterdir())
            )
        except (OSError, StoreError):
            return ()

    # --- reading and verifying -----------------------------------------------------------
    def open(self, name: str, version: int | None = None, verify: bool = True) -> ModelVersion:
        """Open `name` at `version` (default: latest), verifying every hash unless told not to."""
        if version is None:
            version = self.latest(name)
        try:
            path = self._version_dir(name, version)
            if not path.is_dir():
                raise ModelNotFoundError(f"model {name!r} has no version {version}")
            if not (path / MANIFEST).is_file():
                raise IntegrityError(f"{name}/{version}", [f"{MANIFEST} missing"])
            return self.verify_folder(path, name, version) if verify else self._read(path, name, version)
        except OSError as exc:  # a folder or file the server may not read
            raise IntegrityError(f"{name}/{version}", [f"unreadable ({_reason(exc)})"]) from None

    def _read(self, path: Path, name: str, version: int) -> ModelVersion:
        where = f"{name}/{version}"
        try:
            manifest = Manifest.model_validate_json((path / MANIFEST).read_bytes())
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:10]]
            raise IntegrityError(where, ["manifest does not match the schema", *problems]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(where, [f"manifest unreadable ({exc})"]) from None
        if manifest.name != name or manifest.version != version:
            raise IntegrityError(
                where, [f"manifest says {manifest.name}/{manifest.version}, folder is {where}"]
            )
        return ModelVersion(name=name, version=version, path=path, manifest=manifest)

    def verify_folder(self, path: Path, name: str, version: int) -> ModelVersion:
        """Check the manifest digest, schema, allowlist, and every file's size and sha256."""
        where = f"{name}/{version}"
        digest_file = path / MANIFEST_DIGEST
        try:
            expected = digest_file.read_text().strip()
            actual = sha256_file(path / MANIFEST)
            children = sorted(path.iterdir())
        except FileNotFoundError as exc:
            raise IntegrityError(where, [f"{Path(exc.filename or '').name} missing"]) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(where, [f"unreadable: {_reason(exc)}"]) from None
        if actual != expected:
            raise IntegrityError(where, ["manifest.json does not match manifest.sha256"])
        mv = self._read(path, name, version)
        listed = {f.path: f for f in mv.manifest.files}
        problems: list[str] = []
        for child in children:
            if child.name in (MANIFEST, MANIFEST_DIGEST):
                continue
            if child.is_symlink():
                problems.append(f"{child.name}: symbolic links are not allowed")
            elif not child.is_file():
                problems.append(f"{child.name}: unexpected folder")
            elif file_format(child.name) is None:
                problems.append(f"{child.name}: not an allowed format (ONNX or TorchScript only)")
            elif child.name not in listed:
                problems.append(f"{child.name}: not listed in the manifest")
        for entry in listed.values():
            try:
                problems.extend(self._check_entry(path, entry))
            except OSError as exc:
                problems.append(f"{entry.path}: unreadable ({_reason(exc)})")
        if problems:
            raise IntegrityError(where, problems)
        return mv

    @staticmethod
    def _check_entry(folder: Path, entry: FileEntry) -> list[str]:
        if "/" in entry.path or "\\" in entry.path or entry.path.startswith("."):
            return [f"{entry.path}: file names must be plain"]
        if file_format(entry.path) != entry.format:
            return [f"{entry.path}: listed as {entry.format}, which its name does not match"]
        target = folder / entry.path
        if not target.is_file() or target.is_symlink():
            return [f"{entry.path}: missing"]
        if target.stat().st_size != entry.bytes:
            return [f"{entry.path}: size {target.stat().st_size} != {entry.bytes}"]
        if sha256_file(target) != entry.sha256:
            return [f"{entry.path}: sha256 mismatch"]
        if entry.format == "torchscript" and not _is_torchscript_archive(target):
            return [f"{entry.path}: not a TorchScript archive"]
        return []

    def verify(self, name: str, version: int | None = None) -> ModelVersion:
        """Verify one version (default latest); raises IntegrityError listing the problems."""
        return self.open(name, version, verify=True)

    # --- publishing ------------------------------------------------------------------------
    def _writable_model_dir(self, name: str) -> Path:
        folder = self._model_dir(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StoreError(f"{folder} is a file, not a model folder") from None
        except OSError as exc:
            raise StoreError(f"cannot create {folder} ({exc.strerror})") from None
        return folder

    def _lock_key(self, name: str) -> tuple[str, str]:
        return (str(self.root.resolve()), self.check_name(name))

    def holds_lock(self, name: str) -> bool:
        """Whether this thread holds the model's publish lock (through any store object)."""
        held = _HELD.get(self._lock_key(name))
        return held is not None and held.owner == threading.get_ident()

    @contextlib.contextmanager
    def lock(self, name: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the model's publish lock: re-entrant in a thread, exclusive across threads
        and processes.

        A second publisher, e.g. another `build-store`, waits here until the first is done,
        so it can see the version just published instead of training and publishing a
        duplicate. Across processes it is an flock on `<name>/.lock` (the kernel drops it
        if its holder dies; on NFS, flock is only as good as the mount's lock support).
        Within a process, every store object on the same root shares one lock per model,
        so nesting two of them cannot deadlock. `on_wait` is called once if the lock is
        busy, before waiting for it. Readers (the server, `store list`) never take it.
        """
        key = self._lock_key(name)
        me = threading.get_ident()
        with _HELD_GUARD:
            held = _HELD.setdefault(key, _Held())
        with held.turn:
            if held.owner == me:
                held.depth += 1
                first = False
            else:
                if held.owner is not None and on_wait is not None:
                    on_wait()
                while held.owner is not None:
                    held.turn.wait()
                held.owner, held.depth, first = me, 1, True
        try:
            if first:
                held.fd = self._flock(name, on_wait)
            yield
        finally:
            # Plain bookkeeping, no thread-owned primitive: a context exited on another
            # thread (a thread pool's) releases it all the same.
            with held.turn:
                held.depth -= 1
                if held.depth == 0:
                    if held.fd is not None:
                        os.close(held.fd)  # releases the flock
                        held.fd = None
                    held.owner = None
                    held.turn.notify_all()

    def _flock(self, name: str, on_wait: Callable[[], None] | None) -> int:
        import fcntl  # here, not at the top: reading a store must work where fcntl is missing

        path = self._writable_model_dir(name) / LOCK_FILE
        try:
            # Opened for writing: only those who may publish may hold the lock (and NFS's
            # flock emulation needs it). Non-blocking open: a FIFO planted here must not hang.
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise StoreError(f"cannot lock {path} for publishing ({exc.strerror})") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{path} is not a regular file; cannot lock the model for publishing")
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def staging(self, name: str, on_wait: Callable[[], None] | None = None) -> Iterator[Staging]:
        """A private folder to write a new version into, under the model's publish lock;
        removed unless committed. Staging folders found then that no publisher of this
        process has open are from crashed publishes, and are deleted."""
        with self.lock(name, on_wait):
            folder = self._writable_model_dir(name)
            self.remove_stale_staging(name)
            stage = Staging(self, name, folder / f"{STAGING_PREFIX}{uuid.uuid4().hex}")
            try:
                stage.path.mkdir()
            except OSError as exc:
                raise StoreError(f"cannot write to {folder} ({exc.strerror})") from None
            live = stage.path.resolve()  # the same folder, however the store root is spelled
            _LIVE_STAGING.add(live)
            try:
                yield stage
            finally:
                _LIVE_STAGING.discard(live)
                if stage.path.exists():
                    shutil.rmtree(stage.path, ignore_errors=True)

    def remove_stale_staging(self, name: str) -> int:
        """Delete staging folders left by crashed publishes; returns how many.

        Only safe under the model's publish lock, where no other live publisher exists."""
        if not self.holds_lock(name):
            raise RuntimeError("remove_stale_staging needs the model's publish lock")
        folder = self._model_dir(name)
        if not folder.is_dir():
            return 0
        stale = [
            c
            for c in folder.iterdir()
            if c.name.startswith(STAGING_PREFIX) and c.is_dir() and c.resolve() not in _LIVE_STAGING
        ]
        for c in stale:
            shutil.rmtree(c, ignore_errors=True)
        return len(stale)

    def next_version(self, name: str) -> int:
        """The number the next publish gets: above every version published before, even
        one deleted since (so a client pinned to a number never gets other content)."""
        latest = (self.versions(name) or [0])[-1]
        path = self._model_dir(name) / NEXT_VERSION
        try:
            text = path.read_text().strip()
        except FileNotFoundError:  # a store from before the record existed
            return latest + 1
        except OSError as exc:
            raise StoreError(f"cannot read {path} ({exc.strerror})") from None
        if not VERSION_PATTERN.fullmatch(text):
            raise StoreError(f"{path} is damaged ({text[:20]!r}); it must hold the next version number")
        return max(latest + 1, int(text))

    def _record_next_version(self, name: str, version: int) -> None:
        """Record `version` + 1 as the next number (atomically, fsynced)."""
        if not VERSION_PATTERN.fullmatch(str(version + 1)):
            raise StoreError(f"{name} has run out of version numbers (at {version})")
        path = self._model_dir(name) / NEXT_VERSION
        tmp = path.with_name(f"{NEXT_VERSION}.{uuid.uuid4().hex}")
        try:
            with tmp.open("w") as fh:
                fh.write(f"{version + 1}\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot record the next version in {path} ({exc.strerror})") from None


@dataclass
class _Held:
    """A model's publish lock within this process: who holds it, how deep, its flock fd."""

    turn: threading.Condition = field(default_factory=threading.Condition)
    owner: int | None = None  # thread id
    depth: int = 0
    fd: int | None = None


_HELD_GUARD = threading.Lock()
_HELD: dict[tuple[str, str], _Held] = {}  # (store root, model name) -> its lock here
_LIVE_STAGING: set[Path] = set()  # staging folders of this process's live publishes


class Staging:
    """A version being written. Put graph files in `path`, then `commit` the manifest fields."""

    def __init__(self, store: ModelStore, name: str, path: Path) -> None:
        self.store = store
        self.name = name
        self.path = path

    def file_entries(self) -> list[FileEntry]:
        """Digests of the graph files written so far (only allowlisted files may be here)."""
        entries = []
        for child in sorted(self.path.iterdir()):
            if child.name in (MANIFEST, MANIFEST_DIGEST):
                continue
            fmt = file_format(child.name)
            if fmt is None or not child.is_file() or child.is_symlink():
                raise IntegrityError(f"{self.name}/staging", [f"{child.name}: not an allowed file"])
            entries.append(
                FileEntry(path=child.name, sha256=sha256_file(child), bytes=child.stat().st_size, format=fmt)
            )
        return entries

    def commit(self, fields: dict[str, Any], on_step: Callable[[str], None] | None = None) -> ModelVersion:
        """Hash the files, write and fsync the manifest, verify, and rename into place.

        `fields` is the manifest without `name`, `version` and `files`, which the store
        fills in. `on_step` is called before each step (used to test interrupted publishes).
        """
        step = on_step or (lambda _s: None)
        step("hash")
        entries = self.file_entries()
        floor = 0
        for _attempt in range(100):
            # Under the publish lock nobody else publishes; the retry below only matters
            # for a publisher that bypasses it (an older genserve on the same store).
            version = max(self.store.next_version(self.name), floor)
            step("manifest")
            manifest = Manifest.model_validate(
                {**fields, "name": self.name, "version": version, "files": [e.model_dump() for e in entries]}
            )
            blob = manifest.model_dump_json(indent=2).encode()
            (self.path / MANIFEST).write_bytes(blob)
            (self.path / MANIFEST_DIGEST).write_text(hashlib.sha256(blob).hexdigest() + "\n")
            step("fsync")
            for child in self.path.iterdir():
                with child.open("rb") as fh:
                    os.fsync(fh.fileno())
            _fsync_dir(self.path)
            step("verify")
            self.store.verify_folder(self.path, self.name, version)
            step("rename")
            try:
                target = self.store._version_dir(self.name, version)
            except InvalidNameError:  # a link planted at this number: never published over
                floor = version + 1
                continue
            # Recorded before the rename: a crash in between skips a number, never reuses one.
            self.store._record_next_version(self.name, version)
            try:
                # rename(2) onto a non-existent path is atomic; a concurrent publisher
                # that took this number makes it fail, and we try the next number.
                os.rename(self.path, target)
            except OSError:
                if target.exists() or target.is_symlink():
                    floor = version + 1
                    continue
                raise
            _fsync_dir(target.parent)
            step("done")
            return self.store._read(target, self.name, version)
        raise StoreError(f"could not find a free version number for {self.name}")

"""Publishing into a test store while a server reads it."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from service.store import MANIFEST, NEXT_VERSION, ModelStore


def republish(root: Path, name: str) -> int:
    """Publish the latest version's files again as a new version; its number."""
    store = ModelStore(root)
    latest = store.open(name)
    fields = json.loads((latest.path / MANIFEST).read_text())
    for key in ("name", "version", "files"):
        fields.pop(key)
    with store.staging(name) as stage:
        for entry in latest.manifest.files:
            shutil.copy2(latest.path / entry.path, stage.path / entry.path)
        return stage.commit(fields).version


def publish_corrupted(root: Path, name: str) -> int:
    """Publish a new version whose graph file is damaged (a disk fault, a bad copy): it fails
    verification. The version is built and damaged outside the store and renamed in whole, so
    a server polling the store never sees it undamaged. Its number."""
    scratch = root.parent / f".scratch-{uuid.uuid4().hex}"
    shutil.copytree(root / name, scratch / name)
    try:
        version = republish(scratch, name)
        folder = scratch / name / str(version)
        graph = next(p for p in sorted(folder.iterdir()) if p.suffix == ".onnx")
        data = bytearray(graph.read_bytes())
        data[len(data) // 2] ^= 0xFF
        graph.write_bytes(bytes(data))
        os.rename(folder, root / name / str(version))
        # the number is taken, as a publish in the store would have recorded
        shutil.copy2(scratch / name / NEXT_VERSION, root / name / NEXT_VERSION)
    finally:
        shutil.rmtree(scratch)
    return version


def damaged_copy(store: Path, into: Path, model: str = "vae-digits") -> Path:
    """A copy of `store` with one byte of `model` v1's first ONNX graph flipped (its hash
    no longer verifies)."""
    root = into / "store"
    shutil.copytree(store, root)
    victim = sorted((root / model / "1").glob("*.onnx"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return root

"""Publishing into a test store while a server reads it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from service.store import MANIFEST, ModelStore


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
    """Publish a new version, then damage one graph file in place (a disk fault, a bad
    copy): it fails verification. Its number."""
    version = republish(root, name)
    folder = root / name / str(version)
    graph = next(p for p in sorted(folder.iterdir()) if p.suffix == ".onnx")
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    return version

"""The store is the whole contract: every graph loads and runs with `training` unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter where any import of `training` (or its submodules) fails, so
# a hidden dependency of the service or the store on model code cannot go unnoticed.
SCRIPT = r"""
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "training" or name.startswith("training."):
            raise ImportError(f"blocked: {name}")
        return None

sys.meta_path.insert(0, Block())
import numpy as np
from service.runtime import open_backend
from service.store import ModelStore

try:
    import training  # noqa: F401
    raise SystemExit("training was importable")
except ImportError:
    pass

store = ModelStore(sys.argv[1])
ran = []
for name in store.names():
    version = store.open(name)  # verifies every hash
    for backend in ("onnxruntime", "torchscript"):
        impl = open_backend(version.manifest.graphs, version.path, backend, "cpu", 1)
        for g in version.manifest.graphs:
            rng = np.random.default_rng(0)
            feeds = {}
            for t in g.inputs:
                shape = [d if isinstance(d, int) else (3 if d == "batch" else 2) for d in t.shape]
                if t.dtype == "int64":
                    high = version.manifest.dataset.num_classes or 1
                    feeds[t.name] = rng.integers(0, high, size=shape).astype(np.int64)
                elif t.name == "x":
                    levels = version.manifest.dataset.levels
                    feeds[t.name] = rng.integers(0, levels, size=shape).astype(np.float32)
                else:
                    feeds[t.name] = rng.standard_normal(shape).astype(np.float32)
            outs = impl.run(g.name, feeds)
            assert set(outs) == {o.name for o in g.outputs}, (name, g.name)
            for o in outs.values():
                assert np.isfinite(o).all(), (name, backend, g.name)
                assert o.shape[0] == 3, (name, backend, g.name, o.shape)
            ran.append([name, backend, g.name])
        impl.close()
print(json.dumps(ran))
assert not any(m == "training" or m.startswith("training.") for m in sys.modules)
"""


def test_every_graph_runs_without_the_training_package(tiny_store: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_store)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ran = json.loads(out.stdout.strip().splitlines()[-1])
    graphs = {(m, g) for m, _, g in ran}
    assert {b for _, b, _ in ran} == {"onnxruntime", "torchscript"}
    assert len(graphs) == 3 + 3 + 1 + 3 + 1  # flow, vae, gan, pixelcnn (logits, two steps), diffusion
    assert len(ran) == 2 * len(graphs)

"""Whether two builds of the store made the same models: the reproducibility check.

    python -m bench.store_diff STORE_A STORE_B

For each model in both stores (latest versions) it compares what must not depend on the
machine or its load: the ONNX files' hashes, the TorchScript archives' tensors (the archives
themselves carry a random serialization id), every figure of the evaluation, the
calibration scores, the chosen sampling temperature and the epochs trained. Times, dates
and build durations are reported side by side, not compared. Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from service.store import ModelStore

# Fields that record when or how long, not what.
_TIMES = {"created", "duration_s", "training"}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _TIMES}
    return value


def fingerprint(store: Path, name: str) -> dict[str, Any]:
    """What one model's latest version must share with the same model built elsewhere."""
    version = ModelStore(store).open(name)
    manifest = json.loads((version.path / "manifest.json").read_text())
    tensors = {}
    for entry in manifest["files"]:
        if entry["format"] == "torchscript":
            state = torch.jit.load(version.path / entry["path"]).state_dict()
            tensors[entry["path"]] = {k: v.numpy().tobytes().hex() for k, v in state.items()}
    training = manifest["training"]
    return {
        "onnx": {f["path"]: f["sha256"] for f in manifest["files"] if f["format"] != "torchscript"},
        "torchscript": tensors,
        "evaluation": _strip(manifest["evaluation"]),
        "calibration": _strip(manifest["calibration"]),
        "sampling": manifest.get("sampling"),
        "epochs": (training["epochs"], training["best_epoch"], training["stopped"]),
        "cut_short": training.get("cut_short", False),
    }


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{path}.{k}")
        return out
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    args = parser.parse_args()
    names = sorted(set(ModelStore(args.a).names()) & set(ModelStore(args.b).names()))
    different = 0
    for name in names:
        diffs = _differences(fingerprint(args.a, name), fingerprint(args.b, name))
        ta = ModelStore(args.a).open(name, verify=False).manifest.training
        tb = ModelStore(args.b).open(name, verify=False).manifest.training
        times = f"training {ta.duration_s:.0f} s vs {tb.duration_s:.0f} s"
        print(f"{'SAME' if not diffs else 'DIFFERENT':9s} {name} ({times})")
        for d in diffs[:20]:
            print(f"    {d}")
        different += bool(diffs)
    print(f"{len(names) - different} of {len(names)} models identical")
    sys.exit(1 if different or not names else 0)


if __name__ == "__main__":
    main()

"""The peer a user would pick instead of genserve: KServe's Python ModelServer serving the
same exported ONNX graphs, written as KServe's docs suggest for a custom model.

Runs in its own virtual environment (bench/peer/env.py makes it: kserve, onnxruntime,
numpy), never in genserve's, and imports nothing from genserve: it reads the store's
manifest.json and graph files itself. It computes the same estimators as genserve and the
naive server (flows: S uniform-dequantization draws, log-mean-exp; VAEs: K importance
samples; PixelCNN: one pass), so the benchmark compares serving, not maths.

    python bench/peer/kserve_server.py --store model_store --port 8090

KServe v1 protocol, one KServe model per store model and operation:
    POST /v1/models/<model>:predict        {"instances": [[8x8 ints], ...], "labels": [..] or int}
    POST /v1/models/<model>-sample:predict {"instances": [{"n": 64, "labels": int, "seed": 0}]}
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import kserve
import numpy as np
import onnxruntime as ort


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def latest_version(store: Path, name: str) -> Path:
    versions = [int(p.name) for p in (store / name).iterdir() if p.name.isdigit()]
    return store / name / str(max(versions))


class StoreModel:
    """One store model's manifest and ONNX sessions (ONNX Runtime's defaults, as a user
    writes them: one session per graph, intra-op threads on every core)."""

    def __init__(self, folder: Path) -> None:
        self.manifest = json.loads((folder / "manifest.json").read_text())
        self.sessions = {
            g["name"]: ort.InferenceSession(
                str(folder / g["files"]["onnx"]), providers=["CPUExecutionProvider"]
            )
            for g in self.manifest["graphs"]
        }
        m = self.manifest
        self.family = m["family"]
        self.shape = tuple(m["dataset"]["shape"])
        self.levels = int(m["dataset"]["levels"])
        self.conditional = bool(m["conditioning"]["conditional"])
        self.samples = int(m["family_info"].get("default_samples", 1) or 1)

    def feeds(self, data: dict[str, np.ndarray], labels: Any, n: int) -> dict[str, np.ndarray]:
        if self.conditional:
            y = np.asarray(labels if labels is not None else 0, dtype=np.int64)
            data["y"] = np.broadcast_to(y, (n,)).copy()
        return data

    def log_likelihood(self, x: np.ndarray, labels: Any) -> np.ndarray:
        """x: [N, C, H, W] float32 grey levels -> log P(x) per row (nats)."""
        n, s, rng = len(x), self.sessions, np.random.default_rng(0)
        if self.family == "pixelcnn":
            (logits,) = s["logits"].run(None, self.feeds({"x": x}, labels, n))
            lp = np.take_along_axis(_log_softmax(logits), x.astype(np.int64)[..., None], -1)
            return lp.reshape(n, -1).sum(1)
        if self.family == "vae":
            dz = int(self.manifest["family_info"]["latent_dim"])
            eps = rng.standard_normal((n, self.samples, dz), dtype=np.float32)
            (logw,) = s["log_weights"].run(None, self.feeds({"x": x, "eps": eps}, labels, n))
            return np.logaddexp.reduce(logw.astype(np.float64), axis=1) - math.log(self.samples)
        u = rng.random((self.samples, *x.shape), dtype=np.float32)
        rows = (x[None] + u).reshape(self.samples * n, *x.shape[1:])
        tiled = np.tile(np.broadcast_to(np.asarray(labels if labels is not None else 0), (n,)), self.samples)
        (lp,) = s["log_prob"].run(None, self.feeds({"x": rows}, tiled, self.samples * n))
        return np.logaddexp.reduce(lp.reshape(self.samples, n).astype(np.float64), axis=0) - math.log(
            self.samples
        )

    def sample(self, n: int, labels: Any, seed: int) -> np.ndarray:
        s, rng, shape, k = self.sessions, np.random.default_rng(seed), self.shape, self.levels
        if self.family == "pixelcnn":
            x = np.zeros((n, *shape), dtype=np.float32)
            u = rng.random((n, *shape))
            for i in range(shape[1]):
                for j in range(shape[2]):
                    (logits,) = s["logits"].run(None, self.feeds({"x": x}, labels, n))
                    cdf = np.cumsum(np.exp(_log_softmax(logits[:, 0, i, j].astype(np.float64))), -1)
                    x[:, 0, i, j] = np.minimum((cdf < u[:, 0, i, j, None]).sum(-1), k - 1)
            out = x
        elif self.family == "flow":
            z = rng.standard_normal((n, *shape), dtype=np.float32)
            (out,) = s["inverse"].run(None, self.feeds({"z": z}, labels, n))
        elif self.family == "gan":
            z = rng.standard_normal((n, int(self.manifest["family_info"]["latent_dim"])), dtype=np.float32)
            (out,) = s["generate"].run(None, self.feeds({"z": z}, labels, n))
        else:
            z = rng.standard_normal((n, int(self.manifest["family_info"]["latent_dim"])), dtype=np.float32)
            (logits,) = s["decode"].run(None, self.feeds({"z": z}, labels, n))
            cdf = np.cumsum(np.exp(_log_softmax(logits.astype(np.float64))), -1)
            out = np.minimum((cdf < rng.random((n, *shape))[..., None]).sum(-1), k - 1)
        return np.clip(np.floor(out), 0, k - 1).astype(np.int64)


class StoreBacked(kserve.Model):
    """A KServe model over one store model's graphs, loaded at start-up."""

    def __init__(self, name: str, folder: Path) -> None:
        super().__init__(name)
        self.folder = folder
        self.store_model: StoreModel | None = None

    def load(self) -> bool:
        self.store_model = StoreModel(self.folder)
        self.ready = True
        return self.ready


class ScoreModel(StoreBacked):
    """`<model>`: the log-likelihood (and bits/dim) of each instance."""

    def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> dict[str, Any]:
        m = self.store_model
        assert m is not None
        x = np.asarray(payload["instances"], dtype=np.float32)[:, None]
        ll = m.log_likelihood(x, payload.get("labels"))
        d = int(np.prod(m.shape))
        return {
            "predictions": [
                {"log_likelihood": float(v), "bits_per_dim": float(-v / (d * math.log(2)))} for v in ll
            ]
        }


class SampleModel(StoreBacked):
    """`<model>-sample`: n samples of a label, seeded."""

    def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> dict[str, Any]:
        m = self.store_model
        assert m is not None
        ask = payload["instances"][0]
        out = m.sample(int(ask.get("n", 1)), ask.get("labels"), int(ask.get("seed", 0)))
        return {"predictions": out.tolist()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--store", type=Path, required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--models", default="flow-digits,vae-digits,pixelcnn-digits,gan-digits")
    a = p.parse_args()
    models: list[kserve.Model] = []
    for name in a.models.split(","):
        folder = latest_version(a.store, name)
        family = json.loads((folder / "manifest.json").read_text())["family"]
        if family != "gan":
            models.append(ScoreModel(name, folder))
        models.append(SampleModel(f"{name}-sample", folder))
    for m in models:
        m.load()
    kserve.ModelServer(http_port=a.port, workers=1, enable_grpc=False, enable_latency_logging=False).start(
        models
    )


if __name__ == "__main__":
    main()

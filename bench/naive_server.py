"""The baseline a user writes by hand: plain FastAPI, one ONNX Runtime session per graph,
synchronous endpoints that run the model once per request, no batching.

It computes the same estimators as genserve (so the comparison is of serving, not of
maths) with pydantic-parsed nested lists and json responses, like typical hand-written
servers. Run: GENSERVE_MODEL_STORE=model_store uvicorn --factory bench.naive_server:create_app
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from pydantic import BaseModel

from service.store import ModelStore


class ScoreBody(BaseModel):
    model: str
    inputs: list[list[list[int]]]
    labels: int | list[int] | None = None


class SampleBody(BaseModel):
    model: str
    n: int = 1
    labels: int | list[int] | None = None
    seed: int = 0


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def create_app() -> FastAPI:
    store = ModelStore(Path(os.environ.get("GENSERVE_MODEL_STORE", "model_store")))
    sessions: dict[str, dict[str, Any]] = {}
    manifests = {}
    for name in store.names():
        version = store.open(name)
        manifests[name] = version.manifest
        sessions[name] = {
            g.name: ort.InferenceSession(
                str(version.file(g.files["onnx"])), providers=["CPUExecutionProvider"]
            )
            for g in version.manifest.graphs
        }
    app = FastAPI()

    def feeds(name: str, data: dict[str, np.ndarray], labels: Any, n: int) -> dict[str, np.ndarray]:
        if manifests[name].conditioning.conditional:
            y = np.asarray(labels if labels is not None else 0, dtype=np.int64)
            data["y"] = np.broadcast_to(y, (n,)).copy()
        return data

    @app.post("/log-likelihood")
    def log_likelihood(body: ScoreBody) -> dict[str, Any]:
        m = manifests[body.model]
        s = sessions[body.model]
        x = np.asarray(body.inputs, dtype=np.float32)[:, None]
        n = len(x)
        samples = int(m.family_info.get("default_samples", 1) or 1)
        rng = np.random.default_rng(0)
        if m.family == "pixelcnn":
            (logits,) = s["logits"].run(None, feeds(body.model, {"x": x}, body.labels, n))
            lp = np.take_along_axis(_log_softmax(logits), x.astype(np.int64)[..., None], -1)
            ll = lp.reshape(n, -1).sum(1)
        elif m.family == "vae":
            dz = int(m.family_info["latent_dim"])
            eps = rng.standard_normal((n, samples, dz), dtype=np.float32)
            (logw,) = s["log_weights"].run(None, feeds(body.model, {"x": x, "eps": eps}, body.labels, n))
            ll = np.logaddexp.reduce(logw.astype(np.float64), axis=1) - math.log(samples)
        else:
            u = rng.random((samples, *x.shape), dtype=np.float32)
            rows = (x[None] + u).reshape(samples * n, *x.shape[1:])
            labels = np.tile(np.broadcast_to(np.asarray(body.labels or 0), (n,)), samples)
            (lp,) = s["log_prob"].run(None, feeds(body.model, {"x": rows}, labels, samples * n))
            ll = np.logaddexp.reduce(lp.reshape(samples, n).astype(np.float64), axis=0) - math.log(samples)
        d = int(np.prod(m.dataset.shape))
        return {
            "results": [
                {"log_likelihood": float(v), "bits_per_dim": float(-v / (d * math.log(2)))} for v in ll
            ]
        }

    @app.post("/sample")
    def sample(body: SampleBody) -> dict[str, Any]:
        m = manifests[body.model]
        s = sessions[body.model]
        rng = np.random.default_rng(body.seed)
        n, shape, k = body.n, m.dataset.shape, m.dataset.levels
        if m.family == "pixelcnn":
            x = np.zeros((n, *shape), dtype=np.float32)
            u = rng.random((n, *shape))
            for i in range(shape[1]):
                for j in range(shape[2]):
                    (logits,) = s["logits"].run(None, feeds(body.model, {"x": x}, body.labels, n))
                    cdf = np.cumsum(np.exp(_log_softmax(logits[:, 0, i, j].astype(np.float64))), -1)
                    x[:, 0, i, j] = np.minimum((cdf < u[:, 0, i, j, None]).sum(-1), k - 1)
            out = x
        elif m.family == "flow":
            z = rng.standard_normal((n, *shape), dtype=np.float32)
            (out,) = s["inverse"].run(None, feeds(body.model, {"z": z}, body.labels, n))
        elif m.family == "gan":
            z = rng.standard_normal((n, int(m.family_info["latent_dim"])), dtype=np.float32)
            (out,) = s["generate"].run(None, feeds(body.model, {"z": z}, body.labels, n))
        else:
            z = rng.standard_normal((n, int(m.family_info["latent_dim"])), dtype=np.float32)
            (logits,) = s["decode"].run(None, feeds(body.model, {"z": z}, body.labels, n))
            cdf = np.cumsum(np.exp(_log_softmax(logits.astype(np.float64))), -1)
            out = np.minimum((cdf < rng.random((n, *shape))[..., None]).sum(-1), k - 1)
        return {"samples": np.clip(np.floor(out), 0, k - 1).astype(int).tolist()}

    return app

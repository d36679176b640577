"""The HTTP API end to end (httpx against the ASGI app, lifespan included) on a tiny store."""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from service.core.validation import resolve_labels
from service.errors import InvalidInputError
from service.manifest import DatasetSpec
from service.outliers import METHODS
from tests.service.asgi import Client
from tests.service.servers import uvicorn_server
from training.data import load_dataset

FAMILIES = ["flow", "vae", "gan", "pixelcnn", "diffusion"]
LIKELIHOOD = ["flow", "vae", "pixelcnn", "diffusion"]
NPY = "application/x-npy"


@pytest.fixture(scope="module")
def client(tiny_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=tiny_store))
    yield c
    c.close()


@pytest.fixture(scope="module")
def ts_client(tiny_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=tiny_store, backend="torchscript"))
    yield c
    c.close()


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("digits").x[:6, 0]  # [6, 8, 8]


def model(family: str) -> str:
    return f"{family}-digits"


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    if field is not None:
        assert field in body["detail"]
        assert any(field in map(str, e["loc"]) for e in body.get("errors", [])), body
    return body


# --- models and health ------------------------------------------------------------------


def test_health_and_models(client: Client) -> None:
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    listed = {m["name"]: m for m in client.get("/models").json()}
    assert set(listed) == {model(f) for f in FAMILIES}
    for m in listed.values():
        assert m["device"] == "cpu"
        assert m["backend"] == "onnxruntime"
        assert m["labels"] == [str(i) for i in range(10)]
        assert m["data"]["shape"] == [1, 8, 8]
    assert listed[model("gan")]["capabilities"] == ["sample"]
    assert listed[model("vae")]["capabilities"] == ["sample", "log-likelihood", "reconstruct"]
    detail = client.get(f"/models/{model('pixelcnn')}").json()
    assert detail["outlier_detection"]["calibration"]["size"] > 100
    # the caps a client would otherwise learn from a 4xx (PixelCNN: its lower sampling cap)
    assert detail["limits"] == {
        "max_samples": 256,
        "max_rows": 20_000,
        "max_completion_rows": 256,
        "max_completion_particle_rows": 256,
        "max_importance_samples": 4096,
        "max_output_values": 20_000_000,
        "max_body_bytes": 64 * 1024 * 1024,
        "request_timeout_s": 120.0,
    }
    assert client.get(f"/models/{model('vae')}").json()["limits"]["max_samples"] == 1024
    assert "test_bpd" in detail["evaluation"]
    assert_problem(client.get("/models/nope"), 404)


def test_metrics_exposes_requests_and_models(client: Client) -> None:
    client.post("/sample", json={"model": model("gan"), "n": 2})
    text = client.get("/metrics").text
    assert 'genserve_requests_total{endpoint="/sample",model="gan-digits",status="200",version="1"}' in text
    assert 'genserve_model_info{backend="onnxruntime",device="cpu",family="gan"' in text
    assert "genserve_samples_total" in text
    assert "genserve_request_latency_seconds_bucket" in text


def _counts(text: str, metric: str, key: str) -> dict[tuple[str, str], float]:
    """(key label, stage) -> count of a histogram's vae-digits series on /metrics."""
    out = {}
    for line in text.splitlines():
        if line.startswith(f"{metric}_count") and 'model="vae-digits"' in line:
            labels = dict(
                part.split("=", 1) for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            out[(labels[key].strip('"'), labels["stage"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    return out


def test_metrics_break_each_endpoint_into_stages(client: Client, digits: np.ndarray) -> None:
    """parse, compute and serialize per endpoint; queue and compute per graph (the batcher),
    in two histograms, so that neither double counts the other."""
    client.post("/sample", json={"model": model("vae"), "n": 2, "labels": 1, "format": "png"})
    client.post("/log-likelihood", json={"model": model("vae"), "inputs": digits[:2].tolist(), "labels": 1})
    client.post("/reconstruct", json={"model": model("vae"), "inputs": digits[:2].tolist(), "labels": 1})
    text = client.get("/metrics").text
    stages = _counts(text, "genserve_stage_seconds", "endpoint")
    for endpoint in ("/sample", "/log-likelihood", "/reconstruct"):
        for stage in ("parse", "compute", "serialize"):
            assert stages.get((endpoint, stage), 0) >= 1, (endpoint, stage, stages)
    assert all(stage in ("parse", "compute", "serialize") for _, stage in stages)
    graphs = _counts(text, "genserve_graph_seconds", "graph")
    for graph in ("decode", "log_weights", "encode"):
        assert graphs.get((graph, "queue"), 0) >= 1 and graphs.get((graph, "compute"), 0) >= 1, graph
    assert 'genserve_graph_seconds_count{graph="decode",model="vae-digits",stage="queue",version="1"}' in text
    assert 'genserve_queue_depth{model="vae-digits",version="1"} 0.0' in text


# --- /sample ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_json_units_labels_and_seed(client: Client, family: str) -> None:
    body = {"model": model(family), "n": 4, "labels": [0, "3", 7, "9"], "seed": 42}
    r = client.post("/sample", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    x = np.asarray(out["samples"])
    assert x.shape == (4, 1, 8, 8)
    assert np.issubdtype(x.dtype, np.integer)
    assert 0 <= x.min() <= x.max() <= 16
    assert out["labels"] == [0, 3, 7, 9]
    assert out["label_names"] == ["0", "3", "7", "9"]
    assert out["seed"] == 42
    again = client.post("/sample", json=body).json()
    assert again["samples"] == out["samples"]
    other = client.post("/sample", json={**body, "seed": 43}).json()
    assert other["samples"] != out["samples"] or family == "gan"


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_png_and_npy(client: Client, family: str) -> None:
    r = client.post("/sample", json={"model": model(family), "n": 5, "format": "png", "labels": 2, "seed": 1})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    assert img.width > 64
    assert img.height > 64
    r = client.post("/sample", json={"model": model(family), "n": 3, "format": "npy", "seed": 1})
    assert r.headers["content-type"] == "application/x-npy"
    arr = np.load(io.BytesIO(r.content))
    assert arr.shape == (3, 1, 8, 8)
    assert r.headers["x-genserve-seed"] == "1"
    js = client.post("/sample", json={"model": model(family), "n": 3, "seed": 1}).json()
    # unlabelled samples of a conditional model draw labels from the prior, reproducibly
    assert len(js["labels"]) == 3
    np.testing.assert_array_equal(arr, np.asarray(js["samples"]))


def test_server_picks_and_returns_a_seed(client: Client) -> None:
    a = client.post("/sample", json={"model": model("vae"), "n": 2}).json()
    b = client.post("/sample", json={"model": model("vae"), "n": 2, "seed": a["seed"]}).json()
    assert a["samples"] == b["samples"]


@pytest.mark.parametrize("family", FAMILIES)
def test_seeded_samples_equal_across_backends(client: Client, ts_client: Client, family: str) -> None:
    body = {"model": model(family), "n": 4, "labels": 5, "seed": 99}
    onnx = client.post("/sample", json=body).json()
    ts = ts_client.post("/sample", json=body).json()
    assert ts_client.get("/models").json()[0]["backend"] == "torchscript"
    assert onnx["samples"] == ts["samples"]


def test_temperature_changes_samples(client: Client) -> None:
    body = {"model": model("flow"), "n": 4, "seed": 5, "labels": 1}
    cold = client.post("/sample", json={**body, "temperature": 0.1}).json()["samples"]
    hot = client.post("/sample", json={**body, "temperature": 1.0}).json()["samples"]
    assert cold != hot


@pytest.mark.parametrize("family", FAMILIES)
def test_default_temperature_is_the_manifests(client: Client, family: str) -> None:
    detail = client.get(f"/models/{model(family)}").json()["sampling"]
    default = detail["default_temperature"]
    if family == "pixelcnn":
        assert default == 1.0  # the model's own samples; no grid is tried
    elif family == "diffusion":
        # guidance and steps chosen on validation, every candidate's distance recorded
        assert default == 1.0
        steps, guidance = detail["default_steps"], detail["default_guidance"]
        assert steps in (10, 25, 50, 100) and guidance in (0.0, 0.5, 1.0, 2.0)
        assert f"steps {steps}, guidance {guidance:g}" in detail["validation_fid"]
        assert {f"steps 25, guidance {g:g}" for g in (0, 0.5, 1, 2)} <= set(detail["validation_fid"])
        body = {"model": model(family), "n": 2, "labels": 2, "seed": 8}
        implicit = client.post("/sample", json=body).json()
        assert (implicit["steps"], implicit["guidance"]) == (steps, guidance)
    else:
        # chosen on validation from the grid, with the distance of every candidate recorded
        assert str(default) in {f"{t:g}" for t in (1.0, 0.95, 0.9, 0.85, 0.8)} or default == 1.0
        assert set(detail["validation_fid"]) == {"1", "0.95", "0.9", "0.85", "0.8"}
        assert min(detail["validation_fid"].values()) == detail["validation_fid"][f"{default:g}"]
    body = {"model": model(family), "n": 3, "labels": 2, "seed": 8}
    implicit = client.post("/sample", json=body).json()
    explicit = client.post("/sample", json={**body, "temperature": default}).json()
    assert implicit["temperature"] == default
    assert implicit["samples"] == explicit["samples"]


# --- /log-likelihood --------------------------------------------------------------------


@pytest.mark.parametrize("family", LIKELIHOOD)
def test_log_likelihood_json_and_npy(client: Client, family: str, digits: np.ndarray) -> None:
    r = client.post("/log-likelihood", json={"model": model(family), "inputs": digits.tolist(), "labels": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["marginal"] is False
    assert out["estimator"]
    rows = out["results"]
    assert len(rows) == 6
    for row in rows:
        assert row["log_likelihood"] < 0
        assert row["bits_per_dim"] == pytest.approx(-row["log_likelihood"] / (64 * np.log(2)))
        assert row["outlier"]["method"] in set(METHODS)
        assert 0 < row["outlier"]["p_value"] <= 1
        assert row["outlier"]["is_outlier"] == (row["outlier"]["p_value"] <= 0.05)
    npy = client.post_npy(f"/log-likelihood?model={model(family)}&labels=3", digits.astype(np.uint8))
    assert npy.status_code == 200, npy.text
    assert [r["log_likelihood"] for r in npy.json()["results"]] == [r["log_likelihood"] for r in rows]


@pytest.mark.parametrize("family", LIKELIHOOD)
def test_marginal_and_posterior_without_labels(client: Client, family: str, digits: np.ndarray) -> None:
    out = client.post("/log-likelihood", json={"model": model(family), "inputs": digits.tolist()}).json()
    assert out["marginal"] is True
    for row in out["results"]:
        post = row["label_posterior"]
        assert set(post) == {str(i) for i in range(10)}
        assert sum(post.values()) == pytest.approx(1.0, abs=1e-6)
        assert row["predicted_label"] == max(post, key=post.get)


@pytest.mark.parametrize("family", LIKELIHOOD)
def test_scores_do_not_depend_on_the_batch(client: Client, family: str, digits: np.ndarray) -> None:
    body = {"model": model(family), "all_outlier_methods": True}
    together = client.post("/log-likelihood", json={**body, "inputs": digits.tolist()}).json()
    alone = client.post("/log-likelihood", json={**body, "inputs": digits[3:4].tolist()}).json()
    assert alone["results"][0] == together["results"][3]
    assert {o["method"] for o in alone["results"][0]["outliers"]} == set(METHODS)
    # Labelled: every method but the one that scores the label posterior, also batch-free.
    labelled = {**body, "labels": 3}
    together = client.post("/log-likelihood", json={**labelled, "inputs": digits.tolist()}).json()
    alone = client.post("/log-likelihood", json={**labelled, "inputs": digits[3:4].tolist()}).json()
    assert alone["results"][0] == together["results"][3]
    assert {o["method"] for o in alone["results"][0]["outliers"]} == set(METHODS) - {"label_ambiguity"}


@pytest.mark.parametrize("family", ["flow", "vae"])
def test_outlier_evidence_uses_the_calibration_noise(client: Client, family: str, digits: np.ndarray) -> None:
    # A sampled estimator's noise is shared by every row, so scores under other noise are
    # not exchangeable with the calibration scores: the outlier verdict must not move with
    # the request's seed, while the likelihood it reports does.
    body = {"model": model(family), "inputs": digits.tolist(), "all_outlier_methods": True}
    calibrated = client.post("/log-likelihood", json=body).json()["results"]
    other = client.post("/log-likelihood", json={**body, "seed": 5}).json()["results"]
    assert [r["log_likelihood"] for r in other] != [r["log_likelihood"] for r in calibrated]
    assert [r["outliers"] for r in other] == [r["outliers"] for r in calibrated]


@pytest.mark.parametrize("family", LIKELIHOOD)
def test_outlier_methods_and_benjamini_hochberg(client: Client, family: str, digits: np.ndarray) -> None:
    detail = client.get(f"/models/{model(family)}").json()["outlier_detection"]
    assert set(detail["methods"]) == set(METHODS)
    assert detail["default_method"] in detail["methods"]
    for m in detail["methods"].values():
        assert m["description"]
        assert set(m["validation_auroc"]) >= {"inverted", "constant", "blurred"}
    assert detail["calibration"]["statistics_from"] == "validation split"
    bg = detail["background_model"]
    assert bg["kind"] == "local-context" and bg["images"] > 0 and "log_probs" not in bg
    blank = np.zeros((2, 8, 8), dtype=np.int64)
    inputs = np.concatenate([digits, blank]).tolist()
    out = client.post(
        "/log-likelihood",
        json={"model": model(family), "inputs": inputs, "outlier_method": "typicality", "fdr": 0.2},
    ).json()
    rows = [r["outlier"] for r in out["results"]]
    assert all(r["method"] == "typicality" and r["fdr"] == 0.2 for r in rows)
    p = np.array([r["p_value"] for r in rows])
    selected = np.array([r["bh_selected"] for r in rows])
    # BH selects exactly a set of smallest p-values.
    assert not selected.any() or p[selected].max() <= p[~selected].min(initial=1.0)
    plain = client.post("/log-likelihood", json={"model": model(family), "inputs": inputs}).json()
    assert (
        "bh_selected" not in plain["results"][0]["outlier"]
        or plain["results"][0]["outlier"]["bh_selected"] is None
    )


def test_more_importance_samples_still_calibrated(client: Client, digits: np.ndarray) -> None:
    out = client.post(
        "/log-likelihood", json={"model": model("vae"), "inputs": digits.tolist(), "importance_samples": 7}
    ).json()
    assert out["importance_samples"] == 7
    assert "K=7" in out["estimator"]
    assert all(0 < r["outlier"]["p_value"] <= 1 for r in out["results"])


@pytest.mark.parametrize("endpoint", ["/log-likelihood", "/reconstruct"])
def test_gan_has_no_likelihood_or_encoder(client: Client, endpoint: str, digits: np.ndarray) -> None:
    body = assert_problem(
        client.post(endpoint, json={"model": model("gan"), "inputs": digits.tolist(), "labels": 0}), 422
    )
    assert "gan" in body["detail"]
    assert ("likelihood" if endpoint == "/log-likelihood" else "encoder") in body["detail"]


# --- /reconstruct -----------------------------------------------------------------------


@pytest.mark.parametrize("family", ["flow", "vae"])
def test_reconstruct_latents(client: Client, family: str, digits: np.ndarray) -> None:
    r = client.post(
        "/reconstruct", json={"model": model(family), "inputs": digits.tolist(), "labels": 1, "seed": 3}
    )
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    rec = np.asarray(out["reconstruction"])
    assert rec.shape == (6, 1, 8, 8)
    assert 0 <= rec.min() <= rec.max() <= 16
    lat = np.asarray(out["latent"])
    assert lat.shape[0] == 6
    if family == "flow":  # an invertible model reconstructs exactly
        np.testing.assert_array_equal(rec[:, 0], digits)
    assert r.json()["seed"] is None  # deterministic: the seed given is not used, none returned


@pytest.mark.parametrize("family", ["flow", "vae", "pixelcnn", "diffusion"])
def test_reconstruct_without_labels_uses_the_most_probable_class(
    client: Client, family: str, digits: np.ndarray
) -> None:
    body: dict[str, Any] = {"model": model(family), "inputs": digits.tolist(), "seed": 3}
    if family == "pixelcnn":  # every pixel known: the evidence is the whole image
        body["mask"] = np.ones_like(digits).tolist()
    r = client.post("/reconstruct", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    scored = client.post("/log-likelihood", json={"model": model(family), "inputs": digits.tolist()}).json()
    # The label used is the posterior's most probable one, with its probability.
    assert out["labels"] == [row["predicted_label"] for row in scored["results"]]
    expected = [max(row["label_posterior"].values()) for row in scored["results"]]
    np.testing.assert_allclose(out["label_probability"], expected, rtol=1e-6)
    assert all(0 < p <= 1 for p in out["label_probability"])
    # The answer is the reconstruction under that label, as if it had been given.
    again = client.post("/reconstruct", json={**body, "labels": out["labels"]}).json()
    assert again["outputs"]["reconstruction"] == out["outputs"]["reconstruction"]
    assert again["labels"] == out["labels"] and again["label_probability"] is None
    npz = client.post("/reconstruct", json={**body, "format": "npz"})
    cols = np.load(io.BytesIO(npz.content))
    names = client.get(f"/models/{model(family)}").json()["labels"]
    assert [names[i] for i in cols["labels"]] == out["labels"]
    np.testing.assert_allclose(cols["label_probability"], out["label_probability"])


def test_completion_without_labels_weighs_the_known_pixels_only(client: Client, digits: np.ndarray) -> None:
    # Whatever the missing pixels hold, the label comes from the known ones.
    mask = np.zeros_like(digits)
    mask[:, :4] = 1
    answers = []
    for fill in (0, 16):
        x = np.where(mask == 1, digits, fill)
        body = {"model": model("pixelcnn"), "inputs": x.tolist(), "mask": mask.tolist(), "seed": 1}
        r = client.post("/reconstruct", json=body)
        assert r.status_code == 200, r.text
        answers.append((r.json()["labels"], r.json()["label_probability"]))
    assert answers[0][0] == answers[1][0]
    np.testing.assert_allclose(answers[0][1], answers[1][1], rtol=1e-9)


def test_pixelcnn_completion_keeps_known_pixels(client: Client, digits: np.ndarray) -> None:
    mask = np.zeros_like(digits)
    mask[:, :4] = 1  # top half known
    body = {
        "model": model("pixelcnn"),
        "inputs": digits.tolist(),
        "mask": mask.tolist(),
        "labels": 2,
        "seed": 8,
    }
    out = client.post("/reconstruct", json=body).json()
    rec = np.asarray(out["outputs"]["reconstruction"])[:, 0]
    np.testing.assert_array_equal(rec[:, :4], digits[:, :4])
    assert 0 <= rec.min() <= rec.max() <= 16
    assert out["seed"] == 8
    assert client.post("/reconstruct", json=body).json()["outputs"] == out["outputs"]
    drawn = client.post("/reconstruct", json={**body, "seed": None}).json()["seed"]
    assert isinstance(drawn, int)  # the server picks a seed and returns it
    assert_problem(client.post("/reconstruct", json={**body, "mask": None}), 422, "mask")
    assert out["particles"] == 1  # the missing pixels all follow the known ones: exact


def test_pixelcnn_completion_of_a_hole_uses_particles(client: Client, digits: np.ndarray) -> None:
    mask = np.ones_like(digits)
    mask[:, 2:6, 2:6] = 0  # a hole: known pixels below and right of missing ones
    body = {"model": model("pixelcnn"), "inputs": digits.tolist(), "mask": mask.tolist(), "labels": 2}
    out = client.post("/reconstruct", json={**body, "seed": 4, "particles": 3}).json()
    assert out["particles"] == 3 and "particle filter" in out["description"]
    rec = np.asarray(out["outputs"]["reconstruction"])[:, 0]
    np.testing.assert_array_equal(rec[mask == 1], digits[mask == 1])
    assert 0 <= rec.min() <= rec.max() <= 16
    again = client.post("/reconstruct", json={**body, "seed": 4, "particles": 3}).json()
    assert again["outputs"] == out["outputs"]
    # By default as many particles as the sampling cap allows, up to 16 per row.
    assert client.post("/reconstruct", json=body).json()["particles"] == 16
    many = {**body, "inputs": [digits[0].tolist()] * 100, "mask": [mask[0].tolist()] * 100}
    assert client.post("/reconstruct", json=many).json()["particles"] == 2  # 256 // 100
    assert_problem(client.post("/reconstruct", json={**many, "particles": 3}), 422, "particles")
    # Too many rows for a filter of two: refused, not quietly completed without the known
    # pixels after the hole; particles=1 asks for that plain draw explicitly.
    most = {**body, "inputs": [digits[0].tolist()] * 129, "mask": [mask[0].tolist()] * 129}
    assert_problem(client.post("/reconstruct", json=most), 422, "inputs")
    plain = client.post("/reconstruct", json={**most, "particles": 1}).json()
    assert plain["particles"] == 1 and "not conditioned on" in plain["description"]


def test_reconstructions_as_npz_and_png(client: Client, digits: np.ndarray) -> None:
    body = {"model": model("vae"), "inputs": digits.tolist(), "labels": 1}
    as_json = client.post("/reconstruct", json=body).json()["outputs"]
    r = client.post("/reconstruct", json={**body, "format": "npz"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    assert "x-genserve-seed" not in r.headers  # a VAE reconstruction draws nothing
    with np.load(io.BytesIO(r.content), allow_pickle=False) as arrays:
        assert set(arrays.files) == set(as_json) | {"labels"}  # and the class used, by index
        assert arrays["labels"].tolist() == [1] * len(digits)
        for name in as_json:
            np.testing.assert_allclose(arrays[name], np.asarray(as_json[name]), rtol=1e-6)
    # An .npy body takes the format from the query string.
    buf = io.BytesIO()
    np.save(buf, digits.astype(np.int64))
    r = client.post(
        f"/reconstruct?model={model('flow')}&labels=1&format=npz",
        content=buf.getvalue(),
        headers={"content-type": "application/x-npy"},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(np.load(io.BytesIO(r.content))["reconstruction"][:, 0], digits)
    # PixelCNN: each input (missing pixels marked) beside its completion, labelled.
    mask = np.ones_like(digits)
    mask[:, 2:6, 2:6] = 0
    completion = {"model": model("pixelcnn"), "inputs": digits.tolist(), "labels": 2, "mask": mask.tolist()}
    r = client.post("/reconstruct", json={**completion, "seed": 5, "particles": 2, "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-genserve-seed"] == "5" and r.headers["x-genserve-particles"] == "2"
    img = Image.open(io.BytesIO(r.content))
    assert img.mode == "RGB" and img.width > 2 * img.height  # pairs: twice as wide as a square grid
    assert_problem(client.post("/reconstruct", json={**body, "format": "npy"}), 422, "format")


def test_particles_are_checked_where_they_mean_nothing(client: Client, digits: np.ndarray) -> None:
    for family in ("flow", "vae"):
        body = {"model": model(family), "inputs": digits.tolist(), "labels": 1, "particles": 2}
        assert_problem(client.post("/reconstruct", json=body), 422, "particles")
    bottom = np.ones_like(digits)
    bottom[:, 6:] = 0  # needs no particles, but the cap still holds
    body = {"model": model("pixelcnn"), "inputs": digits.tolist(), "labels": 1, "mask": bottom.tolist()}
    assert client.post("/reconstruct", json={**body, "particles": 4}).json()["particles"] == 1
    assert_problem(client.post("/reconstruct", json={**body, "particles": 1000}), 422, "particles")


# --- validation: every rule a 4xx naming the field, never a 500 ------------------------------


@pytest.mark.parametrize(
    ("endpoint", "body", "status", "field"),
    [
        ("/sample", {"model": "nope", "n": 1}, 404, "model"),
        ("/sample", {"model": "vae-digits", "version": 9, "n": 1}, 404, "version"),
        ("/sample", {"model": "vae-digits", "n": 0}, 422, "n"),
        ("/sample", {"model": "vae-digits", "n": 100000}, 422, "n"),
        ("/sample", {"model": "vae-digits", "n": 2, "labels": 10}, 422, "labels"),
        ("/sample", {"model": "vae-digits", "n": 2, "labels": "seven"}, 422, "labels"),
        ("/sample", {"model": "vae-digits", "n": 2, "labels": [1, 2, 3]}, 422, "labels"),
        ("/sample", {"model": "vae-digits", "n": 2, "temperature": 0}, 422, "temperature"),
        ("/sample", {"model": "vae-digits", "n": 2, "format": "gif"}, 422, "format"),
        ("/sample", {"model": "vae-digits", "n": 2, "seed": -1}, 422, "seed"),
        ("/sample", {"model": "vae-digits", "nn": 2}, 422, "nn"),
        ("/sample", {"n": 2}, 422, "model"),
        ("/log-likelihood", {"model": "vae-digits"}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[1, 2], [3]]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[0] * 7] * 8]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[0.5] * 8] * 8]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[17] * 8] * 8]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[-1] * 8] * 8]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[["a"] * 8] * 8]}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": "zeros"}, 422, "inputs"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[0] * 8] * 8], "labels": 11}, 422, "labels"),
        ("/log-likelihood", {"model": "vae-digits", "inputs": [[[0] * 8] * 8], "alpha": 1.5}, 422, "alpha"),
        (
            "/log-likelihood",
            {"model": "vae-digits", "inputs": [[[0] * 8] * 8], "importance_samples": 10**6},
            422,
            "importance_samples",
        ),
        (
            "/log-likelihood",
            {"model": "vae-digits", "inputs": [[[0] * 8] * 8], "outlier_method": "astrology"},
            422,
            "outlier_method",
        ),
        (
            "/log-likelihood",
            {
                "model": "vae-digits",
                "inputs": [[[0] * 8] * 8],
                "labels": 3,
                "outlier_method": "label_ambiguity",
            },
            422,
            "outlier_method",
        ),
        (
            "/reconstruct",
            {"model": "pixelcnn-digits", "inputs": [[[0] * 8] * 8], "labels": 0, "mask": [[[2] * 8] * 8]},
            422,
            "mask",
        ),
        (
            "/reconstruct",
            {"model": "pixelcnn-digits", "inputs": [[[0] * 8] * 8], "labels": 0, "mask": [[[1] * 8] * 7]},
            422,
            "mask",
        ),
    ],
)
def test_validation_rules(
    client: Client, endpoint: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    problem = assert_problem(client.post(endpoint, json=body), status, field)
    assert "zeros" not in problem["detail"]  # never echoes the input


def test_a_wrong_shape_is_reported_as_sent(client: Client) -> None:
    # A 3-D array gets a channel axis before the check; the message must not show that one.
    body = {"model": "vae-digits", "inputs": [[[1, 2]]]}
    problem = assert_problem(client.post("/log-likelihood", json=body), 422, "inputs")
    assert "got [1, 1, 2]" in problem["detail"], problem


def test_nan_and_infinity_are_refused(client: Client) -> None:
    for token in (b"NaN", b"Infinity"):
        raw = b'{"model": "vae-digits", "inputs": [[[' + b", ".join([token] * 8) + b"]]]}"
        r = client.post("/log-likelihood", content=raw, headers={"content-type": "application/json"})
        assert r.status_code in (400, 422)
        assert r.status_code != 500


def test_labels_for_an_unconditional_model(tmp_path: Path) -> None:
    from tests.conftest import TINY_TRAINING, TINY_ZOO
    from training.build import build_store
    from training.evaluate import EvalSettings

    build_store(
        tmp_path / "s",
        tmp_path / "c",
        families=("gan",),
        conditional=False,
        progress=False,
        config_overrides=TINY_ZOO,
        train_overrides=TINY_TRAINING,
        eval_settings=EvalSettings(quality_per_class=2, classifier_epochs=1),
    )
    c = Client(Settings(model_store=tmp_path / "s"))
    try:
        ok = c.post("/sample", json={"model": "gan-digits-uncond", "n": 2})
        assert ok.status_code == 200
        assert ok.json()["labels"] is None
        assert_problem(
            c.post("/sample", json={"model": "gan-digits-uncond", "n": 2, "labels": 1}), 422, "labels"
        )
    finally:
        c.close()


def test_malformed_json_and_content_types(client: Client) -> None:
    assert_problem(
        client.post("/sample", content=b"{oops", headers={"content-type": "application/json"}), 400
    )
    assert_problem(
        client.post("/sample", content=b"[1, 2]", headers={"content-type": "application/json"}), 400
    )
    assert_problem(client.post("/sample", content=b"{}", headers={"content-type": "text/plain"}), 415)
    assert_problem(client.post("/sample", content=b"n=1", headers={}), 415)
    assert_problem(
        client.post(
            "/log-likelihood?model=vae-digits",
            content=b"not npy",
            headers={"content-type": "application/x-npy"},
        ),
        400,
    )


def npy_header(descr: str, shape: str) -> bytes:
    """A version 1.0 .npy header, written by hand so it can lie about the data."""
    text = f"{{'descr': {descr}, 'fortran_order': False, 'shape': {shape}, }}"
    text += " " * (-(len(text) + 11) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1")


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        # a 200-byte body declaring 8 TB: np.load would try to allocate it (a 500 before)
        (npy_header("'<f8'", "(1000000000000,)"), 400, "do not match the 0 data bytes"),
        (npy_header("'|u1'", "(1, 8, 8)") + bytes(60), 400, "do not match the 60 data bytes"),
        (npy_header("'|u1'", "(1, 8, 8)") + bytes(70), 400, "do not match the 70 data bytes"),
        # two negative dimensions multiply to a positive size (reshape raised: a 500)
        (npy_header("'|u1'", "(-2, -32)") + bytes(64), 400, "invalid shape"),
        # numpy's reader lets these through too (found in review; each was a 500)
        (npy_header("'|u1'", "(True, 8, 8)") + bytes(64), 400, "invalid shape"),
        (npy_header("'|u1'", "(0, 9223372036854775807, 4)"), 400, "invalid shape"),
        (npy_header("'|u1'", f"({'9' * 2500}, {'9' * 2500})"), 400, "invalid shape"),
        (npy_header("'|O'", "(1, 8, 8)") + bytes(512), 422, "must be numeric"),  # never unpickled
        (npy_header("'<c8'", "(1, 8, 8)") + bytes(512), 422, "must be numeric"),
        (b"\x93NUMPY\x09\x00" + bytes(64), 400, "not a valid .npy"),
    ],
    ids=["huge", "short", "long", "negative", "bool", "overflow", "digits", "object", "complex", "version"],
)
def test_npy_header_is_checked_before_allocating(client: Client, body: bytes, status: int, says: str) -> None:
    r = client.post("/log-likelihood?model=vae-digits", content=body, headers={"content-type": NPY})
    assert says in assert_problem(r, status)["detail"]


def test_npy_reads_every_numeric_layout(client: Client, digits: np.ndarray) -> None:
    want = client.post_npy("/log-likelihood?model=vae-digits&labels=3", digits.astype(np.uint8)).json()
    for arr in (
        digits.astype(">f8"),
        np.asfortranarray(digits.astype(np.int32)),
        digits[:, None].astype(np.float16),
    ):
        r = client.post_npy("/log-likelihood?model=vae-digits&labels=3", arr)
        assert r.status_code == 200, r.text
        assert r.json()["results"] == want["results"]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        # int() of these raised ValueError past the query parsing (a 500 before)
        ("version=--5", "version"),
        ("seed=%C2%B2", "seed"),  # '²' passes str.isdigit
        ("importance_samples=1e3", "importance_samples"),
        ("labels=%C2%B2", "labels"),
        ("labels=--1", "labels"),
        ("labels=" + "1" * 5000, "labels"),  # past int()'s digit limit
        ("alpha=often", "alpha"),
        ("mask=1", "mask"),  # an .npy body carries the inputs only; a mask was dropped silently
        ("inputs=1", "inputs"),
    ],
)
def test_npy_query_parameters_are_validated(
    client: Client, digits: np.ndarray, query: str, field: str
) -> None:
    # a completion takes every field; the labels cases carry only their own labels
    path = (
        "/log-likelihood?model=vae-digits"
        if field == "labels"
        else "/reconstruct?model=pixelcnn-digits&labels=1"
    )
    r = client.post_npy(f"{path}&{query}", digits.astype(np.uint8))
    problem = assert_problem(r, 422, field)
    if field == "mask":
        assert "JSON body" in problem["detail"]


def test_openapi_documents_the_npy_query_and_a_call_with_all_of_it_works(
    client: Client, digits: np.ndarray
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    documented = {
        path: {q["name"] for q in paths[path]["post"]["parameters"] if q["in"] == "query"}
        for path in ("/log-likelihood", "/reconstruct")
    }
    assert documented["/log-likelihood"] == {
        "model", "version", "timeout", "labels", "importance_samples", "seed", "alpha",
        "outlier_method", "all_outlier_methods", "fdr", "context", "check_context", "format",
    }  # fmt: skip
    assert documented["/reconstruct"] == {
        "model",
        "version",
        "timeout",
        "labels",
        "context",
        "seed",
        "steps",
        "strength",
        "format",
    }
    version = client.get("/models/vae-digits").json()["version"]
    every = {
        "model": "vae-digits", "version": version, "timeout": 30, "labels": "1", "importance_samples": 4,
        "seed": 1, "alpha": 0.1, "outlier_method": "nll", "all_outlier_methods": "true", "fdr": 0.1,
        "check_context": "true",  # vector models' context check: a no-op on images
        "format": "json",
    }  # fmt: skip
    assert set(every) == documented["/log-likelihood"] - {"context"}  # vector models only
    query = "&".join(f"{k}={v}" for k, v in every.items())
    r = client.post_npy(f"/log-likelihood?{query}", digits[:2].astype(np.uint8))
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["outliers"]
    columns = client.post_npy(f"/log-likelihood?{query.replace('format=json', 'format=npz')}", digits[:2])
    assert columns.status_code == 200, columns.text
    arrays = np.load(io.BytesIO(columns.content), allow_pickle=False)
    assert arrays["bits_per_dim"].tolist() == [row["bits_per_dim"] for row in r.json()["results"]]


def test_a_mask_is_no_field_of_scoring(client: Client, digits: np.ndarray) -> None:
    r = client.post_npy("/log-likelihood?model=vae-digits&mask=1", digits.astype(np.uint8))
    assert "not permitted" in assert_problem(r, 422, "mask")["errors"][0]["msg"]


def test_unknown_field_names_are_named_but_cut(client: Client) -> None:
    problem = assert_problem(client.post("/sample", json={"model": "vae-digits", "x" * 10_000: 1}), 422)
    assert len(problem["errors"][0]["loc"][0]) < 100
    assert len(problem["detail"]) < 200


def _not_ready_reasons(settings: Settings) -> dict[str, Any]:
    c = Client(settings)
    try:
        assert c.get("/health/live").status_code == 200
        ready = c.get("/health/ready")
        assert ready.status_code == 503, ready.text
        return dict(ready.json()["failures"])
    finally:
        c.close()


def test_a_damaged_latest_version_leaves_the_server_not_ready(tiny_store: Path, tmp_path: Path) -> None:
    # A version folder without its manifest is damage; skipping it would serve the older one.
    store = tmp_path / "store"
    shutil.copytree(tiny_store / "gan-digits", store / "gan-digits")
    shutil.copytree(store / "gan-digits" / "1", store / "gan-digits" / "2")
    (store / "gan-digits" / "2" / "manifest.json").unlink()
    failures = _not_ready_reasons(Settings(model_store=store))
    assert "manifest.json missing" in failures["gan-digits"], failures


def test_an_unreadable_store_leaves_the_server_live_not_ready(
    tiny_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.iterdir

    def iterdir(self: Path) -> Iterator[Path]:
        if self == tiny_store:  # chmod does not stop root: refuse where the store reads
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    failures = _not_ready_reasons(Settings(model_store=tiny_store))
    assert "Permission denied" in failures["store"], failures


@pytest.mark.parametrize("label", [True, 3.0, [1, False]])
def test_labels_are_indices_or_names_not_booleans_or_floats(client: Client, label: Any) -> None:
    # lax parsing once turned `true` into class 1 and `3.0` into class 3
    r = client.post("/sample", json={"model": "vae-digits", "n": 2, "labels": label})
    assert_problem(r, 422, "labels")


def test_labels_one_for_all_rows_or_one_per_row_by_index_or_name(client: Client) -> None:
    def labels(value: Any) -> Any:
        r = client.post("/sample", json={"model": "vae-digits", "n": 3, "labels": value, "seed": 0})
        return r.json()["labels"] if r.status_code == 200 else assert_problem(r, 422)["detail"]

    assert labels("7") == labels(7) == [7, 7, 7]
    assert labels([1, "2", 9]) == [1, 2, 9]
    assert labels(10) == "labels: class index out of range 0..9"
    assert labels([1, "seven", 3]).startswith("labels.1: unknown class name")
    assert labels([1, 2]) == "labels: has 2 entries for 3 rows (give 1 or 3)"


def test_label_names_are_names_even_when_they_look_like_numbers() -> None:
    spec = DatasetSpec(name="pets", shape=(1, 2, 2), levels=2, label_names=["cat", "dog", "7"])
    assert resolve_labels("dog", 2, spec, True, "m").tolist() == [1, 1]
    assert resolve_labels(["7", 2, "cat", 1], 4, spec, True, "m").tolist() == [2, 2, 0, 1]
    with pytest.raises(InvalidInputError, match=re.escape("labels.1: class index out of range 0..2")):
        resolve_labels(["cat", 7], 2, spec, True, "m")
    with pytest.raises(InvalidInputError, match="labels: unknown class name"):
        resolve_labels("bird", 2, spec, True, "m")


def test_one_row_with_two_labels_says_give_one(client: Client, digits: np.ndarray) -> None:
    r = client.post_npy("/log-likelihood?model=vae-digits&labels=1,2", digits[:1].astype(np.uint8))
    assert "has 2 entries for 1 row (give one)" in assert_problem(r, 422, "labels")["detail"]


def test_an_empty_outlier_method_is_named_not_the_default(client: Client, digits: np.ndarray) -> None:
    body = {"model": "vae-digits", "inputs": digits[:1].tolist(), "labels": 1, "outlier_method": ""}
    assert_problem(client.post("/log-likelihood", json=body), 422, "outlier_method")


def test_an_exact_likelihood_reports_no_importance_samples(client: Client, digits: np.ndarray) -> None:
    body = {"model": "pixelcnn-digits", "inputs": digits[:2].tolist(), "labels": 1, "importance_samples": 999}
    out = client.post("/log-likelihood", json=body).json()
    assert (out["estimator"], out["importance_samples"]) == ("exact", 1)


def test_max_samples_caps_pixelcnn_too(tiny_store: Path) -> None:
    c = Client(Settings(model_store=tiny_store, models=["pixelcnn-digits"], max_samples=5))
    try:
        assert_problem(c.post("/sample", json={"model": "pixelcnn-digits", "n": 6}), 422, "n")
        assert c.post("/sample", json={"model": "pixelcnn-digits", "n": 5}).status_code == 200
    finally:
        c.close()


def test_the_denoiser_pass_cap_counts_steps_rows_and_an_inferred_label(
    tiny_store: Path, digits: np.ndarray
) -> None:
    c = Client(Settings(model_store=tiny_store, models=["diffusion-digits"], max_denoiser_passes=400))
    try:
        body = {"model": "diffusion-digits", "n": 4, "labels": 1, "steps": 100, "guidance": 0.0}
        assert c.post("/sample", json=body).status_code == 200  # 4 x 100 passes
        assert_problem(c.post("/sample", json={**body, "guidance": 1.0}), 422, "steps")  # twice that
        x = digits[:2]
        mask = np.ones_like(x)
        mask[..., 4:, :] = 0
        fill = {"model": "diffusion-digits", "inputs": x.tolist(), "mask": mask.tolist(), "steps": 10}
        assert c.post("/reconstruct", json={**fill, "labels": [1, 2]}).status_code == 200  # 2 x 10
        # Without labels every class also completes and scores each row: 2 x 10 x (10 + 16) more.
        assert_problem(c.post("/reconstruct", json=fill), 422, "steps")
    finally:
        c.close()


def test_a_client_leaving_mid_upload_is_a_499_not_a_server_error(client: Client) -> None:
    """The body never arrives: a network event, answered (for the logs and metrics) 499."""
    sent: list[dict[str, Any]] = []
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "path": "/log-likelihood",
        "raw_path": b"/log-likelihood",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"100000")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "root_path": "",
        "state": {},
    }
    chunks = iter([{"type": "http.request", "body": b'{"model": "va', "more_body": True}])

    async def receive() -> dict[str, Any]:
        return next(chunks, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    client.loop.run_until_complete(client.app(scope, receive, send))
    assert sent[0]["status"] == 499
    assert 'endpoint="/log-likelihood",model="-",status="499"' in client.get("/metrics").text


def test_body_and_output_size_limits(tiny_store: Path) -> None:
    c = Client(Settings(model_store=tiny_store, max_body_bytes=2048, max_output_values=640, max_rows=5))
    try:
        big = {"model": "vae-digits", "inputs": [[[0] * 8] * 8] * 50}
        assert_problem(c.post("/log-likelihood", json=big), 413)
        assert_problem(c.post("/sample", json={"model": "vae-digits", "n": 11}), 413)
        rows = {"model": "vae-digits", "inputs": [[[0] * 8] * 8] * 6}
        assert_problem(c.post("/log-likelihood", json=rows), 413)
    finally:
        c.close()


def test_unknown_route_and_method_are_problems(client: Client) -> None:
    assert_problem(client.get("/nothing-here"), 404)
    assert_problem(client.get("/sample"), 405)


# --- devices and a real server ----------------------------------------------------------------


def test_cuda_without_gpu_fails_fast_with_a_clear_message(tiny_store: Path) -> None:
    from service.runtime import DeviceUnavailableError, onnx_cuda_available

    if onnx_cuda_available():
        pytest.skip("a GPU is usable here")
    with pytest.raises(
        DeviceUnavailableError, match="device 'cuda' requested but onnxruntime sees no usable GPU"
    ):
        Client(Settings(model_store=tiny_store, device="cuda"))


def test_cli_serve_refuses_cuda_without_gpu(tiny_store: Path) -> None:
    from typer.testing import CliRunner

    from service.runtime import onnx_cuda_available
    from training.cli import app

    if onnx_cuda_available():
        pytest.skip("a GPU is usable here")
    result = CliRunner().invoke(app, ["serve", "--store", str(tiny_store), "--device", "cuda", "--no-build"])
    assert result.exit_code == 2
    assert "no usable GPU" in result.output


@pytest.fixture
def real_server(tiny_store: Path) -> Iterator[str]:
    """uvicorn serving the tiny store on a free loopback port, in a subprocess."""
    with uvicorn_server(tiny_store) as url:
        yield url


def _pixel_batches(url: str) -> float:
    """Batched PixelCNN `pixel_step` calls so far (one per pixel of a sampling loop), from
    the graph histogram on /metrics."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        wanted = 'graph="pixel_step"' in line and 'stage="compute"' in line
        if line.startswith("genserve_graph_seconds_count") and wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_real_disconnect_stops_a_sampling_loop(tiny_store: Path) -> None:
    """Through uvicorn: a client that hangs up mid-sample stops the loop within a few steps.

    A 20 ms batching delay makes each of the 64 pixel steps last at least 20 ms, so the
    whole sample takes over a second; the client leaves after 0.3 s.
    """
    import socket
    import time
    from urllib.parse import urlparse

    with uvicorn_server(tiny_store, GENSERVE_MODELS='["pixelcnn-digits"]', GENSERVE_MAX_DELAY_MS="20") as url:
        before = _pixel_batches(url)
        body = json.dumps({"model": "pixelcnn-digits", "n": 4, "seed": 1}).encode()
        port = urlparse(url).port
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall(
                b"POST /sample HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.3)
        time.sleep(1.5)  # longer than the rest of the loop would have taken
        steps = _pixel_batches(url) - before
        assert 0 < steps < 40  # 64 steps for a full 8x8 sample


def test_real_uvicorn_smoke(real_server: str, digits: np.ndarray) -> None:
    r = httpx.post(f"{real_server}/sample", json={"model": "pixelcnn-digits", "n": 2, "labels": 4, "seed": 1})
    assert r.status_code == 200
    assert np.asarray(r.json()["samples"]).shape == (2, 1, 8, 8)
    r = httpx.post(f"{real_server}/log-likelihood", json={"model": "flow-digits", "inputs": digits.tolist()})
    assert r.status_code == 200
    assert len(r.json()["results"]) == 6

"""The Open Inference Protocol over HTTP: the spec's endpoints, datatypes, binary data,
errors and status codes, on every family and on vectors; same numbers as the genserve API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from service.config import Settings
from service.oip.tensors import DTYPES
from tests.service.asgi import Client

HEADER = "inference-header-content-length"
DIGITS = np.random.default_rng(0).integers(0, 17, (3, 1, 8, 8))


@pytest.fixture(scope="module")
def client(tiny_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=tiny_store))
    yield c
    c.close()


def infer(client: Client, model: str, inputs: list[dict[str, Any]], **extra: Any) -> Any:
    return client.post(f"/v2/models/{model}/infer", json={"inputs": inputs, **extra})


def tensor(name: str, arr: np.ndarray, datatype: str) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": arr.reshape(-1).tolist()}


def outputs(response: Any) -> dict[str, np.ndarray]:
    """Output arrays of a JSON or binary OIP response, checked against the metadata's dtypes."""
    body = response.content
    length = response.headers.get(HEADER)
    head = orjson.loads(body if length is None else body[: int(length)])
    offset = 0 if length is None else int(length)
    out = {}
    for o in head["outputs"]:
        dtype = DTYPES[o["datatype"]]
        if "data" in o:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
        else:
            size = o["parameters"]["binary_data_size"]
            out[o["name"]] = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
    return out


def assert_error(response: Any, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    for w in words:
        assert w in body["error"], body["error"]
    return str(body["error"])


def test_server_metadata_health_and_model_listing(client: Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "genserve" and "binary_tensor_data" in meta["extensions"] and meta["version"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    for model, ops in {
        "flow-digits": ("sample", "log_likelihood", "reconstruct"),
        "vae-digits": ("sample", "log_likelihood", "reconstruct"),
        "pixelcnn-digits": ("sample", "log_likelihood", "reconstruct"),
        "gan-digits": ("sample",),
    }.items():
        version = str(client.get(f"/models/{model}").json()["version"])
        for op in ops:
            name = f"{model}.{op}"
            md = client.get(f"/v2/models/{name}").json()
            assert (
                md["name"] == name and md["versions"] == [version] and md["platform"].startswith("genserve_")
            )
            assert all(set(t) == {"name", "datatype", "shape"} for t in md["inputs"] + md["outputs"])
            assert client.get(f"/v2/models/{name}/versions/{version}").json() == md
            assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
            assert client.get(f"/v2/models/{name}/versions/{version}/ready").status_code == 200
    assert_error(client.get("/v2/models/gan-digits.log_likelihood"), 404, "gan-digits.sample")
    assert_error(client.get("/v2/models/nope.sample"), 404, "nope.sample")
    assert_error(client.get("/v2/models/flow-digits"), 404, "<model>.<operation>")
    assert_error(client.get("/v2/models/flow-digits.sample/versions/99"), 404)
    assert_error(client.get("/v2/models/flow-digits.sample/versions/x1"), 404)
    assert_error(client.get("/v2/models/flow-digits.sample/ready"[:-1] + "x"), 404)
    assert_error(client.post("/v2/models/nope.sample/infer", json={"inputs": []}), 404)


def test_log_likelihood_through_oip_equals_the_genserve_api_for_the_same_seed(client: Client) -> None:
    for model in ("flow-digits", "vae-digits", "pixelcnn-digits"):
        r = infer(
            client, f"{model}.log_likelihood", [tensor("inputs", DIGITS, "INT64")], parameters={"seed": 3}
        )
        assert r.status_code == 200, r.text
        head = r.json()
        assert head["model_name"] == f"{model}.log_likelihood" and head["parameters"]["seed"] == 3
        got = outputs(r)
        rows = client.post(
            "/log-likelihood", json={"model": model, "inputs": DIGITS.tolist(), "seed": 3}
        ).json()
        assert got["log_likelihood"].tolist() == [row["log_likelihood"] for row in rows["results"]]
        assert head["parameters"]["estimator"] == rows["estimator"]
        assert got["posterior"].shape == (3, 10) and got["is_outlier"].dtype == bool
        assert got["outlier_p_value"].tolist() == [row["outlier"]["p_value"] for row in rows["results"]]
        md = client.get(f"/v2/models/{model}.log_likelihood").json()
        declared = {t["name"]: t for t in md["outputs"]}
        for name, arr in got.items():  # every output as the metadata declares it
            assert list(arr.shape)[1:] == declared[name]["shape"][1:]
        assert head["outputs"][0]["datatype"] == declared["log_likelihood"]["datatype"] == "FP64"
    labelled = infer(
        client,
        "flow-digits.log_likelihood",
        [tensor("inputs", DIGITS, "INT64"), tensor("labels", np.array([1, 2, 3]), "INT64")],
    )
    assert "posterior" not in outputs(labelled) and labelled.json()["parameters"]["marginal"] is False


def test_binary_data_in_and_out_with_per_output_choices(client: Client) -> None:
    blob = DIGITS.astype(np.uint8).tobytes()
    head = {
        "id": "req-7",
        "inputs": [
            {
                "name": "inputs",
                "datatype": "UINT8",
                "shape": [3, 1, 8, 8],
                "parameters": {"binary_data_size": len(blob)},
            }
        ],
        "outputs": [
            {"name": "log_likelihood", "parameters": {"binary_data": True}},
            {"name": "is_outlier", "parameters": {"binary_data": True}},
            {"name": "bits_per_dim", "parameters": {"binary_data": False}},
        ],
    }
    js = orjson.dumps(head)
    r = client.post(
        "/v2/models/flow-digits.log_likelihood/infer", content=js + blob, headers={HEADER: str(len(js))}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream" and int(r.headers[HEADER]) < len(r.content)
    got = outputs(r)
    assert list(got) == ["log_likelihood", "is_outlier", "bits_per_dim"]  # only those asked for, in order
    reference = outputs(infer(client, "flow-digits.log_likelihood", [tensor("inputs", DIGITS, "INT64")]))
    assert got["log_likelihood"].tolist() == reference["log_likelihood"].tolist()
    assert got["is_outlier"].tolist() == reference["is_outlier"].tolist()
    assert orjson.loads(r.content[: int(r.headers[HEADER])])["id"] == "req-7"
    # binary_data_output for every output, JSON body in: binary out
    every = infer(
        client,
        "flow-digits.log_likelihood",
        [tensor("inputs", DIGITS, "INT64")],
        parameters={"binary_data_output": True},
    )
    assert (
        HEADER in every.headers
        and outputs(every)["log_likelihood"].tolist() == reference["log_likelihood"].tolist()
    )
    # no Content-Type at all (tritonclient sends none), or a wrong one: the header decides
    plain = client.post(
        "/v2/models/flow-digits.log_likelihood/infer",
        content=orjson.dumps({"inputs": [tensor("inputs", DIGITS, "INT64")]}),
        headers={"content-type": "application/octet-stream"},
    )
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"


def test_sample_and_reconstruct_through_oip(client: Client) -> None:
    labels = np.array([1, 2, 3, 4])
    r = infer(client, "pixelcnn-digits.sample", [tensor("labels", labels, "INT64")], parameters={"seed": 5})
    assert r.status_code == 200, r.text
    got = outputs(r)
    rest = client.post(
        "/sample", json={"model": "pixelcnn-digits", "n": 4, "labels": labels.tolist(), "seed": 5}
    ).json()
    assert got["samples"].tolist() == rest["samples"] and got["labels"].tolist() == labels.tolist()
    # n alone: labels drawn from the class prior and returned; a server-chosen seed reported
    drawn = infer(client, "gan-digits.sample", [tensor("n", np.array([6]), "INT64")])
    assert outputs(drawn)["samples"].shape == (6, 1, 8, 8) and isinstance(
        drawn.json()["parameters"]["seed"], int
    )
    rec = infer(
        client,
        "vae-digits.reconstruct",
        [tensor("inputs", DIGITS, "INT64"), tensor("labels", np.array([0, 1, 2]), "INT64")],
    )
    md = {t["name"]: t for t in client.get("/v2/models/vae-digits.reconstruct").json()["outputs"]}
    assert set(outputs(rec)) == set(md) - {"label_probability"}  # labels were sent
    assert outputs(rec)["labels"].tolist() == [0, 1, 2]
    inferred = outputs(infer(client, "vae-digits.reconstruct", [tensor("inputs", DIGITS, "INT64")]))
    assert set(inferred) == set(md)  # no labels: the most probable class and its probability
    assert np.all((inferred["label_probability"] > 0) & (inferred["label_probability"] <= 1))
    for name, arr in outputs(rec).items():
        assert list(arr.shape)[1:] == md[name]["shape"][1:]
    mask = np.ones((3, 1, 8, 8), dtype=bool)
    mask[:, :, 4:] = False
    done = infer(
        client,
        "pixelcnn-digits.reconstruct",
        [
            tensor("inputs", DIGITS, "INT64"),
            tensor("mask", mask, "BOOL"),
            tensor("labels", np.array([0, 1, 2]), "INT64"),
        ],
        parameters={"seed": 2},
    )
    assert done.status_code == 200, done.text
    completed = outputs(done)["reconstruction"]
    assert (completed[mask] == DIGITS[mask]).all() and done.json()["parameters"]["seed"] == 2


@pytest.mark.parametrize(
    ("model", "body", "status", "words"),
    [
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("inputs", DIGITS[:, :, :7], "INT64")]},
            400,
            ["inputs", "shape"],
        ),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("x", DIGITS, "INT64")]},
            400,
            ["x", "not an input"],
        ),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("labels", np.array([1]), "INT64")]},
            400,
            ["inputs", "required"],
        ),
        ("flow-digits.log_likelihood", {"inputs": [tensor("inputs", DIGITS + 20, "INT64")]}, 400, ["0..16"]),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("inputs", DIGITS, "INT64"), tensor("labels", np.array([10, 1, 1]), "INT64")]},
            400,
            ["labels", "range"],
        ),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("inputs", DIGITS, "INT64")], "parameters": {"seed": "x"}},
            400,
            ["parameters.seed"],
        ),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("inputs", DIGITS, "INT64")], "parameters": {"alpha": 2}},
            400,
            ["parameters.alpha"],
        ),
        (
            "flow-digits.log_likelihood",
            {"inputs": [tensor("inputs", DIGITS, "INT64")], "outputs": [{"name": "nope"}]},
            400,
            ["nope"],
        ),
        (
            "flow-digits.log_likelihood",
            {
                "inputs": [tensor("inputs", DIGITS, "INT64"), tensor("labels", np.array([1, 1, 1]), "INT64")],
                "outputs": [{"name": "posterior"}],
            },
            400,
            ["posterior", "not computed"],
        ),
        ("flow-digits.log_likelihood", {"inputs": "x"}, 400, ["inputs"]),
        ("flow-digits.sample", {"inputs": [tensor("n", np.array([0]), "INT64")]}, 400, ["n"]),
        ("flow-digits.sample", {"inputs": [tensor("n", np.array([10**6]), "INT64")]}, 400, ["n", "at most"]),
        (
            "flow-digits.sample",
            {"inputs": [tensor("n", np.array([2]), "INT64"), tensor("labels", np.array([1, 2, 3]), "INT64")]},
            400,
            ["labels"],
        ),
        (
            "flow-digits.reconstruct",
            {"inputs": [tensor("inputs", DIGITS, "INT64"), tensor("mask", DIGITS > 3, "BOOL")]},
            400,
            ["mask"],
        ),
    ],
)
def test_bad_requests_get_oip_errors_naming_the_field(
    client: Client, model: str, body: dict[str, Any], status: int, words: list[str]
) -> None:
    assert_error(client.post(f"/v2/models/{model}/infer", json=body), status, *words)


def test_malformed_bodies_and_headers(client: Client) -> None:
    url = "/v2/models/flow-digits.log_likelihood/infer"
    assert_error(client.post(url, content=b"{not json"), 400, "JSON")
    assert_error(client.post(url, content=b"[1]"), 400, "object")
    assert_error(
        client.post(url, content=b"{}", headers={HEADER: "99"}), 400, "Inference-Header-Content-Length"
    )
    js = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "inputs",
                    "datatype": "INT64",
                    "shape": [1, 1, 8, 8],
                    "parameters": {"binary_data_size": 512},
                }
            ]
        }
    )
    assert_error(
        client.post(url, content=js + b"\0" * 10, headers={HEADER: str(len(js))}), 400, "binary bytes"
    )


@pytest.fixture(scope="module")
def vectors(vector_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=vector_store))
    yield c
    c.close()


def test_posteriors_through_oip_with_fp32_and_fp16_inputs(vectors: Client) -> None:
    md = vectors.get("/v2/models/npe-two-moons.sample").json()
    assert {t["name"]: t["shape"] for t in md["inputs"]} == {"n": [1], "context": [-1, 2]}
    assert {"samples", "context_p_value", "context_is_outlier"} <= {t["name"] for t in md["outputs"]}
    x_o = np.array([[0.3, 0.55]], dtype=np.float32)
    r = vectors.post(
        "/v2/models/npe-two-moons.sample/infer",
        json={
            "inputs": [tensor("n", np.array([50]), "INT64"), tensor("context", x_o, "FP32")],
            "parameters": {"seed": 1},
        },
    )
    assert r.status_code == 200, r.text
    got = outputs(r)
    rest = vectors.post(
        "/sample", json={"model": "npe-two-moons", "n": 50, "context": x_o[0].tolist(), "seed": 1}
    ).json()
    assert got["samples"].tolist() == rest["samples"] and got["samples"].dtype == np.float64
    assert got["context_p_value"].tolist() == [rest["context_check"][0]["p_value"]]
    theta = np.array([[0.1, 0.2], [-0.4, 0.4]], dtype=np.float16)
    blob = theta.tobytes()
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "inputs",
                    "datatype": "FP16",
                    "shape": [2, 2],
                    "parameters": {"binary_data_size": len(blob)},
                },
                tensor("context", np.repeat(x_o, 2, 0), "FP32"),
            ]
        }
    )
    scored = vectors.post(
        "/v2/models/npe-two-moons.log_likelihood/infer", content=head + blob, headers={HEADER: str(len(head))}
    )
    assert scored.status_code == 200, scored.text
    by_rest = vectors.post(
        "/log-likelihood",
        json={
            "model": "npe-two-moons",
            "inputs": theta.astype(np.float64).tolist(),
            "context": x_o[0].tolist(),
        },
    ).json()["results"]
    assert outputs(scored)["log_likelihood"].tolist() == [row["log_likelihood"] for row in by_rest]
    outside = vectors.post(
        "/v2/models/npe-two-moons.log_likelihood/infer",
        json={"inputs": [tensor("inputs", np.array([[3.0, 0.0]]), "FP64"), tensor("context", x_o, "FP32")]},
    )
    assert_error(outside, 400, "support")
    assert_error(
        vectors.post(
            "/v2/models/npe-two-moons.log_likelihood/infer",
            json={"inputs": [tensor("inputs", theta, "FP64")]},
        ),
        400,
        "context",
    )

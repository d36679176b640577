"""Unmodified Triton clients against a real server process: metadata and inference for
every operation of every family, binary data in and out, the genserve API's numbers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.service.servers import free_port, uvicorn_server

th = pytest.importorskip("tritonclient.http")
DIGITS = np.random.default_rng(1).integers(0, 17, (4, 1, 8, 8)).astype(np.int64)
LABELS = np.array([3, 1, 4, 1], dtype=np.int64)


GRPC_PORT = free_port()


@pytest.fixture(scope="module")
def server(tiny_store: Path) -> Iterator[str]:
    """One server process for both protocols: HTTP, and gRPC on GRPC_PORT."""
    with uvicorn_server(tiny_store, GENSERVE_THREADS="1", GENSERVE_GRPC_PORT=str(GRPC_PORT)) as url:
        yield url


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    t = th.InferInput(name, list(arr.shape), datatype)
    t.set_data_from_numpy(arr, binary_data=binary)
    return t


def test_triton_http_client_sees_the_server_and_every_model(server: str) -> None:
    client = th.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    models = httpx.get(f"{server}/models").json()
    for m in models:
        for op in ("sample", "log_likelihood", "reconstruct"):
            name = f"{m['name']}.{op}"
            offered = op.replace("_", "-") in m["capabilities"]
            assert client.is_model_ready(name) == offered
            assert client.is_model_ready(name, str(m["version"])) == offered
            if offered:
                md = client.get_model_metadata(name, str(m["version"]))
                assert md["name"] == name and md["versions"] == [str(m["version"])]


def test_triton_http_infer_equals_the_genserve_api_for_every_operation(server: str) -> None:
    client = th.InferenceServerClient(server.removeprefix("http://"))
    for model in ("flow-digits", "vae-digits", "pixelcnn-digits"):
        r = client.infer(
            f"{model}.log_likelihood", [_input("inputs", DIGITS, "INT64")], parameters={"seed": 4}
        )
        rest = httpx.post(
            f"{server}/log-likelihood", json={"model": model, "inputs": DIGITS.tolist(), "seed": 4}
        ).json()
        assert r.as_numpy("log_likelihood").tolist() == [row["log_likelihood"] for row in rest["results"]]
        assert r.as_numpy("posterior").shape == (4, 10)
        assert r.as_numpy("is_outlier").tolist() == [row["outlier"]["is_outlier"] for row in rest["results"]]
        assert r.get_response()["parameters"]["estimator"] == rest["estimator"]
    for model in ("flow-digits", "vae-digits", "pixelcnn-digits", "gan-digits"):
        r = client.infer(f"{model}.sample", [_input("labels", LABELS, "INT64")], parameters={"seed": 9})
        rest = httpx.post(
            f"{server}/sample", json={"model": model, "n": 4, "labels": LABELS.tolist(), "seed": 9}
        ).json()
        assert r.as_numpy("samples").tolist() == rest["samples"]
    json_out = client.infer(
        "gan-digits.sample",
        [_input("n", np.array([3], dtype=np.int64), "INT64", binary=False)],
        outputs=[th.InferRequestedOutput("samples", binary_data=False)],
        parameters={"seed": 2},
    )
    assert json_out.as_numpy("samples").shape == (3, 1, 8, 8)
    mask = np.ones_like(DIGITS, dtype=bool)
    mask[:, :, 5:] = False
    r = client.infer(
        "pixelcnn-digits.reconstruct",
        [_input("inputs", DIGITS, "INT64"), _input("mask", mask, "BOOL"), _input("labels", LABELS, "INT64")],
        parameters={"seed": 3},
    )
    rest = httpx.post(
        f"{server}/reconstruct",
        json={
            "model": "pixelcnn-digits",
            "inputs": DIGITS.tolist(),
            "mask": mask.astype(int).tolist(),
            "labels": LABELS.tolist(),
            "seed": 3,
        },
    ).json()
    assert r.as_numpy("reconstruction").tolist() == rest["outputs"]["reconstruction"]
    r = client.infer(
        "vae-digits.reconstruct", [_input("inputs", DIGITS, "INT64"), _input("labels", LABELS, "INT64")]
    )
    assert r.as_numpy("latent").shape[0] == 4 and r.as_numpy("reconstruction").shape == DIGITS.shape


def test_triton_http_client_reads_oip_errors(server: str) -> None:
    from tritonclient.utils import InferenceServerException

    client = th.InferenceServerClient(server.removeprefix("http://"))
    with pytest.raises(InferenceServerException, match=r"no model 'nope\.sample'"):
        client.infer("nope.sample", [_input("n", np.array([1], dtype=np.int64), "INT64")])
    with pytest.raises(InferenceServerException, match="inputs: expected shape"):
        client.infer("flow-digits.log_likelihood", [_input("inputs", DIGITS[:, :, :5], "INT64")])


def test_triton_grpc_client_infers_every_operation_like_the_genserve_api(server: str) -> None:
    tg = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    client = tg.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "genserve"
    assert client.is_model_ready("vae-digits.reconstruct") and not client.is_model_ready(
        "gan-digits.reconstruct"
    )
    md = client.get_model_metadata("vae-digits.log_likelihood")
    assert [t.name for t in md.inputs] == ["inputs", "labels"] and md.outputs[0].datatype == "FP64"

    def grpc_input(name: str, arr: np.ndarray, datatype: str) -> Any:
        t = tg.InferInput(name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr)
        return t

    for model in ("flow-digits", "vae-digits", "pixelcnn-digits"):
        r = client.infer(
            f"{model}.log_likelihood", [grpc_input("inputs", DIGITS, "INT64")], parameters={"seed": 4}
        )
        rest = httpx.post(
            f"{server}/log-likelihood", json={"model": model, "inputs": DIGITS.tolist(), "seed": 4}
        ).json()
        assert r.as_numpy("log_likelihood").tolist() == [row["log_likelihood"] for row in rest["results"]]
        assert r.as_numpy("is_outlier").dtype == bool
        assert r.get_response().parameters["estimator"].string_param == rest["estimator"]
    r = client.infer("gan-digits.sample", [grpc_input("labels", LABELS, "INT64")], parameters={"seed": 9})
    rest = httpx.post(
        f"{server}/sample", json={"model": "gan-digits", "n": 4, "labels": LABELS.tolist(), "seed": 9}
    ).json()
    assert r.as_numpy("samples").tolist() == rest["samples"]
    r = client.infer(
        "flow-digits.reconstruct",
        [grpc_input("inputs", DIGITS, "INT64"), grpc_input("labels", LABELS, "INT64")],
    )
    assert r.as_numpy("latent").shape == DIGITS.shape
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.infer("nope.sample", [grpc_input("n", np.array([1], dtype=np.int64), "INT64")])
    with pytest.raises(InferenceServerException, match=r"INVALID_ARGUMENT.*inputs: expected shape"):
        client.infer("flow-digits.log_likelihood", [grpc_input("inputs", DIGITS[:, :, :5], "INT64")])


def test_grpc_typed_contents_are_read_like_raw_bytes(server: str) -> None:
    """KServe's client sends list data as typed contents rather than raw bytes. (Triton's
    messages: the protocol's, and the server's own cannot share a process with them.)"""
    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{GRPC_PORT}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="flow-digits.log_likelihood", id="typed")
        request.parameters["seed"].int64_param = 4
        t = request.inputs.add(name="inputs", datatype="INT64", shape=list(DIGITS.shape))
        t.contents.int64_contents.extend(DIGITS.reshape(-1).tolist())
        reply = stub.ModelInfer(request)
        assert reply.id == "typed" and reply.outputs[0].name == "log_likelihood"
        typed = np.frombuffer(reply.raw_output_contents[0], dtype="<f8")
        request.ClearField("inputs")
        raw = request.inputs.add(name="inputs", datatype="INT64", shape=list(DIGITS.shape))
        del raw  # the same tensor as raw bytes
        request.raw_input_contents.append(DIGITS.astype("<i8").tobytes())
        assert (
            np.frombuffer(stub.ModelInfer(request).raw_output_contents[0], dtype="<f8").tolist()
            == typed.tolist()
        )
        request.raw_input_contents.append(b"extra")
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_kserve_client_over_rest_and_grpc_gets_the_genserve_api_numbers(server: str) -> None:
    import importlib.util
    import json
    import subprocess
    import sys

    if importlib.util.find_spec("kserve") is None:  # found, not imported: see kserve_client.py
        pytest.skip("kserve is not installed")
    script = Path(__file__).with_name("kserve_client.py")
    port = server.rsplit(":", 1)[1]
    done = subprocess.run(
        [sys.executable, str(script), port, str(GRPC_PORT)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["rest_ready"] and got["rest_live"] and got["rest_model_ready"]
    assert got["grpc_ready"] and got["grpc_model_ready"]
    rest = httpx.post(
        f"{server}/log-likelihood", json={"model": "flow-digits", "inputs": got["inputs"], "seed": 4}
    ).json()
    expected = [row["log_likelihood"] for row in rest["results"]]
    for way in ("rest", "grpc_raw", "grpc_typed"):
        assert got[way]["log_likelihood"] == expected, way
        assert got[way]["is_outlier"] == [row["outlier"]["is_outlier"] for row in rest["results"]]


def test_with_a_token_grpc_and_http_clients_need_it(tiny_store: Path) -> None:
    tg = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    port = free_port()
    env = {"GENSERVE_THREADS": "1", "GENSERVE_GRPC_PORT": str(port), "GENSERVE_API_TOKEN": "tok-1"}
    with uvicorn_server(tiny_store, **env) as url:
        good = {"authorization": "Bearer tok-1"}
        grpc_client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        assert grpc_client.is_server_live() and grpc_client.is_server_ready()  # probes stay open
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            grpc_client.get_server_metadata()
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            grpc_client.get_server_metadata(headers={"authorization": "Bearer nope"})
        assert grpc_client.get_server_metadata(headers=good).name == "genserve"
        n = tg.InferInput("n", [1], "INT64")
        n.set_data_from_numpy(np.array([2], dtype=np.int64))
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            grpc_client.infer("gan-digits.sample", [n])
        assert grpc_client.infer("gan-digits.sample", [n], headers=good).as_numpy("samples").shape == (
            2,
            1,
            8,
            8,
        )
        http_client = th.InferenceServerClient(url.removeprefix("http://"))
        with pytest.raises(InferenceServerException, match="token"):
            http_client.get_server_metadata()
        assert http_client.get_server_metadata(headers=good)["name"] == "genserve"


def test_triton_clients_manage_models_in_explicit_mode(tiny_store: Path, tmp_path: Path, server: str) -> None:
    """The repository extension through tritonclient (HTTP and gRPC): index, unload, load;
    off (gRPC UNIMPLEMENTED, HTTP 404) on a server without explicit model control."""
    import shutil

    tg = pytest.importorskip("tritonclient.grpc")
    from tritonclient.utils import InferenceServerException

    off = tg.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    with pytest.raises(InferenceServerException, match="UNIMPLEMENTED"):
        off.get_model_repository_index()
    with pytest.raises(InferenceServerException):
        th.InferenceServerClient(server.removeprefix("http://")).load_model("flow-digits")

    store = tmp_path / "store"
    shutil.copytree(tiny_store / "flow-digits", store / "flow-digits")
    port = free_port()
    env = {
        "GENSERVE_THREADS": "1",
        "GENSERVE_GRPC_PORT": str(port),
        "GENSERVE_API_TOKEN": "tok-2",
        "GENSERVE_MODEL_CONTROL": "explicit",
    }
    good = {"authorization": "Bearer tok-2"}
    with uvicorn_server(store, **env) as url:
        http_client = th.InferenceServerClient(url.removeprefix("http://"))
        grpc_client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        assert "model_repository" in http_client.get_server_metadata(headers=good)["extensions"]
        with pytest.raises(InferenceServerException, match="token"):
            http_client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            grpc_client.unload_model("flow-digits")
        assert http_client.get_model_repository_index(headers=good) == [
            {"name": "flow-digits", "version": "1", "state": "READY", "reason": ""}
        ]
        grpc_client.unload_model("flow-digits.log_likelihood", headers=good)
        assert not http_client.is_model_ready("flow-digits.log_likelihood", headers=good)
        index = grpc_client.get_model_repository_index(headers=good).models
        assert [(m.name, m.state, m.reason) for m in index] == [("flow-digits", "UNAVAILABLE", "not loaded")]
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            grpc_client.load_model("nope", headers=good)
        with pytest.raises(InferenceServerException, match="configuration"):
            grpc_client.load_model("flow-digits", headers=good, config="{}")
        grpc_client.load_model("flow-digits", headers=good)
        assert grpc_client.is_model_ready("flow-digits.log_likelihood", headers=good)
        http_client.unload_model("flow-digits", headers=good)
        http_client.load_model("flow-digits", headers=good)
        assert http_client.is_model_ready("flow-digits.sample", "1", headers=good)

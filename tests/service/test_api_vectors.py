"""The API on vector models: the same routes, raw units in and out, a context beside labels."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.config import Settings
from tests.service.asgi import Client
from tests.service.test_api import assert_problem

NPE = "npe-two-moons"
TAB = "flow-wine"
X_O = [0.3, 0.55]


@pytest.fixture(scope="module")
def client(vector_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=vector_store))
    yield c
    c.close()


def test_models_describe_features_context_support_and_budget(client: Client) -> None:
    d = client.get(f"/models/{NPE}").json()
    data = d["data"]
    assert data["kind"] == "vectors" and data["features"] == ["theta_1", "theta_2"]
    assert data["context"] == ["x_1", "x_2"] and data["support"] == ["[-1, 1]", "[-1, 1]"]
    assert data["context_check"]["reference_contexts"] == 1000 and data["context_check"]["method"] == "nll"
    assert data["simulation"]["task"] == "two_moons" and data["simulation"]["simulations"] == 400
    assert d["capabilities"] == ["sample", "log-likelihood", "reconstruct"]
    assert "test_log_likelihood" in d["evaluation"] and d["evaluation"]["baselines"]
    tab = client.get(f"/models/{TAB}").json()
    assert (
        tab["data"]["context"] is None
        and tab["conditional"]
        and tab["labels"] == ["class_0", "class_1", "class_2"]
    )


def test_posterior_samples_for_an_observation_stay_in_the_prior_and_repeat_by_seed(client: Client) -> None:
    body = {"model": NPE, "n": 500, "context": X_O, "seed": 3}
    r = client.post("/sample", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    samples = np.asarray(out["samples"])
    assert (
        samples.shape == (500, 2) and out["features"] == ["theta_1", "theta_2"] and out.get("levels") is None
    )
    assert (np.abs(samples) < 1.0).all()
    assert client.post("/sample", json=body).json()["samples"] == out["samples"]
    other = client.post("/sample", json={**body, "context": [0.1, -0.3]}).json()["samples"]
    assert other != out["samples"]
    # one context per sample: row i is drawn given context i, batching changes nothing
    per_row = client.post("/sample", json={**body, "n": 2, "context": [X_O, [0.1, -0.3]]}).json()
    assert np.isfinite(per_row["samples"]).all() and len(per_row["context_check"]) == 2
    npy = client.post("/sample", json={**body, "format": "npy"})
    arr = np.load(io.BytesIO(npy.content))
    assert arr.dtype == np.float64 and np.array_equal(arr, samples)


def test_the_context_check_says_when_an_observation_is_one_the_simulator_cannot_produce(
    client: Client,
) -> None:
    usual = client.post("/sample", json={"model": NPE, "n": 10, "context": X_O, "seed": 1})
    (verdict,) = usual.json()["context_check"]
    assert not verdict["is_outlier"] and verdict["p_value"] > 0.05 and verdict["alpha"] == 0.05
    assert float(usual.headers["X-Genserve-Context-P-Value"]) == verdict["p_value"]
    odd = client.post("/sample", json={"model": NPE, "n": 10, "context": [40.0, -40.0], "alpha": 0.01}).json()
    (flagged,) = odd["context_check"]
    assert flagged["is_outlier"] and flagged["p_value"] == 1 / 1001 and flagged["alpha"] == 0.01
    rows = client.post(
        "/log-likelihood", json={"model": NPE, "inputs": [[0.1, 0.2]] * 2, "context": [X_O, [40.0, -40.0]]}
    ).json()["results"]
    assert not rows[0]["context_outlier"]["is_outlier"] and rows[1]["context_outlier"]["is_outlier"]
    # the simulator's own observations are flagged about as often as alpha says
    from training.vectors.sbi_tasks import get_task

    _, xs = get_task("two_moons").simulations(400, seed=123)
    body = {"model": NPE, "inputs": [[0.0, 0.0]] * 400, "context": xs.tolist()}
    verdicts = [
        r["context_outlier"]["is_outlier"]
        for r in client.post("/log-likelihood", json=body).json()["results"]
    ]
    assert 0.01 <= np.mean(verdicts) <= 0.11
    tab = client.post("/sample", json={"model": TAB, "n": 2, "labels": 0}).json()
    assert tab["context_check"] is None


def test_log_likelihood_in_nats_given_the_context_json_and_npy(client: Client) -> None:
    theta = [[0.1, 0.2], [-0.4, 0.4], [0.0, 0.0]]
    r = client.post("/log-likelihood", json={"model": NPE, "inputs": theta, "context": X_O})
    assert r.status_code == 200, r.text
    out = r.json()
    assert "θ | x" in out["density"] and out["estimator"].startswith("exact")
    rows = out["results"]
    assert all("bits_per_dim" not in row and np.isfinite(row["log_likelihood"]) for row in rows)
    assert all(0 < row["outlier"]["p_value"] <= 1 for row in rows)
    npy = client.post_npy(f"/log-likelihood?model={NPE}&context=0.3,0.55", np.asarray(theta))
    assert npy.status_code == 200, npy.text
    assert [a["log_likelihood"] for a in npy.json()["results"]] == [a["log_likelihood"] for a in rows]
    per_row = client.post(
        "/log-likelihood", json={"model": NPE, "inputs": theta, "context": [X_O] * 3}
    ).json()
    assert [a["log_likelihood"] for a in per_row["results"]] == [a["log_likelihood"] for a in rows]


def test_the_served_posterior_density_integrates_to_one_over_the_prior(client: Client) -> None:
    axis = np.linspace(-1, 1, 141)[:-1] + 1 / 140  # cell centres of a 140 x 140 grid over the support
    grid = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    r = client.post_npy(f"/log-likelihood?model={NPE}&context=0.3,0.55", grid)
    assert r.status_code == 200, r.text
    ll = np.array([row["log_likelihood"] for row in r.json()["results"]])
    cell = (axis[1] - axis[0]) ** 2
    assert abs(np.exp(ll).sum() * cell - 1.0) < 0.02


def test_a_labelled_table_gives_a_class_posterior(client: Client) -> None:
    from sklearn.datasets import load_wine

    x = load_wine().data[:4]
    r = client.post("/log-likelihood", json={"model": TAB, "inputs": x.tolist()})
    assert r.status_code == 200, r.text
    row = r.json()["results"][0]
    assert set(row["label_posterior"]) == {"class_0", "class_1", "class_2"}
    assert abs(sum(row["label_posterior"].values()) - 1.0) < 1e-9
    given = client.post("/log-likelihood", json={"model": TAB, "inputs": x.tolist(), "labels": "class_0"})
    assert given.status_code == 200 and given.json()["marginal"] is False
    s = client.post("/sample", json={"model": TAB, "n": 3, "labels": "class_1", "seed": 1}).json()
    assert np.asarray(s["samples"]).shape == (3, 13) and s["label_names"] == ["class_1"] * 3


def test_pictures_of_posterior_samples_and_reconstructions(client: Client) -> None:
    r = client.post("/sample", json={"model": NPE, "n": 300, "context": X_O, "format": "png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(r.content)).size[0] >= 200
    rec = client.post("/reconstruct", json={"model": NPE, "inputs": [[0.1, 0.2]], "context": X_O})
    assert rec.status_code == 200, rec.text
    np.testing.assert_allclose(rec.json()["outputs"]["reconstruction"], [[0.1, 0.2]], atol=1e-4)


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"model": NPE, "inputs": [[0.1, 0.2, 0.3]], "context": X_O}, "inputs", "expected shape [N, 2]"),
        ({"model": NPE, "inputs": [[0.1, 0.2]]}, "context", "conditioned on x_1, x_2"),
        ({"model": NPE, "inputs": [[0.1, 0.2]], "context": [0.3]}, "context", "expected shape"),
        ({"model": NPE, "inputs": [[0.1, 0.2]], "context": [[0.3, 0.5]] * 2}, "context", "2 rows for 1"),
        ({"model": NPE, "inputs": [[1.5, 0.2]], "context": X_O}, "inputs", "outside the model's support"),
        ({"model": NPE, "inputs": [[1.0, 0.2]], "context": X_O}, "inputs", "ends excluded"),
        ({"model": TAB, "inputs": [[0.0] * 13], "context": [1.0]}, "context", "takes no context"),
        ({"model": NPE, "inputs": [[0.1, 0.2]], "context": ["0.3", "x"]}, "context", "numbers"),
    ],
)
def test_bad_vector_input_is_a_4xx_naming_the_field(
    client: Client, body: dict, field: str, words: str
) -> None:
    problem = assert_problem(client.post("/log-likelihood", json=body), 422, field)
    assert words in problem["detail"] + str(problem.get("errors"))


def test_non_finite_inputs_and_contexts_are_refused(client: Client) -> None:
    bad = np.array([[0.1, np.nan]])
    assert_problem(client.post_npy(f"/log-likelihood?model={NPE}&context=0.3,0.55", bad), 422, "inputs")
    assert_problem(
        client.post_npy(f"/log-likelihood?model={NPE}&context=0.3,inf", np.zeros((1, 2))), 422, "context"
    )
    assert_problem(client.post("/sample", json={"model": NPE, "n": 2}), 422, "context")
    assert_problem(
        client.post("/sample", json={"model": NPE, "n": 2, "context": [[0.1, 0.2]] * 3}), 422, "context"
    )


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_an_npz_body_carries_inputs_and_a_context_per_row(client: Client) -> None:
    theta = np.array([[0.1, 0.2], [-0.4, 0.4], [0.0, 0.0]])
    ctx = np.array([X_O, [0.1, -0.3], X_O])
    headers = {"content-type": "application/x-npz"}
    r = client.post(f"/log-likelihood?model={NPE}", content=_npz(inputs=theta, context=ctx), headers=headers)
    assert r.status_code == 200, r.text
    by_json = client.post(
        "/log-likelihood", json={"model": NPE, "inputs": theta.tolist(), "context": ctx.tolist()}
    )
    assert [a["log_likelihood"] for a in r.json()["results"]] == [
        a["log_likelihood"] for a in by_json.json()["results"]
    ]
    bad = client.post(f"/log-likelihood?model={NPE}", content=_npz(inputs=theta, extra=ctx), headers=headers)
    assert_problem(bad, 422, "extra")
    both = client.post(
        f"/log-likelihood?model={NPE}&context=0.3,0.5",
        content=_npz(inputs=theta, context=ctx),
        headers=headers,
    )
    assert_problem(both, 422, "context")
    assert_problem(client.post(f"/log-likelihood?model={NPE}", content=b"PK not a zip", headers=headers), 400)
    missing = client.post(f"/log-likelihood?model={NPE}", content=_npz(context=ctx), headers=headers)
    assert_problem(missing, 422, "inputs")
    # an archive that names an array twice, or whose arrays unpack past the body limit
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for _ in range(2):
            z.writestr("inputs.npy", _npy(theta))
    assert_problem(client.post(f"/log-likelihood?model={NPE}", content=buf.getvalue(), headers=headers), 400)
    big = io.BytesIO()
    with zipfile.ZipFile(big, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("inputs.npy", bytes(70 * 1024 * 1024))
    assert_problem(client.post(f"/log-likelihood?model={NPE}", content=big.getvalue(), headers=headers), 413)


def test_npz_answers_carry_the_same_numbers_as_json_rows_as_columns(client: Client) -> None:
    theta = np.array([[0.1, 0.2], [-0.4, 0.4], [0.0, 0.0]])
    ctx = np.array([X_O, [0.1, -0.3], [5.0, 5.0]])
    headers = {"content-type": "application/x-npz"}
    r = client.post(
        f"/log-likelihood?model={NPE}&format=npz", content=_npz(inputs=theta, context=ctx), headers=headers
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npz"
    assert r.headers["x-genserve-estimator"].startswith("exact") and r.headers["x-genserve-seed"] == "0"
    cols = dict(np.load(io.BytesIO(r.content), allow_pickle=False))
    rows = client.post(
        "/log-likelihood", json={"model": NPE, "inputs": theta.tolist(), "context": ctx.tolist()}
    ).json()["results"]
    assert cols["log_likelihood"].tolist() == [row["log_likelihood"] for row in rows]
    assert cols["outlier_p_value"].tolist() == [row["outlier"]["p_value"] for row in rows]
    assert cols["is_outlier"].dtype == bool
    assert cols["is_outlier"].tolist() == [row["outlier"]["is_outlier"] for row in rows]
    assert cols["context_p_value"].tolist() == [row["context_outlier"]["p_value"] for row in rows]
    assert cols["context_is_outlier"].tolist() == [False, False, True]
    # a context sent once is checked once and its verdict repeated on every row
    once = client.post(
        f"/log-likelihood?model={NPE}&format=npz&context=0.3,0.55",
        content=_npy(theta),
        headers={"content-type": "application/x-npy"},
    )
    assert np.load(io.BytesIO(once.content))["context_p_value"].shape == (3,)


def test_npz_answers_of_a_labelled_table_hold_the_posterior_and_every_method(client: Client) -> None:
    from sklearn.datasets import load_wine

    x = load_wine().data[:4]
    body = {"model": TAB, "inputs": x.tolist(), "all_outlier_methods": True, "fdr": 0.1}
    rows = client.post("/log-likelihood", json=body).json()["results"]
    r = client.post("/log-likelihood", json={**body, "format": "npz"})
    assert r.status_code == 200, r.text
    assert r.headers["x-genserve-marginal"] == "true"
    cols = dict(np.load(io.BytesIO(r.content), allow_pickle=False))
    assert cols["posterior"].shape == (4, 3)
    assert np.allclose(cols["posterior"][0], list(rows[0]["label_posterior"].values()))
    names = ["class_0", "class_1", "class_2"]
    assert [names[i] for i in cols["predicted_label"]] == [row["predicted_label"] for row in rows]
    for verdict in rows[0]["outliers"]:
        m = verdict["method"]
        assert cols[f"outlier_score.{m}"][0] == verdict["score"]
        assert cols[f"bh_selected.{m}"][0] == verdict["bh_selected"]
    assert cols["bh_selected"].tolist() == [row["outlier"]["bh_selected"] for row in rows]

"""The client against a real server: every method, every error class, retries, deadlines,
.npy bodies above the size threshold; the async client gives the same answers."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from genserve.client import (
    AsyncClient,
    Client,
    DeadlineExceededError,
    InvalidInputError,
    ModelNotFoundError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RetryPolicy,
    TransportError,
    UnauthorizedError,
    UnsupportedOperationError,
)
from tests.genserve.conftest import TOKEN
from tests.service.publishing import damaged_copy
from tests.service.servers import free_port, uvicorn_server
from training.data import load_dataset


class Recording(httpx.HTTPTransport):
    """The real transport, remembering each request's content type and each status."""

    def __init__(self, on_503: threading.Event | None = None) -> None:
        super().__init__()
        self.sent: list[str] = []
        self.statuses: list[int] = []
        self.on_503 = on_503

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request.headers.get("content-type", ""))
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        if response.status_code == 503 and self.on_503 is not None:
            self.on_503.set()
        return response


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_dataset("digits").x[:6]  # [6, 1, 8, 8]


def test_models_and_one_model(server: str) -> None:
    with Client(server, TOKEN) as gs:
        assert gs.ready()
        listed = {m.name: m for m in gs.models()}
        assert set(listed) == {
            "flow-digits",
            "vae-digits",
            "gan-digits",
            "pixelcnn-digits",
            "diffusion-digits",
        }
        vae = gs.model("vae-digits")
        assert vae.family == "vae" and vae.conditional and vae.labels is not None
        assert "limits" in vae.raw


def test_sample_is_seeded_and_carries_its_labels(server: str) -> None:
    with Client(server, TOKEN) as gs:
        a = gs.sample("vae-digits", n=4, labels=[1, 2, 3, "4"], seed=5)
        b = gs.sample("vae-digits", n=4, labels=[1, 2, 3, 4], seed=5)
        assert a.samples.shape == (4, 1, 8, 8) and a.samples.dtype == np.int64
        np.testing.assert_array_equal(a.samples, b.samples)
        assert a.labels is not None and a.labels.tolist() == [1, 2, 3, 4] and a.seed == 5
        drawn = gs.sample("gan-digits", n=3)  # labels from the class prior, returned
        assert drawn.labels is not None and len(drawn.labels) == 3 and drawn.seed >= 0
        png, seed = gs.sample_png("vae-digits", n=4, labels=[1, 2, 3, 4], seed=5)
        assert png.startswith(b"\x89PNG") and seed == 5


def test_scores_are_the_same_as_json_or_npy(server: str, digits: np.ndarray) -> None:
    as_json, as_npy = Recording(), Recording()
    with (
        Client(server, TOKEN, transport=as_json) as small,
        Client(server, TOKEN, transport=as_npy, binary_above=1) as big,
    ):
        a = small.log_likelihood("flow-digits", digits)
        b = big.log_likelihood("flow-digits", digits)
        c = big.log_likelihood("flow-digits", digits, labels=[0, 1, 2, 3, 4, 5])
    assert as_json.sent == ["application/json"] and as_npy.sent == ["application/x-npy"] * 2
    np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)
    assert a.posterior is not None and a.posterior.shape == (6, 10)
    np.testing.assert_allclose(a.posterior.sum(axis=1), 1.0)
    assert a.marginal and not c.marginal and c.posterior is None
    assert a.bits_per_dim is not None and a.outlier_p_value is not None and a.is_outlier is not None
    assert a.estimator.startswith("importance-weighted") and a.importance_samples >= 1


def test_reconstruct_with_and_without_labels(server: str, digits: np.ndarray) -> None:
    with Client(server, TOKEN) as gs:
        vae = gs.reconstruct("vae-digits", digits, labels=3)
        assert vae.reconstruction.shape == (6, 1, 8, 8) and vae.label_probability is None
        assert vae.labels is not None and vae.labels.tolist() == [3] * 6
        mask = np.zeros_like(digits)
        mask[:, :, :4] = 1
        done = gs.reconstruct("pixelcnn-digits", digits, mask=mask, seed=2)
        np.testing.assert_array_equal(done.reconstruction[:, :, :4], digits[:, :, :4])
        assert done.seed == 2 and done.particles == 1
        assert done.labels is not None and done.label_probability is not None
        assert np.all((done.label_probability > 0) & (done.label_probability <= 1))


def test_each_error_class(server: str, digits: np.ndarray) -> None:
    with Client(server, TOKEN) as gs:
        with pytest.raises(InvalidInputError) as bad:
            gs.sample("vae-digits", n=2, labels="no-such-class")
        assert bad.value.status == 422 and "labels" in bad.value.fields[0]
        with pytest.raises(ModelNotFoundError):
            gs.sample("no-such-model")
        with pytest.raises(UnsupportedOperationError):
            gs.log_likelihood("gan-digits", digits)
        with pytest.raises(PayloadTooLargeError):  # the server takes 50 rows at most
            gs.log_likelihood("flow-digits", np.zeros((60, 1, 8, 8), dtype=np.int64))
    with Client(server) as anonymous, pytest.raises(UnauthorizedError):
        anonymous.sample("vae-digits")
    with Client(server + "/not-genserve", TOKEN) as wrong_url, pytest.raises(NotFoundError):
        wrong_url.models()
    nowhere = Client(f"http://127.0.0.1:{free_port()}", retry=RetryPolicy(attempts=2, backoff=0.01))
    with nowhere, pytest.raises(TransportError):
        nowhere.models()


def test_a_deadline_stops_the_work_and_raises(server: str) -> None:
    with Client(server, TOKEN) as gs:
        started = time.perf_counter()
        # 64 draws take ~50 ms on the 2-core CI machine since the PixelCNN samples with its
        # step graphs (72 sequential graph calls); 5 ms is well inside that on any machine.
        with pytest.raises(DeadlineExceededError):
            gs.sample("pixelcnn-digits", n=64, timeout=0.005)
        assert time.perf_counter() - started < 5


def test_a_full_queue_is_retried_until_it_succeeds(server: str) -> None:
    # The server keeps one waiting call per model: PixelCNN sampling loops from other
    # clients keep it full, until this client has been refused once.
    refused = threading.Event()
    stop = time.monotonic() + 60

    def load() -> None:
        with httpx.Client(base_url=server, headers={"authorization": f"Bearer {TOKEN}"}) as raw:
            while not refused.is_set() and time.monotonic() < stop:
                raw.post("/sample", json={"model": "pixelcnn-digits", "n": 16}, timeout=30)

    blockers = [threading.Thread(target=load) for _ in range(6)]
    for t in blockers:
        t.start()
    try:
        with Client(server, TOKEN, retry=RetryPolicy(attempts=1)) as once, pytest.raises(OverloadedError):
            while time.monotonic() < stop:  # no retries: the 503 itself, typed
                once.sample("pixelcnn-digits", 1)
        # Refused once, the other clients stop: the retry after Retry-After finds room.
        transport = Recording(on_503=refused)
        with Client(server, TOKEN, transport=transport, retry=RetryPolicy(attempts=20)) as gs:
            for _ in range(20):
                transport.statuses.clear()
                result = gs.sample("pixelcnn-digits", n=1, seed=1)
                if refused.is_set():
                    break
        assert transport.statuses[0] == 503 and transport.statuses[-1] == 200  # refused, then served
        assert result.samples.shape == (1, 1, 8, 8)
    finally:
        refused.set()
        for t in blockers:
            t.join()


def test_the_async_client_gives_the_same_answers(server: str, digits: np.ndarray) -> None:
    async def main() -> None:
        async with AsyncClient(server, TOKEN) as gs:
            drawn = await asyncio.gather(*(gs.sample("vae-digits", 2, d, seed=d) for d in range(3)))
            scores = await gs.log_likelihood("vae-digits", digits, labels=1)
            done = await gs.reconstruct("flow-digits", digits)
            assert await gs.ready() and len(await gs.models()) == 5
        with Client(server, TOKEN) as sync:
            np.testing.assert_array_equal(drawn[2].samples, sync.sample("vae-digits", 2, 2, seed=2).samples)
            np.testing.assert_array_equal(
                scores.log_likelihood, sync.log_likelihood("vae-digits", digits, labels=1).log_likelihood
            )
            np.testing.assert_array_equal(
                done.reconstruction, sync.reconstruct("flow-digits", digits).reconstruction
            )

    asyncio.run(main())


def test_a_model_this_replica_failed_to_load_is_not_ready(tiny_store: Path, tmp_path: Path) -> None:
    # A damaged version: the replica serves the others and answers 503 not-ready for it,
    # which the client retries (another replica may have it) and then raises, typed.
    with uvicorn_server(damaged_copy(tiny_store, tmp_path), GENSERVE_ALLOW_PARTIAL="true") as url:
        transport = Recording()
        policy = RetryPolicy(attempts=2, max_wait=0.1)
        with Client(url, transport=transport, retry=policy) as gs, pytest.raises(NotReadyError) as refused:
            gs.sample("vae-digits")
        assert transport.statuses == [503, 503] and refused.value.kind == "not-ready"
        with Client(url) as gs:
            assert gs.sample("gan-digits", n=1).samples.shape == (1, 1, 8, 8)

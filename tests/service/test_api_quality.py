"""Label control and classification by likelihood, through the HTTP API, on trained models.

The tiny store's 2-epoch models exercise every code path but cannot show either property,
so this module builds its own store with the default training recipes and the default
judge (the training issue's independent classifier, trained on the training split only):
- samples requested with a label are recognised as that label by the judge (≥ 0.95);
- without labels, `/log-likelihood`'s posterior p(y|x) sums to 1 and its most probable
  label is right on the held-out test digits at least as often as the judge is.
Both requests use the served defaults (sampling temperature, estimator samples), except
the VAE's posterior, asked for with the 128 importance samples docs/api.md advises.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from _pytest.mark.structures import ParameterSet

from service.config import Settings
from tests.service.asgi import Client
from training.classifier import Classifier, load_or_train_classifier
from training.data import ImageDataset, Splits, load_dataset, make_splits
from training.evaluate import EvalSettings

# The GAN's recipe trains in a few minutes and runs in the default suite (a GAN that draws
# noise after a cut or a busy machine is the failure it must catch); the flow, the VAE
# and the PixelCNN (4-8 minutes each on one thread) are marked `quality`, run by `make
# test-quality`: the VAE's ~5 minutes pushed the suite past its 15-minute budget.
QUALITY_SLOW = ("flow", "vae", "pixelcnn")
LIKELIHOOD = ("flow", "vae", "pixelcnn")
SAMPLES = 500  # 50 per class; at a true accuracy of 0.97 the standard error is ~0.008

# The store fixture trains the default recipes to their epoch budgets (no clock: the recipe
# is under test, not the machine's speed), two models at a time. Its minutes count against
# the first test that uses it, so the timeout is sized for a machine busy with other work
# (the suite's 600 s is for a hang, not for this).
pytestmark = pytest.mark.timeout(1800)


# Session scope: xdist may run another module's tests between this module's on the same
# worker, which tears module-scoped fixtures down; the store (minutes) is built once.
@pytest.fixture(scope="session")
def data() -> tuple[ImageDataset, Splits]:
    d = load_dataset("digits")
    return d, make_splits(d.y, len(d), seed=0)


@pytest.fixture(scope="session")
def quality_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the default recipes of the families this session's selected tests use."""
    from training.build import build_store

    wanted = {
        item.callspec.params["family"]
        for item in request.session.items
        if getattr(item.module, "__name__", None) == __name__ and hasattr(item, "callspec")
    }
    root = tmp_path_factory.mktemp("quality")
    families = tuple(f for f in ("vae", "gan", "flow", "pixelcnn") if f in wanted)
    build_store(
        root / "store",
        root / "checkpoints",
        families=families,
        progress=False,
        # The reported estimators and sample counts are not what is under test here; the
        # sampling temperature is still chosen on validation data, as for the default store.
        eval_settings=EvalSettings(
            samples={"vae": 32, "flow": 8, "pixelcnn": 1},
            marginal_samples={"vae": 8, "flow": 1, "pixelcnn": 1},
            quality_per_class=30,
            baseline_draws=16,
        ),
    )
    return root


@pytest.fixture(scope="session")
def judge(data: tuple[ImageDataset, Splits], quality_store: Path) -> Classifier:
    """The judge the build trained (cached beside the checkpoints): 60 epochs, training split."""
    d, splits = data
    classifier, _ = load_or_train_classifier(d, splits, quality_store / "checkpoints", seed=0, epochs=60)
    return classifier


@pytest.fixture(scope="session")
def client(quality_store: Path) -> Iterator[Client]:
    c = Client(Settings(model_store=quality_store / "store"))
    yield c
    c.close()


def family_params(*families: str) -> list[ParameterSet]:
    return [pytest.param(f, marks=[pytest.mark.quality] if f in QUALITY_SLOW else []) for f in families]


@pytest.mark.slow
@pytest.mark.parametrize("family", family_params("vae", "gan", "flow", "pixelcnn"))
def test_samples_carry_the_requested_label(family: str, client: Client, judge: Classifier) -> None:
    labels = np.arange(SAMPLES) % 10
    # class names and indices mixed, as a client may send them
    wire: list[int | str] = [str(v) if i % 2 else int(v) for i, v in enumerate(labels)]
    parts = []
    for start in range(0, SAMPLES, 250):  # the PixelCNN's per-request cap is 256
        body = {"model": f"{family}-digits", "labels": wire[start : start + 250], "format": "npy"}
        r = client.post("/sample", json={**body, "n": 250, "seed": 2024 + start})
        assert r.status_code == 200, r.text
        parts.append(np.load(io.BytesIO(r.content)))
    x = np.concatenate(parts)
    assert x.shape == (SAMPLES, 1, 8, 8)
    recognised = judge.predict(torch.as_tensor(x)).numpy()
    accuracy = float((recognised == labels).mean())
    assert accuracy >= 0.95, f"{family}: the judge recognises {accuracy:.3f} of the requested labels"


@pytest.mark.slow
@pytest.mark.parametrize("family", family_params(*LIKELIHOOD))
def test_posterior_classifies_test_digits_as_well_as_the_judge(
    family: str, client: Client, judge: Classifier, data: tuple[ImageDataset, Splits]
) -> None:
    d, splits = data
    x, y = d.x[splits.test], d.y[splits.test]
    # The VAE's estimate flips close calls with its noise at the served K=32 (263-265 of 269
    # over seeds); docs/api.md advises K >= 128 for classifying with it. Even so it only
    # ties the judge here (264 of 269 each): no VAE recipe tried beats it (docs/results.md),
    # so one image either way decides this check.
    query = "&importance_samples=128" if family == "vae" else ""
    r = client.post_npy(f"/log-likelihood?model={family}-digits{query}", x.astype(np.uint8))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["marginal"] is True
    posterior = np.array([[row["label_posterior"][str(c)] for c in range(10)] for row in out["results"]])
    np.testing.assert_allclose(posterior.sum(axis=1), 1.0, atol=1e-6)
    by_likelihood = float((posterior.argmax(axis=1) == y).mean())
    by_judge = float((judge.predict(torch.as_tensor(x)).numpy() == y).mean())
    assert by_likelihood >= by_judge, f"{family}: Bayes' rule {by_likelihood:.3f} < judge {by_judge:.3f}"

"""Shared fixtures: a tiny but complete model store, built once per test session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

# Session stores are built once per xdist worker: every test that uses one runs on the
# same worker (`make unit` runs `pytest -n 2 --dist loadgroup`), so each is built once.
SESSION_STORES = ("tiny_store", "vector_store", "quality_store")


# The tiny store's tests are the largest group: these run as a second group, which the
# other worker can take (building its own tiny store, about 100 s, to share the rest).
TINY_STORE_B = ("tests/deploy/", "tests/service/oip/", "tests/training/", "tests/service/test_api_fuzz.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Group each test with the session store it uses (first one listed wins)."""
    for item in items:
        used = [s for s in SESSION_STORES if s in getattr(item, "fixturenames", ())]
        if used:
            group = used[0]
            if group == "tiny_store" and item.nodeid.startswith(TINY_STORE_B):
                group = "tiny_store_b"
            item.add_marker(pytest.mark.xdist_group(group))


TINY_ZOO: dict[str, dict[str, Any]] = {
    "flow": {"levels": 2, "steps_per_level": 2, "hidden": 16},
    "vae": {"latent": 4, "channels": 8, "hidden": 32},
    "gan": {"latent": 8, "g_channels": 8, "d_channels": 8},
    "pixelcnn": {"channels": 8, "layers": 2},
    "diffusion": {"channels": 8, "embedding": 8, "sample_steps": 3},
}
TINY_TRAINING: dict[str, dict[str, Any]] = {f: {"max_epochs": 2, "val_every": 1} for f in TINY_ZOO}
# Light evaluation for the tiny store: (samples, marginal samples, samples per class, judge epochs).
TINY_EVAL: dict[str, Any] = {
    "samples": {"vae": 8, "flow": 2, "pixelcnn": 1, "diffusion": 2},
    "marginal_samples": {"vae": 4, "flow": 1, "pixelcnn": 1, "diffusion": 1},
    "quality_per_class": 5,
    "classifier_epochs": 2,
}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the four families, class-conditional, on digits, trained for 2 epochs.

    Real data, real export and calibration; only the models are tiny. Tests that need
    trained quality build their own models.
    """
    from training.build import build_store
    from training.evaluate import EvalSettings

    root = tmp_path_factory.mktemp("store")
    build_store(
        root,
        root.parent / "checkpoints",
        progress=False,
        config_overrides=TINY_ZOO,
        train_overrides=TINY_TRAINING,
        eval_settings=EvalSettings(**TINY_EVAL),
        # Two worker processes on any machine: tests/training/test_build.py checks that a
        # one-process build makes the same models.
        workers=2,
    )
    return root


# Tiny vector models: one transform, narrow, two epochs (only the plumbing is under test).
TINY_VECTOR_FLOW: dict[str, Any] = {"transforms": 1, "hidden": 16, "layers": 1}
TINY_VECTOR_TRAINING: dict[str, Any] = {"max_epochs": 2}


@pytest.fixture(scope="session")
def vector_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with an NPE posterior (two moons, 400 simulations) and a class-conditional
    tabular flow (wine), both tiny, built by the real pipeline (export, parity, calibration)."""
    from training.vectors.pipeline import VectorRecipe
    from training.vectors.publish import build_vector_model

    root = tmp_path_factory.mktemp("vector-store")
    for recipe in (
        VectorRecipe("sbi:two_moons", simulations=400, config=TINY_VECTOR_FLOW, train=TINY_VECTOR_TRAINING),
        VectorRecipe("tabular:wine", config=TINY_VECTOR_FLOW, train=TINY_VECTOR_TRAINING),
    ):
        build_vector_model(root, recipe, progress=False)
    return root

"""build-store: the same store however it is built, and a time-limited model that says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console

from service.config import Settings
from service.store import ModelStore
from tests.conftest import TINY_EVAL, TINY_TRAINING, TINY_ZOO
from tests.service.asgi import Client
from training.build import build_store, served_backend_for
from training.build_jobs import cost_rank
from training.evaluate import EvalSettings

from .test_cli import genserve

EVAL = EvalSettings(
    samples={"vae": 4, "flow": 2, "pixelcnn": 1},
    marginal_samples={"vae": 2, "flow": 1, "pixelcnn": 1},
    quality_per_class=2,
    classifier_epochs=1,
    select_sampling=False,
    baseline_draws=2,
)


def _build(
    root: Path, families: tuple[str, ...], workers: int, eval_settings: EvalSettings = EVAL, **train: Any
) -> Console:
    console = Console(record=True, width=200)
    build_store(
        root / "store",
        root / "checkpoints",
        families=families,
        progress=False,
        console=console,
        config_overrides=TINY_ZOO,
        train_overrides={f: {**TINY_TRAINING[f], **train} for f in families},
        eval_settings=eval_settings,
        workers=workers,
    )
    return console


def _published(store: Path, name: str) -> dict[str, Any]:
    """What must not depend on how the store was built: graphs and evaluation figures."""
    version = ModelStore(store).open(name)
    manifest = json.loads((version.path / "manifest.json").read_text())
    evaluation = {k: v for k, v in manifest["evaluation"].items() if k != "training"}
    # TorchScript archives are not byte-stable (torch writes a random serialization id and
    # per-process name mangling into them): their tensors are compared instead.
    scripted = {
        f["path"]: {k: v.tolist() for k, v in torch.jit.load(version.path / f["path"]).state_dict().items()}
        for f in manifest["files"]
        if f["path"].endswith(".pt")
    }
    return {
        "onnx": {f["path"]: f["sha256"] for f in manifest["files"] if f["path"].endswith(".onnx")},
        "torchscript": scripted,
        "evaluation": evaluation,
        "calibration": {k: v for k, v in (manifest["calibration"] or {}).items() if k != "created"},
        "epochs": manifest["training"]["epochs"],
    }


def test_workers_build_the_same_store_as_one_process(tiny_store: Path, tmp_path: Path) -> None:
    """The session's tiny store was built side by side in worker processes (one per core);
    the same models built here one after the other, from scratch, are bit for bit the same
    models with the same figures: the machine's cores change the time, not the result."""
    families = ("vae", "gan")
    alone = _build(tmp_path, families, workers=1, eval_settings=EvalSettings(**TINY_EVAL))
    assert "at a time" not in alone.export_text()
    for name in ("vae-digits", "gan-digits"):
        assert _published(tmp_path / "store", name) == _published(tiny_store, name)


def test_the_longest_jobs_start_first() -> None:
    order = sorted(["vae", "gan", "flow", "pixelcnn", "new"], key=cost_rank)
    assert order == ["pixelcnn", "flow", "gan", "vae", "new"]


def test_a_time_limit_that_cuts_training_is_visible_everywhere(tmp_path: Path) -> None:
    """An explicit limit too tight for the epoch budget: the run stops, and the manifest, the
    store listing and GET /models/{name} all say the model was cut short."""
    console = _build(tmp_path, ("vae",), workers=1, max_epochs=50, max_minutes=1e-9)
    assert "CUT SHORT" in console.export_text()

    training = ModelStore(tmp_path / "store").open("vae-digits").manifest.training
    assert training.cut_short and training.stopped == "time limit"
    assert (training.epochs, training.max_epochs, training.time_limit_minutes) == (1, 50, 1e-9)

    listing = genserve("store", "list", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "CUT SHORT at epoch 1 of 50" in listing.stdout
    assert "WARNING" in listing.stdout and "vae-digits v1" in listing.stdout

    client = Client(Settings(model_store=tmp_path / "store"))
    try:
        detail = client.get("/models/vae-digits").json()
        assert detail["training"]["cut_short"] is True
        assert detail["warnings"] and "cut short" in detail["warnings"][0]
        assert client.get("/models").json()[0]["warnings"] == detail["warnings"]
    finally:
        client.close()

    # Neither a cut version nor a cut checkpoint counts as the recipe's model: the same
    # build again trains again (and publishes a new version, again marked).
    again = _build(tmp_path, ("vae",), workers=1, max_epochs=50, max_minutes=1e-9).export_text()
    assert "up to date" not in again
    assert "not reusing checkpoint" in again and "a time limit cut it short" in again
    assert "published vae-digits v2" in again and "CUT SHORT" in again


def test_a_model_that_ran_its_course_carries_no_warning(tmp_path: Path) -> None:
    _build(tmp_path, ("gan",), workers=1)
    training = ModelStore(tmp_path / "store").open("gan-digits").manifest.training
    assert not training.cut_short and training.stopped == "epoch limit"
    assert training.time_limit_minutes is None and training.cut_short_warning() is None
    listing = genserve("store", "list", "--store", str(tmp_path / "store"), cwd=tmp_path)
    assert "CUT SHORT" not in listing.stdout and "WARNING" not in listing.stdout


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", ("onnxruntime", "cpu")), ("cuda", ("torchscript", "cuda")), ("cuda:0", ("torchscript", "cuda"))],
)
def test_a_gpu_trained_model_is_evaluated_through_its_graphs_on_the_gpu(
    device: str, expected: tuple[str, str]
) -> None:
    assert served_backend_for(device) == expected

"""`genserve train` on vector data publishes a model; build-store suites; `genserve sbi-eval`."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from training.cli import app

TINY = ["--set", "transforms=1", "--set", "hidden=8", "--set", "layers=1", "--epochs", "1"]


def test_train_publishes_an_npe_posterior_then_finds_it_up_to_date(tmp_path: Path) -> None:
    runner = CliRunner()
    store = tmp_path / "store"
    args = [
        "train",
        "--dataset",
        "sbi:gaussian_mixture",
        "--simulations",
        "200",
        "--store",
        str(store),
        *TINY,
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "published: npe-gaussian-mixture v1" in first.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date: npe-gaussian-mixture v1" in again.output
    manifest = json.loads((store / "npe-gaussian-mixture" / "1" / "manifest.json").read_text())
    assert (
        manifest["dataset"]["kind"] == "vectors" and manifest["dataset"]["simulation"]["simulations"] == 200
    )

    report = tmp_path / "sbi.json"
    ev = runner.invoke(
        app,
        ["sbi-eval", "--store", str(store), "--observations", "1", "--draws", "300", "--report", str(report)],
    )
    assert ev.exit_code == 0, ev.output
    (result,) = json.loads(report.read_text())
    row = result["observations"][0]
    assert 0.3 <= row["c2st"] <= 1.0 and row["inside_support"] and abs(row["integral"] - 1.0) < 0.05


def test_vector_data_refuses_image_families_and_unknown_suites(tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(
        app, ["train", "--family", "vae", "--dataset", "tabular:iris", "--store", str(tmp_path)]
    )
    assert r.exit_code != 0 and "flows" in r.output
    r = runner.invoke(app, ["build-store", "--suite", "speech", "--store", str(tmp_path)])
    assert r.exit_code != 0 and "sbi" in r.output
    r = runner.invoke(app, ["train", "--dataset", "digits", "--store", str(tmp_path)])
    assert r.exit_code != 0 and "family" in r.output

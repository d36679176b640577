"""`genserve sample` and `genserve score` against a running server."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from tests.genserve.conftest import TOKEN
from training.cli import app
from training.data import load_dataset

runner = CliRunner()


def test_sample_writes_a_png_grid_or_the_arrays(server: str, tmp_path: Path) -> None:
    common = ["--url", server, "--token", TOKEN, "--seed", "4", "-n", "6", "--labels", "7"]
    png = runner.invoke(app, ["sample", "gan-digits", "-o", str(tmp_path / "s.png"), *common])
    assert png.exit_code == 0, png.output
    assert Image.open(tmp_path / "s.png").size[0] > 8
    npy = runner.invoke(app, ["sample", "gan-digits", "-o", str(tmp_path / "s.npy"), *common])
    assert npy.exit_code == 0, npy.output
    assert np.load(tmp_path / "s.npy").shape == (6, 1, 8, 8)
    assert "seed 4" in npy.output


def test_score_writes_every_column_in_chunks(server: str, tmp_path: Path) -> None:
    x = load_dataset("digits").x[:30]
    np.save(tmp_path / "x.npy", x)
    args = ["score", "flow-digits", str(tmp_path / "x.npy"), "--url", server, "--token", TOKEN]
    r = runner.invoke(app, [*args, "--chunk", "7", "-o", str(tmp_path / "s.npz")])
    assert r.exit_code == 0, r.output
    cols = np.load(tmp_path / "s.npz")
    assert cols["log_likelihood"].shape == (30,) and cols["posterior"].shape == (30, 10)
    whole = runner.invoke(app, [*args, "--chunk", "100"])  # a CSV table on stdout
    assert whole.exit_code == 0, whole.output
    lines = whole.stdout.strip().splitlines()
    assert lines[0].startswith("log_likelihood,") and len(lines) == 31
    first = float(lines[1].split(",")[0])
    assert abs(first - cols["log_likelihood"][0]) < 1e-4 * abs(first)  # chunks change nothing


def test_errors_are_one_line_naming_the_field(server: str, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "sample",
            "vae-digits",
            "-o",
            str(tmp_path / "s.npy"),
            "--labels",
            "nine-ish",
            "--url",
            server,
            "--token",
            TOKEN,
        ],
    )
    assert r.exit_code == 1
    assert "invalid-input" in r.output and "labels" in r.output
    assert not (tmp_path / "s.npy").exists()

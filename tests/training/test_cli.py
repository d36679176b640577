"""The command line's answer to a user's mistakes: one line naming the problem, a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def genserve(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2]), "COLUMNS": "200", **env},
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--dataset", "{bad}"), "levels must be one integer"),
        (
            ("--dataset", "digits", "--set", "latnt=3"),
            "invalid override: latnt: Extra inputs are not permitted",
        ),
    ],
)
def test_bad_data_and_settings_get_one_line_not_a_traceback(
    tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((20, 4, 4), dtype=np.int64), levels=np.array([3, 4]))
    argv = [a.format(bad=bad) for a in args]
    r = genserve("train", "--family", "vae", *argv, "--out", str(tmp_path / "ck"), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "error:" in out and says in out, out
    assert "Traceback" not in out and "╭" not in out, out


def test_store_verify_passes_a_good_store_and_fails_what_is_not_there(
    tiny_store: Path, tmp_path: Path
) -> None:
    ok = genserve("store", "verify", "--store", str(tiny_store), cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   flow-digits/1" in ok.stdout and "FAIL" not in ok.stdout

    # An empty store must not pass: the image build runs `build-store && store verify`.
    for args, says in [
        (("store", "verify", "--store", str(tmp_path / "empty")), "no models in the store"),
        (("store", "verify", "nope", "--store", str(tiny_store)), "no model named 'nope'"),
        (("store", "verify", "../x", "--store", str(tiny_store)), "invalid model name"),
    ]:
        r = genserve(*args, cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert "FAIL" in r.stdout and says in r.stdout, r.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("nope",), "no model named 'nope'"),
        (("flow-digits", "--version", "99"), "has no version 99"),
    ],
)
def test_store_show_of_a_missing_model_is_one_line(
    tiny_store: Path, tmp_path: Path, args: tuple[str, ...], says: str
) -> None:
    r = genserve("store", "show", *args, "--store", str(tiny_store), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "error:" in out and says in out, out
    assert "Traceback" not in out and "╭" not in out, out


def test_a_bad_setting_stops_serve_with_one_line(tmp_path: Path) -> None:
    r = genserve("serve", "--no-build", "--store", str(tmp_path), cwd=tmp_path, GENSERVE_BACKEND="tensorrt")
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "error: invalid setting: GENSERVE_BACKEND:" in out and "Traceback" not in out, out


@pytest.mark.parametrize(
    ("args", "says", "code"),
    [
        (("train", "--family", "foo"), "unknown family 'foo'", 2),
        (("train", "--family", "vae", "--device", "tpu"), "unknown device 'tpu'", 2),
        (("train", "--family", "vae", "--epochs", "0"), "max_epochs: Input should be greater", 2),
        (("train", "--family", "vae", "--train-set", "lr=NaN"), "lr: Input should be a finite number", 2),
        (("export", "--checkpoint", "{tmp}/missing"), "is not a checkpoint", 2),
        (("build-store", "--store", "{tmp}/afile", "--family", "vae"), "is a file, not a folder", 1),
        # checked before the first family trains, not when its turn comes
        (("build-store", "--store", "{tmp}/s", "--family", "vae", "--family", "foo"), "unknown family", 2),
    ],
)
def test_mistakes_are_caught_before_any_training(
    tmp_path: Path, args: tuple[str, ...], says: str, code: int
) -> None:
    (tmp_path / "afile").write_text("")
    r = genserve(*(a.format(tmp=tmp_path) for a in args), cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == code, out
    assert "error:" in out and says in out, out
    assert "Traceback" not in out, out
    assert not (tmp_path / "s").exists() and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("family", "flags", "says"),
    [
        # the default is --conditional: unlabelled data says how to train it instead
        ("vae", (), "has no labels (train it with --unconditional)"),
        ("flow", ("--unconditional",), "needs even image sides; 'odd' is 7x7"),
        # a GAN is selected by the label classifier, so unlabelled data cannot train one
        ("gan", ("--unconditional",), "'odd' has no labels: the sample-quality judge"),
    ],
)
def test_data_a_model_cannot_use_gets_one_line(
    tmp_path: Path, family: str, flags: tuple[str, ...], says: str
) -> None:
    np.savez(tmp_path / "odd.npz", x=np.random.default_rng(0).integers(0, 4, (40, 7, 7)))
    r = genserve("train", "--family", family, "--dataset", "odd.npz", *flags, "--out", "ck", cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert "error:" in out and says in out, out
    assert "Traceback" not in out and "╭" not in out, out
    assert not (tmp_path / "ck").exists()

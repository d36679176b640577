"""The command line's answer to a user's mistakes: one line naming the problem, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def genserve(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2]), "COLUMNS": "200"},
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

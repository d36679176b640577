"""The KServe peer's own virtual environment, made on first use (never genserve's).

    python -m bench.peer.env      # prints the environment's python

KServe and the runtime pinned to what the peer benchmark was measured with; onnxruntime
and numpy at genserve's versions, so both servers run the same runtime.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from importlib.metadata import version
from pathlib import Path

ENV = Path(__file__).resolve().parent / ".env-kserve"
KSERVE = "kserve==0.21.0"


def python() -> Path:
    """The peer environment's interpreter, installing it if needed (a few minutes, PyPI)."""
    exe = ENV / "bin" / "python"
    marker = ENV / ".installed"
    wanted = f"{KSERVE} onnxruntime=={version('onnxruntime')} numpy=={version('numpy')}"
    if marker.exists() and marker.read_text() == wanted:
        return exe
    venv.EnvBuilder(with_pip=True, clear=True).create(ENV)
    subprocess.run([str(exe), "-m", "pip", "install", "-q", *wanted.split()], check=True)
    marker.write_text(wanted)
    return exe


if __name__ == "__main__":
    sys.stdout.write(f"{python()}\n")

#!/usr/bin/env bash
# Download, here, the wheels that the GPU machine lacks for bench/gpu_path.sh (it has
# Python 3.12 with torch, numpy, onnx, onnxruntime, scikit-learn, httpx, typer and rich,
# and no package index). They land in .whl/ (ignored by git), which the device call
# carries. The versions are this project's .venv's, so both machines run the same code.
#
#   bash bench/gpu_wheels.sh          # then: run(command="bash bench/gpu_path.sh", carry=[".whl"])
#
# onnxruntime-gpu is not among them: its wheel (about 300 MB) exceeds what a device call
# carries (64 MiB), so there ONNX Runtime runs on the CPU and the GPU figures are
# TorchScript's (docs/benchmarks.md, "The GPU path").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
rm -rf .whl && mkdir -p .whl
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in zuko pydantic pydantic-core annotated-types typing-inspection typing-extensions \
    pydantic-settings python-dotenv fastapi starlette annotated-doc uvicorn httptools orjson mlxtend; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pkg==$(version "$pkg")"
done
du -sh .whl

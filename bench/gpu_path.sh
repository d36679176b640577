#!/usr/bin/env bash
# The GPU check of issue 30 as one command on a GPU machine: train the mnist5k zoo there,
# then time it in-process and served, CPU against GPU (bench/gpu_path.py). Results in OUT.
#
#   bash bench/gpu_wheels.sh                                   # here, once: the missing wheels
#   device run: bash bench/gpu_path.sh   (carry: .whl)         # there; $OUT comes back
#
# TRAIN_FAMILIES (default: all five) and SECONDS_PER (seconds per timing, default 3) shorten it.
set -euo pipefail
out=${OUT:-${1:-gpu-results}}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/nvidia-smi.txt" 2>&1 || true
store=/tmp/gpu_store
families=()
for f in ${TRAIN_FAMILIES:-flow vae gan pixelcnn diffusion}; do families+=(--family "$f"); done
start=$(date +%s)
python3 -m bench.gpu_path train --store "$store" --out "$out/gpu-train.json" "${families[@]}" 2>&1 | tee "$out/train.log"
echo "training, evaluation and export: $(( $(date +%s) - start )) s"
python3 -m bench.gpu_path timings --store "$store" --out "$out/gpu-timings.json" --seconds "${SECONDS_PER:-3}" 2>&1 | tee "$out/timings.log"

#!/usr/bin/env bash
# The GPU check of the fused factor products, as one script for a GPU machine (about 5 minutes
# on an H100-class GPU): the CUDA tests, then benchmarks/overhead.py in fp32 and in bf16 autocast
# (dense against DWF D = 2, 3, 4, per weight, fused and compiled; LeNet-5, ResNet-20, ResNet-18
# at 32x32; batch 128 and 256; step time, peak memory, operator calls and CUDA kernels per step).
# Needs torch with CUDA and dwfc's dependencies importable; writes into $OUT (default
# benchmarks/cache/gpu-check). Copy the tables into docs/overhead-gpu.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/cache/gpu-check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv | tee "$OUT/gpu.txt"
python -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_fused.py 2>&1 | tee "$OUT/tests.log"
python benchmarks/overhead.py --device cuda --steps 20 --rounds 7 --skip subnormals files \
    --out "$OUT/overhead-cuda-fp32.md" 2>&1 | tee "$OUT/fp32.log"
python benchmarks/overhead.py --device cuda --amp --steps 20 --rounds 7 --skip subnormals files \
    --out "$OUT/overhead-cuda-bf16.md" 2>&1 | tee "$OUT/bf16.log"

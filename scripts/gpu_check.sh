#!/usr/bin/env bash
# GPU check for the H200 machine (torch 2.11 + CUDA 13, Triton 3.6, no internet): build the
# extension with its CUDA kernels, run the tests that use the GPU, print the build report, run the
# Triton kernels' tests and benchmark, then eager vs CUDA graphs (per step, whole loop) vs a
# CUDA-graph engine built here on celeba64 at 1 and 256 images (JSON and tables under $OUT).
# Usage, from the repository root: bash scripts/gpu_check.sh   (log also lands in $OUT when set)
set -euo pipefail
cd "$(dirname "$0")/.."
log="${OUT:-/tmp}/gpu_check.log"
export PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

  echo "== build (RISSOLE_CUDA=ON)"
  RISSOLE_CUDA=ON python3 -m pip install -q --no-build-isolation --no-deps --no-index .
  python3 -c "import rissole_trt; print(rissole_trt.info(as_text=True))"

  echo "== GPU tests"
  RISSOLE_EXPECT_CUDA=1 python3 -m pytest -q -m gpu tests -p no:cacheprovider
  RISSOLE_EXPECT_CUDA=1 python3 -m pytest -q tests/test_build.py -p no:cacheprovider

  echo "== Triton kernels on the GPU (the same tests as under the interpreter, plus bf16)"
  python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider
  echo "== kernel benchmark: kernels vs their torch references"
  for dtype in bf16 fp16; do
    python3 benchmarks/bench_kernels.py --dtype "$dtype" --json "${OUT:-/tmp}/bench_kernels_$dtype.json"
  done
  echo "== eager vs CUDA graphs vs a built engine (celeba64, 1 and 256 images)"
  python3 benchmarks/bench_gpu.py --out "${OUT:-/tmp}" --preset celeba64 --images 1 256 --samplers dpmpp_2m:20 ddim:50
} 2>&1 | tee "$log"

#!/usr/bin/env bash
# GPU check for the H200 machine (torch 2.11 + CUDA 13, Triton 3.6, no internet): build the
# extension with its CUDA kernels, run the tests that use the GPU, print the build report, run the
# Triton kernels' tests and benchmark, then eager vs CUDA graphs (per step, whole loop) vs a
# CUDA-graph engine built here on celeba64 at 1 and 256 images (JSON and tables under $OUT).
# Each stage has its own time limit, so a stuck one cannot eat the window of the ones after it.
# A failing stage is reported and the next one still runs (a GPU window is short: every number it
# can give counts); the script exits non-zero if any stage failed and lists them at the end.
# Usage, from the repository root: bash scripts/gpu_check.sh   (log also lands in $OUT when set)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp}"
log="$out/gpu_check.log"
export PYTHONUNBUFFERED=1
failed=()
stage() {  # stage NAME SECONDS COMMAND...: run it for at most SECONDS, remember a failure, go on
  local name=$1 limit=$2
  shift 2
  echo "== $name (at most ${limit} s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  ((rc == 124 || rc == 137)) && echo "!! stage ran past ${limit} s and was stopped: $name"
  ((rc == 0)) || { echo "!! stage failed: $name"; failed+=("$name"); }
}
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"

  export RISSOLE_CUDA=ON
  stage "build (RISSOLE_CUDA=ON)" 240 python3 -m pip install -q --no-build-isolation --no-deps --no-index .
  stage "build report" 60 python3 -c "import rissole_trt; print(rissole_trt.info(as_text=True))"
  stage "GPU tests" 240 env RISSOLE_EXPECT_CUDA=1 python3 -m pytest -q -m gpu tests -p no:cacheprovider
  stage "build tests" 120 env RISSOLE_EXPECT_CUDA=1 python3 -m pytest -q tests/test_build.py -p no:cacheprovider
  stage "Triton kernels on the GPU (the interpreter's tests, plus bf16)" 150 \
      python3 -m pytest -q tests/test_kernels.py -p no:cacheprovider
  for dtype in bf16 fp16; do
    stage "kernel benchmark ($dtype): kernels vs their torch references" 90 \
        python3 benchmarks/bench_kernels.py --dtype "$dtype" --json "$out/bench_kernels_$dtype.json"
  done
  stage "eager vs CUDA graphs vs a built engine (celeba64, 1 and 256 images)" 300 \
      python3 benchmarks/bench_gpu.py --out "$out" --preset celeba64 --images 1 256 \
      --samplers dpmpp_2m:20 ddim:50 --repeats 3
  if ((${#failed[@]})); then
    printf '!! failed stages: %s\n' "${failed[*]}"
    exit 1
  fi
  echo "== all stages passed"
} 2>&1 | tee "$log"

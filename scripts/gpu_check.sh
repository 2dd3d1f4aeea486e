#!/usr/bin/env bash
# The GPU check, one command on a lent GPU (torch 2.11 + CUDA 13, Triton 3.6, Python 3.12, no
# network): build the extension with its CUDA kernels (or install the wheel built elsewhere by
# scripts/build_gpu_wheel.sh when that fails), then the GPU tests, the Triton kernels' tests and
# benchmark, and eager vs CUDA graphs vs a built engine (scripts/gpu_stages.py: the stages and their
# time limits, one table). The whole log is teed to OUT/gpu_check.log; every stage's result lands in
# OUT/stages.json as it ends, the benchmarks' rows in OUT as they are measured; a summary table
# (stage, status, seconds, headline) is printed last, and the exit status is non-zero when a stage
# failed, the failed ones listed.
# Usage, from anywhere:  bash scripts/gpu_check.sh OUT              the whole check
#                        bash scripts/gpu_check.sh --dry-run OUT    the preflight and the plan only
#                        bash scripts/gpu_check.sh --build          preflight and build (the first stage)
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"
wheels=dist/gpu-wheel
# The build's own limit, set by scripts/gpu_stages.py below the build stage's (the rest is the fallback's).
build_limit_s="${RISSOLE_BUILD_LIMIT_S:-600}"

source scripts/gpu_common.sh

nvcc_release() { "$nvcc" --version | grep -o 'release [0-9.]*' | head -1; }

has_version() {  # has_version DIST MIN: the distribution is installed at MIN or newer
  "$py" - "$1" "$2" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
def parts(v):
    return tuple(int(p) for p in (v.split("+")[0].split(".") + ["0", "0"])[:2] if p.isdigit())
try:
    have = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(f"   {sys.argv[1]}: not installed (>= {sys.argv[2]} needed)")
print(f"   {sys.argv[1]} {have}")
sys.exit(0 if parts(have) >= parts(sys.argv[2]) else f"   {sys.argv[1]} {have} is older than {sys.argv[2]}")
EOF
}

site_writable() {
  "$py" -c 'import os, sysconfig, sys; sys.exit(not os.access(sysconfig.get_paths()["purelib"], os.W_OK))'
}

preflight() {  # prints what it finds; sets nvcc and can_build
  echo "== preflight"
  "$py" -c 'import sys; print("   python", sys.version.split()[0], sys.executable)'
  can_build=1
  if nvcc=$(find_nvcc); then echo "   nvcc $nvcc: $(nvcc_release)"; else
    echo "   nvcc: not found (CUDACXX, PATH, /usr/local/cuda*/bin)"; can_build=0; fi
  has_version scikit-build-core 0.10 || can_build=0
  has_version pybind11 2.12 || can_build=0
  command -v cmake >/dev/null || has_version cmake 3.18 || can_build=0
  if site_writable; then echo "   site-packages writable"; else
    echo "   site-packages not writable: installing with --user (PYTHONUSERBASE=${PYTHONUSERBASE:-unset})"; fi
  "$py" - <<'EOF'
import importlib.util
missing = [m for m in ("numpy", "torch", "safetensors", "tqdm", "PIL", "yaml", "pytest", "triton")
           if importlib.util.find_spec(m) is None]
print("   runtime modules: " + ("all present" if not missing else "MISSING " + " ".join(missing)))
EOF
}

build() {  # build here with the CUDA kernels; else install the fallback wheel for this Python
  preflight
  local user=() tag wheel
  site_writable || user=(--user)
  export PIP_BREAK_SYSTEM_PACKAGES=1  # a distribution's Python refuses pip installs otherwise
  if ((can_build)); then
    # Bounded below the stage's limit, so that a slow build still leaves time for the fallback.
    echo "== building with RISSOLE_CUDA=ON (at most ${build_limit_s} s)"
    RISSOLE_CUDA=ON CUDACXX="$nvcc" timeout --kill-after=3 "$build_limit_s" "$py" -m pip install -q \
      --no-build-isolation --no-deps --no-index "${user[@]}" . \
      && { echo "installed: built here (nvcc $(nvcc_release))"; return 0; }
    echo "!! the build failed or ran past ${build_limit_s} s"
  fi
  tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  wheel=$(ls "$wheels"/rissole_trt-*-"$tag"-*.whl 2>/dev/null | head -1)
  [[ -n $wheel ]] || { echo "!! no fallback wheel for $tag in $wheels (scripts/build_gpu_wheel.sh builds it)"; return 1; }
  local fresh="its sources"
  [[ $(cat "$wheels/SOURCES" 2>/dev/null) == $(sources_digest) ]] || fresh="OTHER SOURCES than these (stale)"
  echo "== installing the fallback wheel $wheel, built from $fresh"
  "$py" -m pip install -q --no-deps --no-index --force-reinstall "${user[@]}" "$wheel" \
    && echo "installed: fallback wheel $(basename "$wheel"), built from $fresh"
}

case "${1:-}" in
  --build) build; exit ;;
  --dry-run) dry=(--dry-run); shift ;;
  ""|-*) sed -n '2,12p' "$0"; exit 2 ;;
  *) dry=() ;;
esac
out="${1:?usage: bash scripts/gpu_check.sh [--dry-run] OUT}"
mkdir -p "$out" && out="$(cd "$out" && pwd)"
# A read-only environment installs into a user base under OUT (later stages inherit the variable).
site_writable || export PYTHONUSERBASE="$out/pyuser"
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
  ((${#dry[@]})) && preflight
  "$py" scripts/gpu_stages.py --out "$out" "${dry[@]}"
} 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"

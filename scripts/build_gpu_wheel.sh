#!/usr/bin/env bash
# Build, on a machine without a GPU, the wheel that scripts/gpu_check.sh installs when building on
# the GPU machine fails: CPython 3.12 (the GPU image's Python) with the CUDA kernels. nvcc is the
# machine's CUDA 13 (scripts/gpu_common.sh), else a CUDA 13 nvcc from PyPI (nvidia-cuda-nvcc,
# -runtime, -cccl, -crt, nvidia-nvvm, one release for all). The kernels are SASS for the
# architectures in CMakeLists.txt (80, 90): nothing is JIT-compiled, and CUDA's minor version
# compatibility lets any CUDA 13 driver run them. The wheel (~8 MiB, the model assets included)
# lands in dist/gpu-wheel/, git-ignored: carry it to the GPU machine. Rebuild it after any change
# to the package: gpu_check.sh says when the wheel was built from other sources.
# Usage: bash scripts/build_gpu_wheel.sh   (PY=/path/to/python3.12 to choose the Python)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_common.sh
is312() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; }
py="${PY:-}"
if [[ -z $py ]]; then  # python3.12 on PATH (a pyenv shim may not run), else a pyenv install
  for candidate in "$(command -v python3.12)" "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do
    is312 "$candidate" && { py=$candidate; break; }
  done
fi
is312 "$py" || { echo "!! no CPython 3.12 found (set PY=/path/to/python3.12)"; exit 1; }
venv=.venv-gpu-wheel
[[ -x $venv/bin/python ]] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
cuda_env=()
if nvcc=$(find_nvcc) && "$nvcc" --version | grep -q 'release 13\.'; then
  cuda_env=(CUDACXX="$nvcc")
else  # 13.0's runtime wheel lacks the static libcudart/libcudadevrt that CMakeLists.txt links
  "$venv/bin/python" -m pip install -q "nvidia-cuda-nvcc>=13.1,<14" "nvidia-cuda-runtime>=13.1,<14" \
    "nvidia-cuda-cccl>=13.1,<14" "nvidia-cuda-crt>=13.1,<14" "nvidia-nvvm>=13.1,<14"
  cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
  nvcc="$cuda/bin/nvcc"
  # The runtime wheel ships the shared libcudart under its versioned name only; CMake wants both.
  [[ -e $cuda/lib/libcudart.so ]] || ln -s "$(basename "$(ls "$cuda"/lib/libcudart.so.* | head -1)")" \
    "$cuda/lib/libcudart.so"
  cuda_env=(CUDACXX="$nvcc" CUDAToolkit_ROOT="$cuda")
fi
echo "nvcc: $nvcc ($("$nvcc" --version | grep -o 'release [0-9.]*'))"
rm -rf build/gpu-wheel dist/gpu-wheel
env RISSOLE_CUDA=ON "${cuda_env[@]}" "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
  -w dist/gpu-wheel -C build-dir=build/gpu-wheel .
sources_digest > dist/gpu-wheel/SOURCES  # gpu_check.sh compares it with the sources it runs
ls -l dist/gpu-wheel

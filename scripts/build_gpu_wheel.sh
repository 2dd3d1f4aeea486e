#!/usr/bin/env bash
# Build, on a machine without a GPU, the wheel that scripts/gpu_check.sh installs when building on
# the GPU machine fails: CPython 3.12 (the GPU image's Python) with the CUDA kernels, compiled by a
# CUDA 13 nvcc from PyPI (nvidia-cuda-nvcc / -runtime / -cccl / -crt, nvidia-nvvm). CUDA's minor
# version compatibility lets any CUDA 13 driver (the image's torch 2.11 is built for 13.0) run it:
# the kernels are SASS for the architectures in CMakeLists.txt (80, 90), so nothing is JIT-compiled.
# The wheel (~8 MiB, the model assets included) lands in dist/gpu-wheel/, git-ignored: carry it.
# Usage: bash scripts/build_gpu_wheel.sh   (PY=/path/to/python3.12 to choose the Python)
set -euo pipefail
cd "$(dirname "$0")/.."
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
# One CUDA 13 release for all the parts (the crt and nvvm that nvcc runs included). 13.0's runtime
# wheel lacks the static libcudart/libcudadevrt that CMakeLists.txt links; later 13.x ship them.
"$venv/bin/python" -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" \
  "nvidia-cuda-nvcc>=13.1,<14" "nvidia-cuda-runtime>=13.1,<14" "nvidia-cuda-cccl>=13.1,<14" \
  "nvidia-cuda-crt>=13.1,<14" "nvidia-nvvm>=13.1,<14"
cuda="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
[[ -x $cuda/bin/nvcc ]] || { echo "!! nvcc not found under $cuda"; exit 1; }
# The runtime wheel ships only the shared libcudart; CMake's CUDAToolkit also wants the unversioned name.
[[ -e $cuda/lib/libcudart.so ]] || ln -s "$(basename "$(ls "$cuda"/lib/libcudart.so.* | head -1)")" "$cuda/lib/libcudart.so"
rm -rf build/gpu-wheel dist/gpu-wheel
RISSOLE_CUDA=ON CUDACXX="$cuda/bin/nvcc" CUDAToolkit_ROOT="$cuda" \
  "$venv/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w dist/gpu-wheel \
  -C build-dir=build/gpu-wheel .
ls -l dist/gpu-wheel

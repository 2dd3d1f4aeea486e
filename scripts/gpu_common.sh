# Sourced by gpu_check.sh and build_gpu_wheel.sh (from the repository root).

# find_nvcc: the first nvcc of CUDACXX, PATH and the usual toolkit folders (/usr/local/cuda, then
# /usr/local/cuda-* newest first).
find_nvcc() {
  local candidate
  for candidate in "${CUDACXX:-}" "$(command -v nvcc)" /usr/local/cuda/bin/nvcc \
      $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -rV); do
    [[ -n $candidate && -x $candidate ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

# sources_digest: one hash of what a wheel is built from (the package's sources and the build
# files), so a fallback wheel built from other sources is known as stale.
sources_digest() {
  find python kernels csrc CMakeLists.txt pyproject.toml -type f -not -path '*/__pycache__/*' -not -name '*.so' \
    | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16
}

# Sourced by gpu_check.sh and build_gpu_wheel.sh: find_nvcc prints the first nvcc of CUDACXX, PATH
# and the usual toolkit folders (/usr/local/cuda, then /usr/local/cuda-* newest first).
find_nvcc() {
  local candidate
  for candidate in "${CUDACXX:-}" "$(command -v nvcc)" /usr/local/cuda/bin/nvcc \
      $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -rV); do
    [[ -n $candidate && -x $candidate ]] && { echo "$candidate"; return 0; }
  done
  return 1
}

// CUDA implementations of the block operations declared in ops.h.
// One thread per output element (grid-stride), elements moved as 2- or 4-byte
// words so the same kernel serves float32, float16 and bfloat16 bit for bit.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "ops.h"

namespace rissole {
namespace cuda {
namespace {

constexpr int kThreads = 256;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

// Sets this runtime's current device (the static runtime does not share
// torch's notion of it) and returns a grid covering `total` threads.
unsigned int prepare(int device, int64_t total) {
  check(cudaSetDevice(device), "cudaSetDevice");
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (1 << 20) ? blocks : (1 << 20));
}

void check_launch(const char* name) { check(cudaGetLastError(), name); }

// Element e of the block layout [B, P, C, bh, bw] <-> its element in [B, C, H, W].
template <typename T>
__global__ void block_copy_kernel(const T* __restrict__ src, T* __restrict__ dst, int64_t B, int64_t C, int64_t H,
                                  int64_t W, int64_t bf, bool to_blocks) {
  const int64_t bh = H / bf, bw = W / bf, P = bf * bf;
  const int64_t total = B * C * H * W;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = e % bw;
    const int64_t i = (e / bw) % bh;
    const int64_t c = (e / (bw * bh)) % C;
    const int64_t p = (e / (bw * bh * C)) % P;
    const int64_t b = e / (bw * bh * C * P);
    const int64_t latent = ((b * C + c) * H + (p / bf) * bh + i) * W + (p % bf) * bw + j;
    if (to_blocks) {
      dst[e] = src[latent];
    } else {
      dst[latent] = src[e];
    }
  }
}

// Output [B, P, k, C*bh*bw]; ids outside [0, N) are skipped (the host has
// already raised for them), so nothing is read out of bounds.
template <typename T>
__global__ void gather_kernel(const T* __restrict__ db, const int64_t* __restrict__ ids, T* __restrict__ out,
                              int64_t P, int64_t N, int64_t chunk, int64_t B, int64_t k) {
  const int64_t total = B * P * k * chunk;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t q = e % chunk;
    const int64_t n = (e / chunk) % k;
    const int64_t p = (e / (chunk * k)) % P;
    const int64_t b = e / (chunk * k * P);
    const int64_t id = ids[b * k + n];
    if (id < 0 || id >= N) continue;
    out[e] = db[(p * N + id) * chunk + q];
  }
}

// Output [B, P, k, C, bh*bw] = codebook[codes[p, ids[b, n]], c].
template <typename T>
__global__ void code_gather_kernel(const uint16_t* __restrict__ codes, const T* __restrict__ codebook,
                                   const int64_t* __restrict__ ids, T* __restrict__ out, int32_t* error_flag,
                                   int64_t P, int64_t N, int64_t plane, int64_t K, int64_t C, int64_t B, int64_t k) {
  const int64_t total = B * P * k * C * plane;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t q = e % plane;
    const int64_t c = (e / plane) % C;
    const int64_t n = (e / (plane * C)) % k;
    const int64_t p = (e / (plane * C * k)) % P;
    const int64_t b = e / (plane * C * k * P);
    const int64_t id = ids[b * k + n];
    if (id < 0 || id >= N) continue;
    const int64_t code = codes[(p * N + id) * plane + q];
    if (code >= K) {
      atomicMax(error_flag, static_cast<int32_t>(code + 1));
      out[e] = T(0);
      continue;
    }
    out[e] = codebook[code * C + c];
  }
}

template <typename Launch>
void by_elem_size(int64_t elem_size, Launch&& launch) {
  check_elem_size(elem_size);
  if (elem_size == 2) {
    launch(uint16_t{});
  } else {
    launch(uint32_t{});
  }
}

}  // namespace

int compiled_runtime_version() { return CUDART_VERSION; }

int device_count(const char** error) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    cudaGetLastError();  // reset the runtime error state so later calls start clean
    *error = cudaGetErrorString(err);
    return -1;
  }
  return n;
}

void split_blocks(const void* z, void* out, const BlockShape& s, int64_t elem_size, int device, uintptr_t stream) {
  check_block_shape(s, elem_size);
  const int64_t total = s.B * s.C * s.H * s.W;
  if (total == 0) return;
  const unsigned int grid = prepare(device, total);
  by_elem_size(elem_size, [&](auto word) {
    using T = decltype(word);
    block_copy_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(z), static_cast<T*>(out), s.B, s.C, s.H, s.W, s.bf, true);
  });
  check_launch("split_blocks kernel launch");
}

void merge_blocks(const void* blocks, void* out, const BlockShape& s, int64_t elem_size, int device,
                  uintptr_t stream) {
  check_block_shape(s, elem_size);
  const int64_t total = s.B * s.C * s.H * s.W;
  if (total == 0) return;
  const unsigned int grid = prepare(device, total);
  by_elem_size(elem_size, [&](auto word) {
    using T = decltype(word);
    block_copy_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(blocks), static_cast<T*>(out), s.B, s.C, s.H, s.W, s.bf, false);
  });
  check_launch("merge_blocks kernel launch");
}

void gather_blocks(const void* db, const int64_t* ids, void* out, const GatherShape& s, int64_t elem_size, int device,
                   uintptr_t stream) {
  const int64_t chunk = s.C * s.bh * s.bw;
  const int64_t total = s.B * s.P * s.k * chunk;
  if (total == 0) return;
  const unsigned int grid = prepare(device, total);
  by_elem_size(elem_size, [&](auto word) {
    using T = decltype(word);
    gather_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(db), ids, static_cast<T*>(out), s.P, s.N, chunk, s.B, s.k);
  });
  check_launch("gather_blocks kernel launch");
}

void gather_code_blocks(const uint16_t* codes, const void* codebook, const int64_t* ids, void* out,
                        int32_t* error_flag, const CodeGatherShape& s, int64_t elem_size, int device,
                        uintptr_t stream) {
  const int64_t plane = s.bh * s.bw;
  const int64_t total = s.B * s.P * s.k * s.C * plane;
  if (total == 0) return;
  const unsigned int grid = prepare(device, total);
  by_elem_size(elem_size, [&](auto word) {
    using T = decltype(word);
    code_gather_kernel<T><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(
        codes, static_cast<const T*>(codebook), ids, static_cast<T*>(out), error_flag, s.P, s.N, plane, s.K, s.C,
        s.B, s.k);
  });
  check_launch("gather_code_blocks kernel launch");
}

}  // namespace cuda
}  // namespace rissole

// CPU (OpenMP) implementations of the block operations declared in ops.h.
#include "ops.h"

#include <cstring>
#include <stdexcept>
#include <string>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace rissole {

void check_elem_size(int64_t elem_size) {
  if (elem_size != 2 && elem_size != 4) {
    throw std::invalid_argument("element size must be 2 or 4 bytes, got " + std::to_string(elem_size));
  }
}

void check_block_shape(const BlockShape& s, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.B < 0 || s.C < 0 || s.H < 0 || s.W < 0) throw std::invalid_argument("negative dimension");
  if (s.bf < 1) throw std::invalid_argument("block factor must be >= 1, got " + std::to_string(s.bf));
  if (s.H % s.bf != 0 || s.W % s.bf != 0) {
    throw std::invalid_argument("height " + std::to_string(s.H) + " and width " + std::to_string(s.W) +
                                " must be divisible by the block factor " + std::to_string(s.bf));
  }
}

void check_ids(const int64_t* ids, int64_t B, int64_t k, int64_t N) {
  for (int64_t i = 0; i < B * k; ++i) {
    if (ids[i] < 0 || ids[i] >= N) {
      throw std::out_of_range("neighbour id " + std::to_string(ids[i]) + " at [" + std::to_string(i / k) +
                              ", " + std::to_string(i % k) + "] is out of range for a database of " +
                              std::to_string(N) + " images");
    }
  }
}

namespace {

void check_gather_shape(const GatherShape& s, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.P < 0 || s.N < 0 || s.C < 0 || s.bh < 0 || s.bw < 0 || s.B < 0 || s.k < 0) {
    throw std::invalid_argument("negative dimension");
  }
}

// One row of bw elements is contiguous in both layouts of split/merge; this
// walks every (b, p, c, row) and copies it, in the direction `to_blocks` says.
void block_rows(const char* src, char* dst, const BlockShape& s, int64_t es, bool to_blocks, int num_threads) {
  const int64_t bh = s.bh(), bw = s.bw(), bf = s.bf, P = s.P();
  const int64_t rows = s.B * P * s.C;  // one (b, p, c) plane per iteration
  const size_t row_bytes = static_cast<size_t>(bw * es);
#ifdef _OPENMP
  if (num_threads <= 0) num_threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows * bh * bw > 16384)
#endif
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t c = r % s.C;
    const int64_t p = (r / s.C) % P;
    const int64_t b = r / (s.C * P);
    const int64_t row0 = (p / bf) * bh, col0 = (p % bf) * bw;
    for (int64_t i = 0; i < bh; ++i) {
      const int64_t latent = ((b * s.C + c) * s.H + row0 + i) * s.W + col0;  // element index in [B, C, H, W]
      const int64_t block = (r * bh + i) * bw;                               // element index in [B, P, C, bh, bw]
      if (to_blocks) {
        std::memcpy(dst + block * es, src + latent * es, row_bytes);
      } else {
        std::memcpy(dst + latent * es, src + block * es, row_bytes);
      }
    }
  }
}

template <typename T>
void code_gather(const uint16_t* codes, const T* codebook, const int64_t* ids, T* out, const CodeGatherShape& s,
                 int num_threads) {
  const int64_t plane = s.bh * s.bw;
  const int64_t items = s.B * s.P * s.k;  // one (b, p, n) neighbour block per iteration
#ifdef _OPENMP
  if (num_threads <= 0) num_threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(num_threads) if (items * plane * s.C > 16384)
#endif
  for (int64_t it = 0; it < items; ++it) {
    const int64_t n = it % s.k;
    const int64_t p = (it / s.k) % s.P;
    const int64_t b = it / (s.k * s.P);
    const uint16_t* src = codes + (p * s.N + ids[b * s.k + n]) * plane;
    T* dst = out + it * s.C * plane;  // [b, p, n*C .. n*C+C) is contiguous
    for (int64_t q = 0; q < plane; ++q) {
      const T* row = codebook + static_cast<int64_t>(src[q]) * s.C;
      for (int64_t c = 0; c < s.C; ++c) dst[c * plane + q] = row[c];
    }
  }
}

}  // namespace

namespace cpu {

void split_blocks(const void* z, void* out, const BlockShape& s, int64_t elem_size, int num_threads) {
  check_block_shape(s, elem_size);
  block_rows(static_cast<const char*>(z), static_cast<char*>(out), s, elem_size, true, num_threads);
}

void merge_blocks(const void* blocks, void* out, const BlockShape& s, int64_t elem_size, int num_threads) {
  check_block_shape(s, elem_size);
  block_rows(static_cast<const char*>(blocks), static_cast<char*>(out), s, elem_size, false, num_threads);
}

void gather_blocks(const void* db, const int64_t* ids, void* out, const GatherShape& s, int64_t elem_size,
                   int num_threads) {
  check_gather_shape(s, elem_size);
  check_ids(ids, s.B, s.k, s.N);
  // Block p of image ids[b, n] is one contiguous [C, bh, bw] chunk, and so is its
  // destination, channels n*C .. n*C+C of block p of output image b.
  const size_t chunk = static_cast<size_t>(s.C * s.bh * s.bw * elem_size);
  const char* src = static_cast<const char*>(db);
  char* dst = static_cast<char*>(out);
  const int64_t items = s.B * s.P * s.k;
#ifdef _OPENMP
  if (num_threads <= 0) num_threads = omp_get_max_threads();
#pragma omp parallel for schedule(static) num_threads(num_threads) if (items * static_cast<int64_t>(chunk) > 65536)
#endif
  for (int64_t it = 0; it < items; ++it) {
    const int64_t n = it % s.k;
    const int64_t p = (it / s.k) % s.P;
    const int64_t b = it / (s.k * s.P);
    std::memcpy(dst + it * chunk, src + (p * s.N + ids[b * s.k + n]) * chunk, chunk);
  }
}

void gather_code_blocks(const uint16_t* codes, const void* codebook, const int64_t* ids, void* out,
                        const CodeGatherShape& s, int64_t elem_size, int num_threads) {
  check_elem_size(elem_size);
  if (s.P < 0 || s.N < 0 || s.bh < 0 || s.bw < 0 || s.K < 0 || s.C < 0 || s.B < 0 || s.k < 0) {
    throw std::invalid_argument("negative dimension");
  }
  check_ids(ids, s.B, s.k, s.N);
  // Validate every code that will be looked up before writing anything; only
  // the rows of the requested images are read (the codes may be a memory map).
  const int64_t plane = s.bh * s.bw;
  for (int64_t i = 0; i < s.B * s.k; ++i) {
    for (int64_t p = 0; p < s.P; ++p) {
      const uint16_t* row = codes + (p * s.N + ids[i]) * plane;
      for (int64_t q = 0; q < plane; ++q) {
        if (row[q] >= s.K) {
          throw std::out_of_range("code " + std::to_string(row[q]) + " of image " + std::to_string(ids[i]) +
                                  ", block " + std::to_string(p) + " is out of range for a codebook of " +
                                  std::to_string(s.K) + " entries");
        }
      }
    }
  }
  if (elem_size == 2) {
    code_gather(codes, static_cast<const uint16_t*>(codebook), ids, static_cast<uint16_t*>(out), s, num_threads);
  } else {
    code_gather(codes, static_cast<const uint32_t*>(codebook), ids, static_cast<uint32_t*>(out), s, num_threads);
  }
}

}  // namespace cpu
}  // namespace rissole

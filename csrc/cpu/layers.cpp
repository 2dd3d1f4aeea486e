// CPU layer kernels of the per-step network (declared in ops.h): fused
// GroupNorm (+ SiLU, + adds), self-attention over the pixels of small maps, the
// Winograd F(2x2, 3x3) and F(4x4, 3x3) tile transforms and a transposed
// convolution's overlap-add.
//
// Activations are channels-last ([N, H, W, C] in memory), float32 or bfloat16
// (elem_size 4 or 2); all arithmetic is float32 and a bf16 result is rounded
// once, to nearest even. Inner loops run over the contiguous channels and are
// written for the auto-vectoriser; on x86-64 with GCC each hot function is
// compiled for AVX-512, AVX2 and baseline SSE2 and the loader picks one by
// CPUID at import time (target_clones: the runtime CPU check).
#include "ops.h"

#include <cmath>
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RISSOLE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RISSOLE_CLONES
#endif
// The loops live in templates forced inline into each clone, so that each is compiled for the
// clone's ISA (a plain call would reach one baseline copy).
#if defined(__GNUC__)
#define RISSOLE_INLINE __attribute__((always_inline)) inline
#else
#define RISSOLE_INLINE inline
#endif

namespace rissole {
namespace {

RISSOLE_INLINE float bits_to_float(uint32_t u) { return __builtin_bit_cast(float, u); }
RISSOLE_INLINE uint32_t float_to_bits(float f) { return __builtin_bit_cast(uint32_t, f); }

// Element access by size: 4 = float32, 2 = bfloat16 (the top half of a float32).
template <int ES>
RISSOLE_INLINE float load(const void* base, int64_t i) {
  if constexpr (ES == 4) {
    return static_cast<const float*>(base)[i];
  } else {
    return bits_to_float(static_cast<uint32_t>(static_cast<const uint16_t*>(base)[i]) << 16);
  }
}

template <int ES>
RISSOLE_INLINE void store(void* base, int64_t i, float v) {
  if constexpr (ES == 4) {
    static_cast<float*>(base)[i] = v;
  } else {
    uint32_t u = float_to_bits(v);
    u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (finite inputs)
    static_cast<uint16_t*>(base)[i] = static_cast<uint16_t>(u >> 16);
  }
}

// e^x for x <= 0 (softmax scores minus their maximum, -|y| in the SiLU), in plain arithmetic so that it
// vectorises: x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor polynomial, 2^n by writing the
// exponent bits; below -87 (e^x < 2^-125) the result is clamped to e^-87. PRECISE: degree 6 (relative
// error < 2e-7, for float32 results); otherwise degree 4 (< 5e-5, for results rounded to bf16).
template <bool PRECISE = true>
RISSOLE_INLINE float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504f + magic) - magic;
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;  // ln2 split in two for accuracy
  float p;
  if constexpr (PRECISE) {
    p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
  } else {
    p = 1.0f / 24.0f;
  }
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * bits_to_float(scale);
}

// 1 / d for 1 <= d <= 2 without a division: the linear first guess 24/17 - 8/17 d (relative error
// <= 1/17), then Newton steps, each squaring the error: three (< 1e-10) or, unless PRECISE, two
// (< 2e-5). Vector divides were measured 6x slower than this in the fused kernel on an Intel Xeon
// (AVX-512), and dominated it.
template <bool PRECISE = true>
RISSOLE_INLINE float reciprocal_1_2(float d) {
  float r = 24.0f / 17.0f - (8.0f / 17.0f) * d;
  r = r * (2.0f - d * r);
  r = r * (2.0f - d * r);
  if constexpr (PRECISE) r = r * (2.0f - d * r);
  return r;
}

// silu(y) = y * sigmoid(y) from e = e^-|y| in (0, 1]: sigmoid is 1 / (1 + e) for y >= 0 and
// e / (1 + e) below, so no exponent can overflow and the reciprocal's argument stays in [1, 2].
template <bool PRECISE = true>
RISSOLE_INLINE float silu(float y) {
  const float e = exp_nonpositive<PRECISE>(-std::fabs(y));
  const float r = reciprocal_1_2<PRECISE>(1.0f + e);
  return y * (y >= 0.0f ? r : e * r);
}

// ---------------------------------------------------------------- GroupNorm + SiLU

// The loops over one sample run over chunks of P whole pixels (P * C contiguous elements, about
// kChunk) with the per-channel coefficients repeated P times, not over one pixel's C channels: the
// models' 48 or 96 channels are not a multiple of the unrolled vector width, and per-pixel loops
// spent as long in their remainder code as in the vector loop.
constexpr int64_t kChunk = 512;

RISSOLE_INLINE int64_t chunk_pixels(int64_t HW, int64_t C) { return std::max<int64_t>(1, std::min(HW, kChunk / C)); }

// Floats of group_norm_sample's scratch.
int64_t group_norm_scratch(const GroupNormShape& s) { return 4 * chunk_pixels(s.HW, s.C) * s.C + s.C; }

// Repeats row[0 .. C) P times into rep.
RISSOLE_INLINE void repeat_row(const float* row, float* rep, int64_t P, int64_t C) {
  for (int64_t p = 0; p < P; ++p) std::memcpy(rep + p * C, row, static_cast<size_t>(C) * sizeof(float));
}

// Per-channel sums over the sample of f(x[i], i) into per[C] (acc[P * C] is scratch).
template <int ES, typename F>
RISSOLE_INLINE void channel_sums(const void* x, int64_t HW, int64_t C, int64_t P, float* acc, float* per, F f) {
  const int64_t L = P * C;
  for (int64_t i = 0; i < L; ++i) acc[i] = 0.0f;
  for (int64_t p0 = 0; p0 < HW; p0 += P) {
    const int64_t len = std::min(P, HW - p0) * C, base = p0 * C;
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) acc[i] += f(load<ES>(x, base + i), i);
  }
  for (int64_t c = 0; c < C; ++c) per[c] = acc[c];
  for (int64_t p = 1; p < P; ++p) {
    for (int64_t c = 0; c < C; ++c) per[c] += acc[p * C + c];
  }
}

// One sample: stats per group (two passes: mean, then squared deviations), then out = act(x * a[c] +
// b[c]) + add1[c] + add2[c] (+ residual), a = gamma * rstd, b = beta - mean * a; act is SiLU or the
// identity. add1 / add2: this sample's rows (x's element type) or null.
template <int ES, bool SILU>
RISSOLE_INLINE void group_norm_sample(const void* x, const float* gamma, const float* beta, const void* add1,
                                      const void* add2, const void* residual, void* out, int64_t HW, int64_t C,
                                      int64_t G, float eps, float* scratch) {
  const int64_t P = chunk_pixels(HW, C), L = P * C;
  float* a = scratch;           // [L] repeated per-channel scale (first the repeated mean)
  float* b = a + L;             // [L] repeated per-channel shift
  float* added = b + L;         // [L] repeated sum of the added rows
  float* acc = added + L;       // [L] partial sums
  float* per = acc + L;         // [C] per-channel sums
  const int64_t cg = C / G;
  const double count = static_cast<double>(HW * cg);
  channel_sums<ES>(x, HW, C, P, acc, per, [](float v, int64_t) { return v; });
  for (int64_t g = 0; g < G; ++g) {
    double sum = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) sum += per[c];
    const float mean = static_cast<float>(sum / count);
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) b[c] = mean;
  }
  repeat_row(b, a, P, C);
  const float* mean = a;
  channel_sums<ES>(x, HW, C, P, acc, per, [mean](float v, int64_t i) {
    const float d = v - mean[i];
    return d * d;
  });
  for (int64_t g = 0; g < G; ++g) {
    double sum = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) sum += per[c];
    const float rstd = static_cast<float>(1.0 / std::sqrt(sum / count + static_cast<double>(eps)));
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
      const float scale = gamma[c] * rstd;
      per[c] = scale;
      b[c] = beta[c] - b[c] * scale;
    }
  }
  repeat_row(per, a, P, C);
  repeat_row(b, b + C, P - 1, C);
  for (int64_t c = 0; c < C; ++c) {
    added[c] = (add1 ? load<ES>(add1, c) : 0.0f) + (add2 ? load<ES>(add2, c) : 0.0f);
  }
  repeat_row(added, added + C, P - 1, C);
  for (int64_t p0 = 0; p0 < HW; p0 += P) {
    const int64_t len = std::min(P, HW - p0) * C, base = p0 * C;
    if (residual) {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const float y = load<ES>(x, base + i) * a[i] + b[i];
        store<ES>(out, base + i, (SILU ? silu<ES == 4>(y) : y) + added[i] + load<ES>(residual, base + i));
      }
    } else {
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) {
        const float y = load<ES>(x, base + i) * a[i] + b[i];
        store<ES>(out, base + i, (SILU ? silu<ES == 4>(y) : y) + added[i]);
      }
    }
  }
}

#define RISSOLE_GROUP_NORM_CLONE(NAME, ES, SILU)                                                                \
  RISSOLE_CLONES void NAME(const void* x, const float* gamma, const float* beta, const void* add1,              \
                           const void* add2, const void* residual, void* out, int64_t HW, int64_t C, int64_t G, \
                           float eps, float* scratch) {                                                         \
    group_norm_sample<ES, SILU>(x, gamma, beta, add1, add2, residual, out, HW, C, G, eps, scratch);             \
  }
RISSOLE_GROUP_NORM_CLONE(group_norm_silu_f32, 4, true)
RISSOLE_GROUP_NORM_CLONE(group_norm_silu_bf16, 2, true)
RISSOLE_GROUP_NORM_CLONE(group_norm_f32, 4, false)
RISSOLE_GROUP_NORM_CLONE(group_norm_bf16, 2, false)
#undef RISSOLE_GROUP_NORM_CLONE

// ---------------------------------------------------------------- Winograd F(2x2, 3x3)
//
// Output tile (i, j) covers output rows 2i, 2i+1 and columns 2j, 2j+1; its 4x4
// input tile starts at input row 2i - 1 and column 2j - 1 (padding 1, zeros
// outside). V = B^T d B with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1];
// Y = A^T M A with A^T = [1 1 1 0; 0 1 -1 -1].

// The input tile of output tile (ti, tj) of image n: alpha x alpha pixels from row m * ti - 1 and
// column m * tj - 1 (zeros outside the map), as d[alpha * alpha][C] in float32.
template <int ES>
RISSOLE_INLINE void load_input_tile(const void* x, const WinogradShape& s, int64_t n, int64_t ti, int64_t tj,
                                    float* d) {
  const int64_t C = s.C, alpha = s.alpha();
  for (int64_t r = 0; r < alpha; ++r) {
    const int64_t row = s.m * ti - 1 + r;
    for (int64_t q = 0; q < alpha; ++q) {
      const int64_t col = s.m * tj - 1 + q;
      float* dst = d + (r * alpha + q) * C;
      if (row < 0 || row >= s.H || col < 0 || col >= s.W) {
        for (int64_t c = 0; c < C; ++c) dst[c] = 0.0f;
      } else {
        const int64_t base = ((n * s.H + row) * s.W + col) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) dst[c] = load<ES>(x, base + c);
      }
    }
  }
}

// The transformed input of the tiles of one image: V[16][T][C] at rows t0 .. t0 + th*tw.
template <int ES>
RISSOLE_INLINE void winograd_input_image(const void* x, void* v, const WinogradShape& s, int64_t n) {
  const int64_t C = s.C, th = s.tiles_h(), tw = s.tiles_w(), T = s.tiles();
  std::vector<float> d(16 * C);
  for (int64_t ti = 0; ti < th; ++ti) {
    for (int64_t tj = 0; tj < tw; ++tj) {
      load_input_tile<ES>(x, s, n, ti, tj, d.data());
      const int64_t t = (n * th + ti) * tw + tj;
      const float* D = d.data();
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        float e[16];
        for (int q = 0; q < 4; ++q) {  // B^T d: along rows
          const float d0 = D[(0 * 4 + q) * C + c], d1 = D[(1 * 4 + q) * C + c];
          const float d2 = D[(2 * 4 + q) * C + c], d3 = D[(3 * 4 + q) * C + c];
          e[0 * 4 + q] = d0 - d2;
          e[1 * 4 + q] = d1 + d2;
          e[2 * 4 + q] = d2 - d1;
          e[3 * 4 + q] = d1 - d3;
        }
        for (int r = 0; r < 4; ++r) {  // (B^T d) B: along columns
          const float e0 = e[r * 4 + 0], e1 = e[r * 4 + 1], e2 = e[r * 4 + 2], e3 = e[r * 4 + 3];
          store<ES>(v, ((r * 4 + 0) * T + t) * C + c, e0 - e2);
          store<ES>(v, ((r * 4 + 1) * T + t) * C + c, e1 + e2);
          store<ES>(v, ((r * 4 + 2) * T + t) * C + c, e2 - e1);
          store<ES>(v, ((r * 4 + 3) * T + t) * C + c, e1 - e3);
        }
      }
    }
  }
}

// One tile's ROWS x COLS outputs (2 x 2 inside the map) of all K channels, at out[base], rows
// row_stride apart: Y = A^T M A + bias (K values).
template <int ES, int ROWS, int COLS>
RISSOLE_INLINE void output_tile(const void* m, const float* bias, void* out, int64_t T, int64_t K, int64_t t, int64_t base,
                        int64_t row_stride) {
#pragma omp simd
  for (int64_t k = 0; k < K; ++k) {
    float f[8];  // A^T M: 2 rows of 4
    for (int q = 0; q < 4; ++q) {
      const float m0 = load<ES>(m, ((0 * 4 + q) * T + t) * K + k), m1 = load<ES>(m, ((1 * 4 + q) * T + t) * K + k);
      const float m2 = load<ES>(m, ((2 * 4 + q) * T + t) * K + k), m3 = load<ES>(m, ((3 * 4 + q) * T + t) * K + k);
      f[q] = m0 + m1 + m2;
      f[4 + q] = m1 - m2 - m3;
    }
    const float b = bias[k];
    for (int r = 0; r < ROWS; ++r) {
      const float* fr = f + 4 * r;
      store<ES>(out, base + r * row_stride + k, fr[0] + fr[1] + fr[2] + b);
      if (COLS == 2) store<ES>(out, base + r * row_stride + K + k, fr[1] - fr[2] - fr[3] + b);
    }
  }
}

// The outputs of one image's tiles from M[16][T][K], plus the bias; out [N, H, W, K].
template <int ES>
RISSOLE_INLINE void winograd_output_image(const void* m, const float* bias, void* out, const WinogradShape& s, int64_t n) {
  const int64_t K = s.K, th = s.tiles_h(), tw = s.tiles_w(), T = s.tiles();
  const std::vector<float> zeros(bias ? 0 : static_cast<size_t>(K), 0.0f);
  if (!bias) bias = zeros.data();
  for (int64_t ti = 0; ti < th; ++ti) {
    for (int64_t tj = 0; tj < tw; ++tj) {
      const int64_t t = (n * th + ti) * tw + tj;
      // Tiles on an odd edge write fewer than 2x2 outputs.
      const int rows = 2 * ti + 1 < s.H ? 2 : 1, cols = 2 * tj + 1 < s.W ? 2 : 1;
      const int64_t base = ((n * s.H + 2 * ti) * s.W + 2 * tj) * K;
      if (rows == 2 && cols == 2) {
        output_tile<ES, 2, 2>(m, bias, out, T, K, t, base, s.W * K);
      } else if (rows == 2) {
        output_tile<ES, 2, 1>(m, bias, out, T, K, t, base, s.W * K);
      } else if (cols == 2) {
        output_tile<ES, 1, 2>(m, bias, out, T, K, t, base, s.W * K);
      } else {
        output_tile<ES, 1, 1>(m, bias, out, T, K, t, base, s.W * K);
      }
    }
  }
}

// ---------------------------------------------------------------- attention over pixels

// One image: for each head, softmax(scale * Q K^T) V over its T pixels, from qkv [T][3 * H * D]
// (channels [q | k | v], head-major: channel = head * D + d) to out [T][H * D]. The models have many
// small heads (64 heads of 4 channels over 4 or 16 pixels), so the heads are the vector lanes: q, k
// and v are first de-interleaved to [T][D][Hp] (H padded with zero heads to a multiple of kLanes),
// then each group of kLanes heads is one vector through every loop (no horizontal reductions; the
// softmax's max and sum are elementwise across heads). FIXED_D > 0 compiles the loops over d for
// that head size (unrolled; the de-interleaving then vectorises with permutes).
constexpr int64_t kLanes = 16;

template <int ES, int64_t FIXED_D>
RISSOLE_INLINE void pixel_attention_image(const void* qkv, void* out, const AttentionShape& s, int64_t n,
                                          float* scratch) {
  const int64_t T = s.T, H = s.heads, D = FIXED_D ? FIXED_D : s.head_dim, HD = H * D, row = 3 * HD;
  const int64_t Hp = (H + kLanes - 1) / kLanes * kLanes, DHp = D * Hp;
  float* q = scratch;     // [T][D][Hp] scaled queries
  float* k = q + T * DHp;  // [T][D][Hp]
  float* v = k + T * DHp;  // [T][D][Hp]
  float* S = v + T * DHp;  // [T keys][kLanes] scores of one query, then its weights
  const int64_t in0 = n * T * row, out0 = n * T * HD;
  for (int64_t i = 0; i < T * DHp; ++i) q[i] = k[i] = v[i] = 0.0f;  // the padding heads
  for (int64_t i = 0; i < T; ++i) {
    const int64_t src = in0 + i * row;
    for (int64_t d = 0; d < D; ++d) {
      float* qd = q + i * DHp + d * Hp;
      float* kd = k + i * DHp + d * Hp;
      float* vd = v + i * DHp + d * Hp;
#pragma omp simd
      for (int64_t h = 0; h < H; ++h) {
        qd[h] = load<ES>(qkv, src + h * D + d) * s.scale;
        kd[h] = load<ES>(qkv, src + HD + h * D + d);
        vd[h] = load<ES>(qkv, src + 2 * HD + h * D + d);
      }
    }
  }
  for (int64_t h0 = 0; h0 < Hp; h0 += kLanes) {
    for (int64_t i = 0; i < T; ++i) {
      const float* qi = q + i * DHp + h0;
      float top[kLanes], total[kLanes];
      for (int64_t j = 0; j < T; ++j) {
        const float* kj = k + j * DHp + h0;
        float acc[kLanes] = {};
        for (int64_t d = 0; d < D; ++d) {
#pragma omp simd
          for (int64_t l = 0; l < kLanes; ++l) acc[l] += qi[d * Hp + l] * kj[d * Hp + l];
        }
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          S[j * kLanes + l] = acc[l];
          top[l] = j == 0 ? acc[l] : std::max(top[l], acc[l]);
        }
      }
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) total[l] = 0.0f;
      for (int64_t j = 0; j < T; ++j) {
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) {
          const float e = exp_nonpositive(S[j * kLanes + l] - top[l]);
          S[j * kLanes + l] = e;
          total[l] += e;
        }
      }
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) total[l] = 1.0f / total[l];
      const int64_t heads = std::min(kLanes, H - h0);
      for (int64_t d = 0; d < D; ++d) {
        float acc[kLanes] = {};
        for (int64_t j = 0; j < T; ++j) {
          const float* vjd = v + j * DHp + d * Hp + h0;
#pragma omp simd
          for (int64_t l = 0; l < kLanes; ++l) acc[l] += S[j * kLanes + l] * vjd[l];
        }
        for (int64_t l = 0; l < heads; ++l) store<ES>(out, out0 + i * HD + (h0 + l) * D + d, acc[l] * total[l]);
      }
    }
  }
}

// Floats of pixel_attention_image's scratch.
int64_t attention_scratch(const AttentionShape& s) {
  const int64_t Hp = (s.heads + kLanes - 1) / kLanes * kLanes;
  return 3 * s.T * s.head_dim * Hp + s.T * kLanes;
}

RISSOLE_CLONES void pixel_attention_f32(const void* qkv, void* out, const AttentionShape& s, int64_t n,
                                        float* scratch) {
  if (s.head_dim == 4) {  // the models' heads
    pixel_attention_image<4, 4>(qkv, out, s, n, scratch);
  } else {
    pixel_attention_image<4, 0>(qkv, out, s, n, scratch);
  }
}
RISSOLE_CLONES void pixel_attention_bf16(const void* qkv, void* out, const AttentionShape& s, int64_t n,
                                         float* scratch) {
  if (s.head_dim == 4) {
    pixel_attention_image<2, 4>(qkv, out, s, n, scratch);
  } else {
    pixel_attention_image<2, 0>(qkv, out, s, n, scratch);
  }
}

// ---------------------------------------------------------------- transposed convolution overlap-add

// One image: output pixel (oy, ox) receives tap (ky, kx) of input pixel (iy, ix) where
// oy = iy * stride - padding + ky (likewise for x): per output row, the taps whose input row is whole.
template <int ES>
RISSOLE_INLINE void overlap_add_image(const void* cols, const float* bias, void* out, const TransposedConvShape& s,
                                      int64_t n, float* acc) {
  const int64_t K = s.K, k = s.kernel, taps = k * k * K;
  for (int64_t oy = 0; oy < s.OH; ++oy) {
    for (int64_t ox = 0; ox < s.OW; ++ox) {
#pragma omp simd
      for (int64_t c = 0; c < K; ++c) acc[c] = bias ? bias[c] : 0.0f;
      for (int64_t ky = 0; ky < k; ++ky) {
        const int64_t ny = oy + s.padding - ky;
        if (ny < 0 || ny % s.stride != 0 || ny / s.stride >= s.H) continue;
        for (int64_t kx = 0; kx < k; ++kx) {
          const int64_t nx = ox + s.padding - kx;
          if (nx < 0 || nx % s.stride != 0 || nx / s.stride >= s.W) continue;
          const int64_t base = ((n * s.H + ny / s.stride) * s.W + nx / s.stride) * taps + (ky * k + kx) * K;
#pragma omp simd
          for (int64_t c = 0; c < K; ++c) acc[c] += load<ES>(cols, base + c);
        }
      }
      const int64_t dst = ((n * s.OH + oy) * s.OW + ox) * K;
#pragma omp simd
      for (int64_t c = 0; c < K; ++c) store<ES>(out, dst + c, acc[c]);
    }
  }
}

RISSOLE_CLONES void overlap_add_f32(const void* cols, const float* bias, void* out, const TransposedConvShape& s,
                                    int64_t n, float* acc) {
  overlap_add_image<4>(cols, bias, out, s, n, acc);
}
RISSOLE_CLONES void overlap_add_bf16(const void* cols, const float* bias, void* out, const TransposedConvShape& s,
                                     int64_t n, float* acc) {
  overlap_add_image<2>(cols, bias, out, s, n, acc);
}

RISSOLE_CLONES void winograd_input_f32(const void* x, void* v, const WinogradShape& s, int64_t n) {
  winograd_input_image<4>(x, v, s, n);
}
RISSOLE_CLONES void winograd_input_bf16(const void* x, void* v, const WinogradShape& s, int64_t n) {
  winograd_input_image<2>(x, v, s, n);
}
RISSOLE_CLONES void winograd_output_f32(const void* m, const float* bias, void* out, const WinogradShape& s,
                                        int64_t n) {
  winograd_output_image<4>(m, bias, out, s, n);
}
RISSOLE_CLONES void winograd_output_bf16(const void* m, const float* bias, void* out, const WinogradShape& s,
                                         int64_t n) {
  winograd_output_image<2>(m, bias, out, s, n);
}

// ---------------------------------------------------------------- Winograd F(4x4, 3x3)
//
// Output tile (i, j) covers output rows 4i .. 4i+3 and columns 4j .. 4j+3; its 6x6 input tile starts
// at row 4i - 1 and column 4j - 1 (zeros outside). Interpolation points 0, 1, -1, 2, -2 and infinity
// (Lavin and Gray): V = B^T d B, Y = A^T M A, with the weights' G g G^T made in Python. B^T and A^T
// are written out (their zeros skipped), each applied as one pass over a row of channels, so that
// every loop runs over the contiguous channels.

// out[j] = (B^T in)[j] for the 6 channel rows in[r] (elements i0 + r * is + c) and out[j]
// (o0 + j * os + c). B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0;
// 0 2 -1 -2 1 0; 0 4 0 -5 0 1].
template <int IES, int OES>
RISSOLE_INLINE void bt6_pass(const void* in, int64_t i0, int64_t is, void* out, int64_t o0, int64_t os, int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float d0 = load<IES>(in, i0 + c), d1 = load<IES>(in, i0 + is + c), d2 = load<IES>(in, i0 + 2 * is + c);
    const float d3 = load<IES>(in, i0 + 3 * is + c), d4 = load<IES>(in, i0 + 4 * is + c);
    const float d5 = load<IES>(in, i0 + 5 * is + c);
    store<OES>(out, o0 + c, 4.0f * d0 - 5.0f * d2 + d4);
    store<OES>(out, o0 + os + c, -4.0f * (d1 + d2) + d3 + d4);
    store<OES>(out, o0 + 2 * os + c, 4.0f * (d1 - d2) - d3 + d4);
    store<OES>(out, o0 + 3 * os + c, 2.0f * (d3 - d1) - d2 + d4);
    store<OES>(out, o0 + 4 * os + c, 2.0f * (d1 - d3) - d2 + d4);
    store<OES>(out, o0 + 5 * os + c, 4.0f * d1 - 5.0f * d3 + d5);
  }
}

// out[i] = (A^T in)[i] + add for 6 rows in, 4 rows out, as bt6_pass; A^T = [1 1 1 1 1 0;
// 0 1 -1 2 -2 0; 0 1 1 4 4 0; 0 1 -1 8 -8 1]. add (per channel) may be null.
template <int IES>
RISSOLE_INLINE void at6_pass(const void* in, int64_t i0, int64_t is, float* out, int64_t os, const float* add,
                             int64_t C) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float m0 = load<IES>(in, i0 + c), m1 = load<IES>(in, i0 + is + c), m2 = load<IES>(in, i0 + 2 * is + c);
    const float m3 = load<IES>(in, i0 + 3 * is + c), m4 = load<IES>(in, i0 + 4 * is + c);
    const float m5 = load<IES>(in, i0 + 5 * is + c);
    const float b = add ? add[c] : 0.0f;
    const float s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    out[c] = m0 + s12 + s34 + b;
    out[os + c] = d12 + 2.0f * d34 + b;
    out[2 * os + c] = s12 + 4.0f * s34 + b;
    out[3 * os + c] = d12 + 8.0f * d34 + m5 + b;
  }
}

template <int ES>
RISSOLE_INLINE void winograd4_input_image(const void* x, void* v, const WinogradShape& s, int64_t n) {
  const int64_t C = s.C, th = s.tiles_h(), tw = s.tiles_w(), T = s.tiles();
  std::vector<float> d(36 * C), e(36 * C);  // one tile [6][6][C], and B^T d
  for (int64_t ti = 0; ti < th; ++ti) {
    for (int64_t tj = 0; tj < tw; ++tj) {
      load_input_tile<ES>(x, s, n, ti, tj, d.data());
      const int64_t t = (n * th + ti) * tw + tj;
      for (int q = 0; q < 6; ++q) bt6_pass<4, 4>(d.data(), q * C, 6 * C, e.data(), q * C, 6 * C, C);  // B^T d
      for (int a = 0; a < 6; ++a) {  // (B^T d) B, into V[a * 6 + b][t]
        bt6_pass<4, ES>(e.data(), 6 * a * C, C, v, ((6 * a) * T + t) * C, T * C, C);
      }
    }
  }
}

template <int ES>
RISSOLE_INLINE void winograd4_output_image(const void* m, const float* bias, void* out, const WinogradShape& s,
                                           int64_t n) {
  const int64_t K = s.K, th = s.tiles_h(), tw = s.tiles_w(), T = s.tiles();
  const std::vector<float> zeros(bias ? 0 : static_cast<size_t>(K), 0.0f);
  if (!bias) bias = zeros.data();
  std::vector<float> f(24 * K), y(16 * K);  // A^T M [4][6][K] and one tile's outputs [4][4][K]
  for (int64_t ti = 0; ti < th; ++ti) {
    for (int64_t tj = 0; tj < tw; ++tj) {
      const int64_t t = (n * th + ti) * tw + tj;
      for (int q = 0; q < 6; ++q) at6_pass<ES>(m, (q * T + t) * K, 6 * T * K, f.data() + q * K, 6 * K, nullptr, K);
      for (int i = 0; i < 4; ++i) at6_pass<4>(f.data(), 6 * i * K, K, y.data() + 4 * i * K, K, bias, K);
      const float* Y = y.data();
      // Tiles on the map's edge write only the outputs inside it.
      const int64_t rows = std::min<int64_t>(4, s.H - 4 * ti), cols = std::min<int64_t>(4, s.W - 4 * tj);
      for (int64_t i = 0; i < rows; ++i) {
        for (int64_t j = 0; j < cols; ++j) {
          const int64_t base = ((n * s.H + 4 * ti + i) * s.W + 4 * tj + j) * K;
          const float* src = Y + (i * 4 + j) * K;
#pragma omp simd
          for (int64_t k = 0; k < K; ++k) store<ES>(out, base + k, src[k]);
        }
      }
    }
  }
}

RISSOLE_CLONES void winograd4_input_f32(const void* x, void* v, const WinogradShape& s, int64_t n) {
  winograd4_input_image<4>(x, v, s, n);
}
RISSOLE_CLONES void winograd4_input_bf16(const void* x, void* v, const WinogradShape& s, int64_t n) {
  winograd4_input_image<2>(x, v, s, n);
}
RISSOLE_CLONES void winograd4_output_f32(const void* m, const float* bias, void* out, const WinogradShape& s,
                                         int64_t n) {
  winograd4_output_image<4>(m, bias, out, s, n);
}
RISSOLE_CLONES void winograd4_output_bf16(const void* m, const float* bias, void* out, const WinogradShape& s,
                                          int64_t n) {
  winograd4_output_image<2>(m, bias, out, s, n);
}


int resolve_threads(int num_threads) {
#ifdef _OPENMP
  return num_threads > 0 ? num_threads : omp_get_max_threads();
#else
  (void)num_threads;
  return 1;
#endif
}

// fn(n) for every image n, images split over the threads.
template <typename Fn>
void for_each_image(int64_t N, int num_threads, Fn&& fn) {
  const int threads = resolve_threads(num_threads);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && N > 1)
#endif
  for (int64_t n = 0; n < N; ++n) fn(n);
  (void)threads;
}

}  // namespace

void check_group_norm_shape(const GroupNormShape& s, const RowAdd& add1, const RowAdd& add2, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.N < 0 || s.HW < 1 || s.C < 1 || s.G < 1) throw std::invalid_argument("group norm: bad shape");
  if (s.C % s.G != 0) {
    throw std::invalid_argument("group norm: " + std::to_string(s.C) + " channels are not divisible into " +
                                std::to_string(s.G) + " groups");
  }
  for (const RowAdd* add : {&add1, &add2}) {
    if (add->rows != 0 && add->rows != 1 && add->rows != s.N) {
      throw std::invalid_argument("group norm: an added bias must have 1 or N rows");
    }
    if (add->rows != 0 && (add->data == nullptr || (add->rows > 1 && add->stride < s.C))) {
      throw std::invalid_argument("group norm: an added bias needs data and a row stride of at least C");
    }
  }
}

void check_transposed_conv_shape(const TransposedConvShape& s, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.N < 0 || s.H < 1 || s.W < 1 || s.OH < 1 || s.OW < 1 || s.K < 1 || s.kernel < 1 || s.stride < 1 ||
      s.padding < 0) {
    throw std::invalid_argument("transposed conv: bad shape");
  }
}

void check_attention_shape(const AttentionShape& s, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.N < 0 || s.T < 1 || s.heads < 1 || s.head_dim < 1) throw std::invalid_argument("attention: bad shape");
}

void check_winograd_shape(const WinogradShape& s, int64_t elem_size) {
  check_elem_size(elem_size);
  if (s.N < 0 || s.H < 1 || s.W < 1 || s.C < 1 || s.K < 1) throw std::invalid_argument("winograd: bad shape");
  if (s.m != 2 && s.m != 4) throw std::invalid_argument("winograd: the output tile must be 2 or 4");
}

namespace cpu {

void group_norm_fused(const void* x, const float* gamma, const float* beta, const RowAdd& add1, const RowAdd& add2,
                      const void* residual, void* out, const GroupNormShape& s, float eps, bool silu,
                      int64_t elem_size, int num_threads) {
  check_group_norm_shape(s, add1, add2, elem_size);
  const int threads = resolve_threads(num_threads);
  const int64_t es = elem_size;
  using Sample = void (*)(const void*, const float*, const float*, const void*, const void*, const void*, void*,
                          int64_t, int64_t, int64_t, float, float*);
  const Sample sample = es == 4 ? (silu ? group_norm_silu_f32 : group_norm_f32)
                                : (silu ? group_norm_silu_bf16 : group_norm_bf16);
  // This sample's row of an added bias, or null.
  const auto row_of = [es](const RowAdd& add, int64_t n) -> const void* {
    if (add.rows == 0) return nullptr;
    return static_cast<const char*>(add.data) + (add.rows == 1 ? 0 : n * add.stride * es);
  };
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && s.N > 1)
#endif
  {
    std::vector<float> scratch(static_cast<size_t>(group_norm_scratch(s)));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t n = 0; n < s.N; ++n) {
      const int64_t offset = n * s.HW * s.C * es;
      const char* xn = static_cast<const char*>(x) + offset;
      const char* rn = residual ? static_cast<const char*>(residual) + offset : nullptr;
      char* on = static_cast<char*>(out) + offset;
      sample(xn, gamma, beta, row_of(add1, n), row_of(add2, n), rn, on, s.HW, s.C, s.G, eps, scratch.data());
    }
  }
  (void)threads;
}

void pixel_attention(const void* qkv, void* out, const AttentionShape& s, int64_t elem_size, int num_threads) {
  check_attention_shape(s, elem_size);
  const int threads = resolve_threads(num_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && s.N > 1)
#endif
  {
    std::vector<float> scratch(static_cast<size_t>(attention_scratch(s)));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t n = 0; n < s.N; ++n) {
      (elem_size == 4 ? pixel_attention_f32 : pixel_attention_bf16)(qkv, out, s, n, scratch.data());
    }
  }
  (void)threads;
}

void transposed_conv_overlap_add(const void* cols, const float* bias, void* out, const TransposedConvShape& s,
                                 int64_t elem_size, int num_threads) {
  check_transposed_conv_shape(s, elem_size);
  const int threads = resolve_threads(num_threads);
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1 && s.N > 1)
#endif
  {
    std::vector<float> acc(static_cast<size_t>(s.K));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t n = 0; n < s.N; ++n) {
      (elem_size == 4 ? overlap_add_f32 : overlap_add_bf16)(cols, bias, out, s, n, acc.data());
    }
  }
  (void)threads;
}

void winograd_input_transform(const void* x, void* v, const WinogradShape& s, int64_t elem_size, int num_threads) {
  check_winograd_shape(s, elem_size);
  for_each_image(s.N, num_threads, [&](int64_t n) {
    if (s.m == 4) {
      (elem_size == 4 ? winograd4_input_f32 : winograd4_input_bf16)(x, v, s, n);
    } else {
      (elem_size == 4 ? winograd_input_f32 : winograd_input_bf16)(x, v, s, n);
    }
  });
}

void winograd_output_transform(const void* m, const float* bias, void* out, const WinogradShape& s,
                               int64_t elem_size, int num_threads) {
  check_winograd_shape(s, elem_size);
  for_each_image(s.N, num_threads, [&](int64_t n) {
    if (s.m == 4) {
      (elem_size == 4 ? winograd4_output_f32 : winograd4_output_bf16)(m, bias, out, s, n);
    } else {
      (elem_size == 4 ? winograd_output_f32 : winograd_output_bf16)(m, bias, out, s, n);
    }
  });
}

}  // namespace cpu
}  // namespace rissole

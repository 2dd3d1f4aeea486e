// Block operations of the rissole_trt core.
//
// Every function takes raw addresses plus shapes (no libtorch), so one build
// serves any torch version. Tensors are dense, C-contiguous. Copies move
// elements by their size in bytes (2 or 4), so one kernel serves float32,
// float16 and bfloat16 bit for bit.
//
// Bad arguments throw std::invalid_argument (ValueError in Python); out-of-range
// ids or codes throw std::out_of_range (IndexError), always before any write.
#pragma once

#include <cstdint>

namespace rissole {

// Geometry shared by the block ops: a latent [B, C, H, W] cut into bf x bf
// blocks of bh x bw (bh = H / bf, bw = W / bf), P = bf * bf.
struct BlockShape {
  int64_t B, C, H, W, bf;
  int64_t bh() const { return H / bf; }
  int64_t bw() const { return W / bf; }
  int64_t P() const { return bf * bf; }
};

// Shapes of a neighbour gather: database [P, N, C, bh, bw], ids [B, k].
struct GatherShape {
  int64_t P, N, C, bh, bw, B, k;
};

// Shapes of a code gather: codes [P, N, bh, bw] (uint16), codebook [K, C],
// ids [B, k].
struct CodeGatherShape {
  int64_t P, N, bh, bw, K, C, B, k;
};

// A GroupNorm over channels-last maps x [N, HW, C] with G groups.
struct GroupNormShape {
  int64_t N, HW, C, G;
};

// Rows [rows, C] added after a GroupNorm, in the activations' element type: rows is 0 (nothing
// added), 1 (one row for every sample) or N (row n for sample n, `stride` elements apart).
struct RowAdd {
  const void* data;
  int64_t rows, stride;
};

// Multi-head self-attention over the T pixels of each of N maps: qkv [N, T, 3 * heads * head_dim]
// (channels-last 1x1-conv output), scores scaled by `scale`.
struct AttentionShape {
  int64_t N, T, heads, head_dim;
  float scale;
};

// A 3x3, stride-1, padding-1 convolution of x [N, H, W, C] (channels-last) to K
// channels by Winograd F(m x m, 3x3), m = 2 or 4: T = N * ceil(H/m) * ceil(W/m)
// output tiles of m x m, each from an (m + 2) x (m + 2) input tile.
struct WinogradShape {
  int64_t N, H, W, C, K;
  int64_t m = 2;
  int64_t alpha() const { return m + 2; }
  int64_t tiles_h() const { return (H + m - 1) / m; }
  int64_t tiles_w() const { return (W + m - 1) / m; }
  int64_t tiles() const { return N * tiles_h() * tiles_w(); }
};

// A transposed convolution (stride s, padding p, a k x k kernel, groups 1) of x [N, H, W, C] to
// out [N, OH, OW, K] as one GEMM to per-tap columns cols [N, H, W, k, k, K] (x times the weights
// [C, k * k * K]) and this overlap-add of the columns into the output pixels.
struct TransposedConvShape {
  int64_t N, H, W, OH, OW, K, kernel, stride, padding;
};

void check_block_shape(const BlockShape& s, int64_t elem_size);
void check_transposed_conv_shape(const TransposedConvShape& s, int64_t elem_size);
void check_group_norm_shape(const GroupNormShape& s, const RowAdd& add1, const RowAdd& add2, int64_t elem_size);
void check_winograd_shape(const WinogradShape& s, int64_t elem_size);
void check_attention_shape(const AttentionShape& s, int64_t elem_size);
void check_elem_size(int64_t elem_size);
// Throws std::out_of_range naming the first id outside [0, N).
void check_ids(const int64_t* ids, int64_t B, int64_t k, int64_t N);

namespace cpu {
void split_blocks(const void* z, void* out, const BlockShape& s, int64_t elem_size, int num_threads);
void merge_blocks(const void* blocks, void* out, const BlockShape& s, int64_t elem_size, int num_threads);
void gather_blocks(const void* db, const int64_t* ids, void* out, const GatherShape& s,
                   int64_t elem_size, int num_threads);
void gather_code_blocks(const uint16_t* codes, const void* codebook, const int64_t* ids, void* out,
                        const CodeGatherShape& s, int64_t elem_size, int num_threads);

// Layer kernels (layers.cpp). Activations are float32 or bfloat16 (elem_size
// 4 or 2), arithmetic float32; gamma, beta and biases are float32.
//
// out = act(group_norm(x) * gamma + beta) + add1[row] + add2[row] (+ residual), one pass after the
// statistics; act is SiLU (silu) or the identity; residual is like x or null.
void group_norm_fused(const void* x, const float* gamma, const float* beta, const RowAdd& add1, const RowAdd& add2,
                      const void* residual, void* out, const GroupNormShape& s, float eps, bool silu,
                      int64_t elem_size, int num_threads);
// out [N, T, heads * head_dim] = softmax(scale * Q K^T) V per map and head, float32 throughout
// (the whole attention in one pass; no [T, T] score matrix leaves the cache).
void pixel_attention(const void* qkv, void* out, const AttentionShape& s, int64_t elem_size, int num_threads);
// out[n, oy, ox, :] = bias + the columns of every (input pixel, tap) landing on (oy, ox); cols in
// x's element type, float32 sums, bias float32 or null.
void transposed_conv_overlap_add(const void* cols, const float* bias, void* out, const TransposedConvShape& s,
                                 int64_t elem_size, int num_threads);
// x [N, H, W, C] -> V [alpha^2, T, C], the transformed input tiles.
void winograd_input_transform(const void* x, void* v, const WinogradShape& s, int64_t elem_size, int num_threads);
// M [alpha^2, T, K] (V times the transformed weights, per tile position) -> out
// [N, H, W, K] plus bias (null: none).
void winograd_output_transform(const void* m, const float* bias, void* out, const WinogradShape& s,
                               int64_t elem_size, int num_threads);
}  // namespace cpu

#ifdef RISSOLE_WITH_CUDA
namespace cuda {
// All pointers are device pointers on `device`; work is queued on `stream`
// (a cudaStream_t passed as an integer) and not synchronised.
void split_blocks(const void* z, void* out, const BlockShape& s, int64_t elem_size, int device,
                  uintptr_t stream);
void merge_blocks(const void* blocks, void* out, const BlockShape& s, int64_t elem_size, int device,
                  uintptr_t stream);
// ids must already be validated (check_ids on a host copy); the kernel still
// skips ids out of range so nothing is ever read out of bounds.
void gather_blocks(const void* db, const int64_t* ids, void* out, const GatherShape& s,
                   int64_t elem_size, int device, uintptr_t stream);
// Code values >= K are not read through: the kernel writes zeros there and
// records max(bad code) + 1 in *error_flag (an int32 on the device, zeroed by
// the caller), which the caller checks after the kernel.
void gather_code_blocks(const uint16_t* codes, const void* codebook, const int64_t* ids, void* out,
                        int32_t* error_flag, const CodeGatherShape& s, int64_t elem_size, int device,
                        uintptr_t stream);
// Number of visible devices, or -1 with `error` filled when the runtime or
// driver cannot be used (e.g. no driver installed).
int device_count(const char** error);
// CUDART_VERSION the kernels were compiled against, e.g. 13000.
int compiled_runtime_version();
}  // namespace cuda
#endif

}  // namespace rissole

// The only PYBIND11_MODULE of rissole_trt: thin wrappers that turn Python
// integers (addresses from tensor.data_ptr()) and shapes into calls of ops.h.
// The Python package (rissole_trt.ops) owns allocation, dtype and device logic.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "ops.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using rissole::BlockShape;
using rissole::CodeGatherShape;
using rissole::GatherShape;
using rissole::GroupNormShape;
using rissole::RowAdd;
using rissole::TransposedConvShape;
using rissole::WinogradShape;
using rissole::AttentionShape;

namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= text.size() && !text.empty()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    parts.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

py::dict build_info() {
  py::dict info;
  info["version"] = RISSOLE_VERSION;
  info["compiler"] = RISSOLE_CXX_COMPILER;
  info["cxx_standard"] = RISSOLE_CXX_STANDARD;
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
#ifdef RISSOLE_WITH_CUDA
  const int v = rissole::cuda::compiled_runtime_version();
  info["cuda_compiled"] = true;
  info["cuda_version"] = std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
  info["cuda_compiler_version"] = RISSOLE_CUDA_COMPILER_VERSION;
  info["cuda_architectures"] = split_list(RISSOLE_CUDA_ARCHS);
#else
  info["cuda_compiled"] = false;
  info["cuda_version"] = py::none();
  info["cuda_compiler_version"] = py::none();
  info["cuda_architectures"] = std::vector<std::string>{};
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "rissole_trt compiled core: block split/merge and neighbour gathers (CPU and CUDA); CPU layer kernels";
  m.def("build_info", &build_info, "How this extension was built: compiler, C++ standard, OpenMP, CUDA.");

  m.def(
      "check_ids",
      [](uintptr_t ids, int64_t B, int64_t k, int64_t N) { rissole::check_ids(ptr<const int64_t>(ids), B, k, N); },
      py::arg("ids"), py::arg("B"), py::arg("k"), py::arg("N"),
      "Raise IndexError naming the first id of the host int64 array [B, k] outside [0, N).");

  m.def(
      "split_blocks",
      [](uintptr_t z, uintptr_t out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t bf, int64_t elem_size,
         int num_threads) {
        const BlockShape s{B, C, H, W, bf};
        py::gil_scoped_release release;
        rissole::cpu::split_blocks(ptr<const void>(z), ptr<void>(out), s, elem_size, num_threads);
      },
      py::arg("z"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("bf"),
      py::arg("elem_size"), py::arg("num_threads") = 0);

  m.def(
      "merge_blocks",
      [](uintptr_t blocks, uintptr_t out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t bf, int64_t elem_size,
         int num_threads) {
        const BlockShape s{B, C, H, W, bf};
        py::gil_scoped_release release;
        rissole::cpu::merge_blocks(ptr<const void>(blocks), ptr<void>(out), s, elem_size, num_threads);
      },
      py::arg("blocks"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("bf"),
      py::arg("elem_size"), py::arg("num_threads") = 0);

  m.def(
      "gather_blocks",
      [](uintptr_t db, uintptr_t ids, uintptr_t out, int64_t P, int64_t N, int64_t C, int64_t bh, int64_t bw,
         int64_t B, int64_t k, int64_t elem_size, int num_threads) {
        const GatherShape s{P, N, C, bh, bw, B, k};
        py::gil_scoped_release release;
        rissole::cpu::gather_blocks(ptr<const void>(db), ptr<const int64_t>(ids), ptr<void>(out), s, elem_size,
                                    num_threads);
      },
      py::arg("db"), py::arg("ids"), py::arg("out"), py::arg("P"), py::arg("N"), py::arg("C"), py::arg("bh"),
      py::arg("bw"), py::arg("B"), py::arg("k"), py::arg("elem_size"), py::arg("num_threads") = 0);

  m.def(
      "gather_code_blocks",
      [](uintptr_t codes, uintptr_t codebook, uintptr_t ids, uintptr_t out, int64_t P, int64_t N, int64_t bh,
         int64_t bw, int64_t K, int64_t C, int64_t B, int64_t k, int64_t elem_size, int num_threads) {
        const CodeGatherShape s{P, N, bh, bw, K, C, B, k};
        py::gil_scoped_release release;
        rissole::cpu::gather_code_blocks(ptr<const uint16_t>(codes), ptr<const void>(codebook),
                                         ptr<const int64_t>(ids), ptr<void>(out), s, elem_size, num_threads);
      },
      py::arg("codes"), py::arg("codebook"), py::arg("ids"), py::arg("out"), py::arg("P"), py::arg("N"),
      py::arg("bh"), py::arg("bw"), py::arg("K"), py::arg("C"), py::arg("B"), py::arg("k"), py::arg("elem_size"),
      py::arg("num_threads") = 0);

  m.def(
      "group_norm_fused",
      [](uintptr_t x, uintptr_t gamma, uintptr_t beta, uintptr_t add1, int64_t add1_rows, int64_t add1_stride,
         uintptr_t add2, int64_t add2_rows, int64_t add2_stride, uintptr_t residual, uintptr_t out, int64_t N,
         int64_t HW, int64_t C, int64_t G, float eps, bool silu, int64_t elem_size, int num_threads) {
        const GroupNormShape s{N, HW, C, G};
        const RowAdd first{ptr<const void>(add1), add1_rows, add1_stride};
        const RowAdd second{ptr<const void>(add2), add2_rows, add2_stride};
        py::gil_scoped_release release;
        rissole::cpu::group_norm_fused(ptr<const void>(x), ptr<const float>(gamma), ptr<const float>(beta), first,
                                       second, ptr<const void>(residual), ptr<void>(out), s, eps, silu, elem_size,
                                       num_threads);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("add1"), py::arg("add1_rows"), py::arg("add1_stride"),
      py::arg("add2"), py::arg("add2_rows"), py::arg("add2_stride"), py::arg("residual"), py::arg("out"),
      py::arg("N"), py::arg("HW"), py::arg("C"), py::arg("G"), py::arg("eps"), py::arg("silu"),
      py::arg("elem_size"), py::arg("num_threads") = 0);

  m.def(
      "pixel_attention",
      [](uintptr_t qkv, uintptr_t out, int64_t N, int64_t T, int64_t heads, int64_t head_dim, float scale,
         int64_t elem_size, int num_threads) {
        const AttentionShape s{N, T, heads, head_dim, scale};
        py::gil_scoped_release release;
        rissole::cpu::pixel_attention(ptr<const void>(qkv), ptr<void>(out), s, elem_size, num_threads);
      },
      py::arg("qkv"), py::arg("out"), py::arg("N"), py::arg("T"), py::arg("heads"), py::arg("head_dim"),
      py::arg("scale"), py::arg("elem_size"), py::arg("num_threads") = 0);

  m.def(
      "winograd_input_transform",
      [](uintptr_t x, uintptr_t v, int64_t N, int64_t H, int64_t W, int64_t C, int64_t elem_size, int num_threads,
         int64_t tile) {
        const WinogradShape s{N, H, W, C, 1, tile};
        py::gil_scoped_release release;
        rissole::cpu::winograd_input_transform(ptr<const void>(x), ptr<void>(v), s, elem_size, num_threads);
      },
      py::arg("x"), py::arg("v"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("C"), py::arg("elem_size"),
      py::arg("num_threads") = 0, py::arg("tile") = 2);

  m.def(
      "winograd_output_transform",
      [](uintptr_t m_, uintptr_t bias, uintptr_t out, int64_t N, int64_t H, int64_t W, int64_t K, int64_t elem_size,
         int num_threads, int64_t tile) {
        const WinogradShape s{N, H, W, 1, K, tile};
        py::gil_scoped_release release;
        rissole::cpu::winograd_output_transform(ptr<const void>(m_), ptr<const float>(bias), ptr<void>(out), s,
                                                elem_size, num_threads);
      },
      py::arg("m"), py::arg("bias"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("K"),
      py::arg("elem_size"), py::arg("num_threads") = 0, py::arg("tile") = 2);

  m.def(
      "transposed_conv_overlap_add",
      [](uintptr_t cols, uintptr_t bias, uintptr_t out, int64_t N, int64_t H, int64_t W, int64_t OH, int64_t OW,
         int64_t K, int64_t kernel, int64_t stride, int64_t padding, int64_t elem_size, int num_threads) {
        const TransposedConvShape s{N, H, W, OH, OW, K, kernel, stride, padding};
        py::gil_scoped_release release;
        rissole::cpu::transposed_conv_overlap_add(ptr<const void>(cols), ptr<const float>(bias), ptr<void>(out), s,
                                                  elem_size, num_threads);
      },
      py::arg("cols"), py::arg("bias"), py::arg("out"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("OH"),
      py::arg("OW"), py::arg("K"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("elem_size"),
      py::arg("num_threads") = 0);

#ifdef RISSOLE_WITH_CUDA
  m.def(
      "cuda_device_count",
      []() -> std::tuple<int, std::optional<std::string>> {
        const char* error = nullptr;
        const int n = rissole::cuda::device_count(&error);
        if (n < 0) return {n, std::string(error ? error : "unknown CUDA error")};
        return {n, std::nullopt};
      },
      "(device count, None) or (-1, reason) when the CUDA runtime cannot be used; queried on each call.");

  m.def(
      "cuda_split_blocks",
      [](uintptr_t z, uintptr_t out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t bf, int64_t elem_size,
         int device, uintptr_t stream) {
        const BlockShape s{B, C, H, W, bf};
        py::gil_scoped_release release;
        rissole::cuda::split_blocks(ptr<const void>(z), ptr<void>(out), s, elem_size, device, stream);
      },
      py::arg("z"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("bf"),
      py::arg("elem_size"), py::arg("device"), py::arg("stream"));

  m.def(
      "cuda_merge_blocks",
      [](uintptr_t blocks, uintptr_t out, int64_t B, int64_t C, int64_t H, int64_t W, int64_t bf, int64_t elem_size,
         int device, uintptr_t stream) {
        const BlockShape s{B, C, H, W, bf};
        py::gil_scoped_release release;
        rissole::cuda::merge_blocks(ptr<const void>(blocks), ptr<void>(out), s, elem_size, device, stream);
      },
      py::arg("blocks"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("bf"),
      py::arg("elem_size"), py::arg("device"), py::arg("stream"));

  m.def(
      "cuda_gather_blocks",
      [](uintptr_t db, uintptr_t ids, uintptr_t out, int64_t P, int64_t N, int64_t C, int64_t bh, int64_t bw,
         int64_t B, int64_t k, int64_t elem_size, int device, uintptr_t stream) {
        const GatherShape s{P, N, C, bh, bw, B, k};
        py::gil_scoped_release release;
        rissole::cuda::gather_blocks(ptr<const void>(db), ptr<const int64_t>(ids), ptr<void>(out), s, elem_size,
                                     device, stream);
      },
      py::arg("db"), py::arg("ids"), py::arg("out"), py::arg("P"), py::arg("N"), py::arg("C"), py::arg("bh"),
      py::arg("bw"), py::arg("B"), py::arg("k"), py::arg("elem_size"), py::arg("device"), py::arg("stream"));

  m.def(
      "cuda_gather_code_blocks",
      [](uintptr_t codes, uintptr_t codebook, uintptr_t ids, uintptr_t out, uintptr_t error_flag, int64_t P,
         int64_t N, int64_t bh, int64_t bw, int64_t K, int64_t C, int64_t B, int64_t k, int64_t elem_size,
         int device, uintptr_t stream) {
        const CodeGatherShape s{P, N, bh, bw, K, C, B, k};
        py::gil_scoped_release release;
        rissole::cuda::gather_code_blocks(ptr<const uint16_t>(codes), ptr<const void>(codebook),
                                          ptr<const int64_t>(ids), ptr<void>(out), ptr<int32_t>(error_flag), s,
                                          elem_size, device, stream);
      },
      py::arg("codes"), py::arg("codebook"), py::arg("ids"), py::arg("out"), py::arg("error_flag"), py::arg("P"),
      py::arg("N"), py::arg("bh"), py::arg("bw"), py::arg("K"), py::arg("C"), py::arg("B"), py::arg("k"),
      py::arg("elem_size"), py::arg("device"), py::arg("stream"));
#endif
}

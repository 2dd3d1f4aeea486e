"""Type stub of the compiled core ``rissole_trt._C`` (see csrc/bindings.cpp).

Addresses are Python ints (``tensor.data_ptr()``, ``ndarray.ctypes.data``) of dense C-contiguous
buffers; ``elem_size`` is 2 or 4 bytes. Use :mod:`rissole_trt.ops` instead of calling these directly.
The ``cuda_*`` functions exist only when ``build_info()["cuda_compiled"]`` is true.
"""

from typing import Any

def build_info() -> dict[str, Any]:
    """version, compiler, cxx_standard, openmp, openmp_max_threads, cuda_compiled, cuda_version,
    cuda_compiler_version, cuda_architectures."""

def check_ids(ids: int, B: int, k: int, N: int) -> None: ...
def split_blocks(
    z: int, out: int, B: int, C: int, H: int, W: int, bf: int, elem_size: int, num_threads: int = 0
) -> None: ...
def merge_blocks(
    blocks: int, out: int, B: int, C: int, H: int, W: int, bf: int, elem_size: int, num_threads: int = 0
) -> None: ...
def gather_blocks(
    db: int, ids: int, out: int, P: int, N: int, C: int, bh: int, bw: int, B: int, k: int,
    elem_size: int, num_threads: int = 0,
) -> None: ...
def gather_code_blocks(
    codes: int, codebook: int, ids: int, out: int, P: int, N: int, bh: int, bw: int, K: int, C: int,
    B: int, k: int, elem_size: int, num_threads: int = 0,
) -> None: ...
def group_norm_fused(
    x: int, gamma: int, beta: int, add1: int, add1_rows: int, add1_stride: int, add2: int, add2_rows: int,
    add2_stride: int, residual: int, out: int, N: int, HW: int, C: int, G: int, eps: float, silu: bool,
    elem_size: int, num_threads: int = 0,
) -> None: ...
def pixel_attention(
    qkv: int, out: int, N: int, T: int, heads: int, head_dim: int, scale: float, elem_size: int,
    num_threads: int = 0,
) -> None: ...
def winograd_input_transform(
    x: int, v: int, N: int, H: int, W: int, C: int, elem_size: int, num_threads: int = 0, tile: int = 2
) -> None: ...
def winograd_output_transform(
    m: int, bias: int, out: int, N: int, H: int, W: int, K: int, elem_size: int, num_threads: int = 0,
    tile: int = 2,
) -> None: ...

def transposed_conv_overlap_add(
    cols: int, bias: int, out: int, N: int, H: int, W: int, OH: int, OW: int, K: int, kernel: int, stride: int,
    padding: int, elem_size: int, num_threads: int = 0,
) -> None: ...

# Present only in CUDA builds.
def cuda_device_count() -> tuple[int, str | None]: ...
def cuda_split_blocks(
    z: int, out: int, B: int, C: int, H: int, W: int, bf: int, elem_size: int, device: int, stream: int
) -> None: ...
def cuda_merge_blocks(
    blocks: int, out: int, B: int, C: int, H: int, W: int, bf: int, elem_size: int, device: int, stream: int
) -> None: ...
def cuda_gather_blocks(
    db: int, ids: int, out: int, P: int, N: int, C: int, bh: int, bw: int, B: int, k: int,
    elem_size: int, device: int, stream: int,
) -> None: ...
def cuda_gather_code_blocks(
    codes: int, codebook: int, ids: int, out: int, error_flag: int, P: int, N: int, bh: int, bw: int,
    K: int, C: int, B: int, k: int, elem_size: int, device: int, stream: int,
) -> None: ...

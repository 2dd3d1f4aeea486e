"""Block operations on latents: split into blocks, merge back, gather neighbour blocks.

Each public function has a plain PyTorch ``*_reference`` beside it: the reference is the
specification, and the compiled kernels (C++/OpenMP on CPU tensors, CUDA on CUDA tensors) must match
it bit for bit. All ops are pure copies, so float32, float16 and bfloat16 behave identically.

Layouts (P = bf * bf blocks in row-major order; block p covers rows ``(p // bf) * bh ...`` and
columns ``(p % bf) * bw ...``):

- latents ``[B, C, H, W]`` <-> blocks ``[B, P, C, H / bf, W / bf]``
- database ``[P, N, C, bh, bw]`` + neighbour ids ``[B, k]`` -> conditioning ``[B, P, k * C, bh, bw]``,
  where channel ``n * C + c`` of block p is channel c of block p of image ``ids[b, n]``.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import numpy as np
import torch

from .errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError

__all__ = [
    "split_blocks",
    "merge_blocks",
    "gather_blocks",
    "gather_code_blocks",
    "split_blocks_reference",
    "merge_blocks_reference",
    "gather_blocks_reference",
    "gather_code_blocks_reference",
    "code_indices",
    "cuda_kernels_available",
]

# Element sizes in bytes of the supported dtypes; the kernels copy words of this size.
_ELEM_SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}
_CODE_DTYPES = (torch.int16, torch.uint16)  # uint16 codes may arrive as an int16 view


@functools.lru_cache(maxsize=None)
def _core() -> ModuleType:
    from rissole_trt import _C

    return _C


def cuda_kernels_available() -> bool:
    """True when the compiled core contains the CUDA kernels (it may still find no GPU at run time)."""
    return bool(_core().build_info()["cuda_compiled"])


# --------------------------------------------------------------------------- validation helpers


def _elem_size(t: torch.Tensor, name: str) -> int:
    if not isinstance(t, torch.Tensor):
        raise InvalidTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    try:
        return _ELEM_SIZE[t.dtype]
    except KeyError:
        raise InvalidTypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}") from None


def _check_bf(bf: int) -> int:
    if isinstance(bf, bool) or not isinstance(bf, (int, np.integer)) or bf < 1:
        raise InvalidArgumentError(f"block factor bf must be a positive integer, got {bf!r}")
    return int(bf)


def _check_ndim(t: torch.Tensor, ndim: int, name: str, layout: str) -> None:
    if t.dim() != ndim:
        raise InvalidArgumentError(f"{name} must have shape {layout}, got {tuple(t.shape)}")


def _ids_tensor(ids: Any) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise InvalidTypeError(f"ids must be an integer tensor, got {ids.dtype}")
    if ids.dim() != 2:
        raise InvalidArgumentError(f"ids must have shape [B, k], got {tuple(ids.shape)}")
    return ids.to(torch.int64)


def _host_checked_ids(ids: torch.Tensor, n: int) -> torch.Tensor:
    """A contiguous int64 host copy of ids, after raising IndexError for any id outside [0, n)."""
    host = ids.to("cpu").contiguous()
    _core().check_ids(host.data_ptr(), host.shape[0], host.shape[1], n)
    return host


def _cuda_launch(t: torch.Tensor, op: str) -> tuple[int, int]:
    """(device index, current stream handle) for a CUDA tensor, or a clear error without kernels."""
    if not cuda_kernels_available():
        raise RuntimeError(
            f"{op}: the tensor is on {t.device} but rissole_trt was built without its CUDA kernels; "
            "reinstall with RISSOLE_CUDA=ON (needs nvcc), or move the tensor to the CPU"
        )
    return t.device.index, torch.cuda.current_stream(t.device).cuda_stream


def _check_device(t: torch.Tensor, op: str) -> None:
    if t.device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"{op}: tensors on {t.device} are not supported (use cpu or cuda)")


# --------------------------------------------------------------------------- split / merge


def split_blocks_reference(z: torch.Tensor, bf: int) -> torch.Tensor:
    """Torch reference of :func:`split_blocks`."""
    b, c, h, w = z.shape
    bh, bw = h // bf, w // bf
    return z.reshape(b, c, bf, bh, bf, bw).permute(0, 2, 4, 1, 3, 5).reshape(b, bf * bf, c, bh, bw)


def merge_blocks_reference(blocks: torch.Tensor, bf: int) -> torch.Tensor:
    """Torch reference of :func:`merge_blocks`."""
    b, _, c, bh, bw = blocks.shape
    return blocks.reshape(b, bf, bf, c, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, bf * bh, bf * bw)


def split_blocks(z: torch.Tensor, bf: int) -> torch.Tensor:
    """Cut latents ``[B, C, H, W]`` into ``[B, P, C, H / bf, W / bf]`` blocks, P = bf², row-major.

    Raises ValueError when H or W is not divisible by ``bf``.
    """
    es = _elem_size(z, "z")
    bf = _check_bf(bf)
    _check_ndim(z, 4, "z", "[B, C, H, W]")
    _check_device(z, "split_blocks")
    b, c, h, w = z.shape
    if h % bf or w % bf:
        raise InvalidArgumentError(f"latent height {h} and width {w} must be divisible by the block factor {bf}")
    z = z.contiguous()
    out = torch.empty((b, bf * bf, c, h // bf, w // bf), dtype=z.dtype, device=z.device)
    if z.is_cuda:
        device, stream = _cuda_launch(z, "split_blocks")
        _core().cuda_split_blocks(z.data_ptr(), out.data_ptr(), b, c, h, w, bf, es, device, stream)
    else:
        _core().split_blocks(z.data_ptr(), out.data_ptr(), b, c, h, w, bf, es, torch.get_num_threads())
    return out


def merge_blocks(blocks: torch.Tensor, bf: int) -> torch.Tensor:
    """Inverse of :func:`split_blocks`: ``[B, P, C, bh, bw]`` -> ``[B, C, bf * bh, bf * bw]``."""
    es = _elem_size(blocks, "blocks")
    bf = _check_bf(bf)
    _check_ndim(blocks, 5, "blocks", "[B, P, C, bh, bw]")
    _check_device(blocks, "merge_blocks")
    b, p, c, bh, bw = blocks.shape
    if p != bf * bf:
        raise InvalidArgumentError(f"blocks has {p} blocks per image, expected bf * bf = {bf * bf} for bf = {bf}")
    blocks = blocks.contiguous()
    h, w = bh * bf, bw * bf
    out = torch.empty((b, c, h, w), dtype=blocks.dtype, device=blocks.device)
    if blocks.is_cuda:
        device, stream = _cuda_launch(blocks, "merge_blocks")
        _core().cuda_merge_blocks(blocks.data_ptr(), out.data_ptr(), b, c, h, w, bf, es, device, stream)
    else:
        _core().merge_blocks(blocks.data_ptr(), out.data_ptr(), b, c, h, w, bf, es, torch.get_num_threads())
    return out


# --------------------------------------------------------------------------- neighbour gather


def gather_blocks_reference(db: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Torch reference of :func:`gather_blocks`."""
    p, _, c, bh, bw = db.shape
    b, k = ids.shape
    return db[:, ids].permute(1, 0, 2, 3, 4, 5).reshape(b, p, k * c, bh, bw)


def gather_blocks(db: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gather the blocks of neighbour images: ``db [P, N, C, bh, bw]``, ``ids [B, k]`` -> ``[B, P, k * C, bh, bw]``.

    Channel ``n * C + c`` of block p of output image b is channel c of block p of database image
    ``ids[b, n]``. Raises IndexError naming the first id outside ``[0, N)``, before reading anything.
    """
    es = _elem_size(db, "db")
    _check_ndim(db, 5, "db", "[P, N, C, bh, bw]")
    _check_device(db, "gather_blocks")
    ids = _ids_tensor(ids)
    p, n, c, bh, bw = db.shape
    b, k = ids.shape
    db = db.contiguous()
    out = torch.empty((b, p, k * c, bh, bw), dtype=db.dtype, device=db.device)
    if db.is_cuda:
        device, stream = _cuda_launch(db, "gather_blocks")
        ids_dev = _host_checked_ids(ids, n).to(db.device)
        _core().cuda_gather_blocks(
            db.data_ptr(), ids_dev.data_ptr(), out.data_ptr(), p, n, c, bh, bw, b, k, es, device, stream
        )
    else:
        ids = ids.to("cpu").contiguous()  # the kernel validates the ids itself
        _core().gather_blocks(
            db.data_ptr(), ids.data_ptr(), out.data_ptr(), p, n, c, bh, bw, b, k, es, torch.get_num_threads()
        )
    return out


def gather_code_blocks_reference(codes: torch.Tensor, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Torch reference of :func:`gather_code_blocks` (codes as a torch uint16 or int16-view tensor)."""
    p, _, bh, bw = codes.shape
    b, k = ids.shape
    c = codebook.shape[1]
    vectors = codebook[code_indices(codes, slice(None), ids.long())]  # [P, B, k, bh, bw, C]
    return vectors.permute(1, 0, 2, 5, 3, 4).reshape(b, p, k * c, bh, bw)


def code_indices(codes: torch.Tensor, *index: Any) -> torch.Tensor:
    """``codes[index]`` as int64 codebook indices, for torch uint16 codes or an int16 view of them.

    Indexed through the int16 view and widened with ``& 0xFFFF``: torch's CUDA index kernels do not
    cover unsigned types ("index_cuda" not implemented for 'UInt16') while the CPU's do, so indexing
    the uint16 tensor itself would pass on a CPU and fail on a GPU; this path is the same on both.
    """
    view = codes.view(torch.int16) if codes.dtype == torch.uint16 else codes
    return view[index].to(torch.int64) & 0xFFFF


def _codes_view(codes: Any) -> tuple[torch.Tensor | np.ndarray, tuple[int, ...]]:
    """Check the codes array; returns it (torch tensor or numpy array, untouched) and its shape."""
    if isinstance(codes, np.ndarray):
        if codes.dtype != np.uint16:
            raise InvalidTypeError(f"codes must be uint16, got numpy {codes.dtype}")
    elif isinstance(codes, torch.Tensor):
        if codes.dtype not in _CODE_DTYPES:
            raise InvalidTypeError(f"codes must be torch.uint16 or an int16 view of uint16 codes, got {codes.dtype}")
        _check_device(codes, "gather_code_blocks")
    else:
        raise InvalidTypeError(f"codes must be a torch.Tensor or numpy array, got {type(codes).__name__}")
    if codes.ndim != 4:
        raise InvalidArgumentError(f"codes must have shape [P, N, bh, bw], got {tuple(codes.shape)}")
    return codes, tuple(codes.shape)


def gather_code_blocks(codes: torch.Tensor | np.ndarray, codebook: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Gather neighbour blocks from a quantised database: ``codebook[codes]`` laid out like :func:`gather_blocks`.

    ``codes [P, N, bh, bw]`` holds uint16 codebook indices (a torch uint16 tensor, an int16 view of one,
    or a numpy uint16 array such as a read-only memmap, of which only the rows of the requested images
    are read); ``codebook [K, C]`` is float32/float16/bfloat16; ``ids [B, k]``. Returns
    ``[B, P, k * C, bh, bw]`` in the codebook's dtype, on the codebook's device.

    Raises IndexError for an id outside ``[0, N)`` or a code ``>= K``.
    """
    es = _elem_size(codebook, "codebook")
    _check_ndim(codebook, 2, "codebook", "[K, C]")
    _check_device(codebook, "gather_code_blocks")
    codes, (p, n, bh, bw) = _codes_view(codes)
    ids = _ids_tensor(ids)
    kk, c = codebook.shape
    b, k = ids.shape
    codebook = codebook.contiguous()
    out = torch.empty((b, p, k * c, bh, bw), dtype=codebook.dtype, device=codebook.device)

    if isinstance(codes, np.ndarray) and (codebook.is_cuda or not codes.flags.c_contiguous):
        # Copy only the requested images' rows (cheap on a memmap), then gather from that subset.
        host_ids = _host_checked_ids(ids, n)
        unique, inverse = torch.unique(host_ids, return_inverse=True)
        codes = torch.from_numpy(np.ascontiguousarray(codes[:, unique.numpy()]).view(np.int16))
        ids, n = inverse.reshape(b, k), unique.numel()
    if isinstance(codes, np.ndarray):
        codes_ptr = codes.ctypes.data  # C-contiguous host array (possibly a memmap), alive until we return
    else:
        codes = codes.to(codebook.device).contiguous()
        codes_ptr = codes.data_ptr()

    if codebook.is_cuda:
        device, stream = _cuda_launch(codebook, "gather_code_blocks")
        ids_dev = _host_checked_ids(ids, n).to(codebook.device)
        flag = torch.zeros(1, dtype=torch.int32, device=codebook.device)
        _core().cuda_gather_code_blocks(
            codes_ptr, codebook.data_ptr(), ids_dev.data_ptr(), out.data_ptr(), flag.data_ptr(),
            p, n, bh, bw, kk, c, b, k, es, device, stream,
        )
        bad = int(flag.item())  # synchronises: a bad code must raise here, not later
        if bad:
            raise OutOfRangeError(f"code {bad - 1} is out of range for a codebook of {kk} entries")
    else:
        ids = ids.to("cpu").contiguous()
        _core().gather_code_blocks(
            codes_ptr, codebook.data_ptr(), ids.data_ptr(), out.data_ptr(),
            p, n, bh, bw, kk, c, b, k, es, torch.get_num_threads(),
        )
    return out

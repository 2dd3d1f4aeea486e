"""The C++ core's CPU layer kernels, each beside the plain PyTorch it must match.

* :func:`fused_group_norm`: GroupNorm, SiLU and the additions that follow them in a UNet residual
  block (the time and position bias rows, or the residual branch) in one pass over the map after the
  statistics, where torch makes three to four passes (norm, SiLU, each add) and, in bf16, rounds
  after each; without the SiLU for the UNet's one-group level norms. Reference:
  :func:`fused_group_norm_reference`.
* :func:`pixel_attention`: the multi-head self-attention of :class:`~rissole_trt.models.layers.Attention`
  between its two projections (``softmax(scale Q K^T) V`` per map and head) in one float32 pass per
  map with the heads as the vector lanes, from the channels-last qkv map; torch runs it as two
  batched matmuls around a softmax, which for the models' many small heads (64 heads of 4 channels
  over 4 or 16 pixels) is dominated by per-matrix overhead, and in bf16 rounds the scores and
  weights. Reference: :func:`pixel_attention_reference`.
* :func:`winograd_conv3x3`: a 3x3, stride-1, padding-1 convolution by Winograd F(2x2, 3x3) or
  F(4x4, 3x3): the input tiles are transformed in C++ (``V = B^T d B``), multiplied by the
  transformed weights (:func:`winograd_weights`, ``U = G g G^T``) as 16 or 36 GEMMs in one
  ``torch.bmm`` (MKL / oneDNN), and transformed back in C++ with the bias (``A^T M A``). 2.25x
  (F2) or 4x (F4) fewer multiplies than direct convolution; the transforms cost memory traffic and
  F4 rounds more, so whether either wins is measured per layer and batch by ``build-engine``.
  Reference: ``F.conv2d(x, w, b, padding=1)``.

* :func:`gemm_conv_transpose2d`: a transposed convolution as one GEMM from the input pixels to
  per-tap columns (:func:`conv_transpose_columns` of the weights) and the C++ core's overlap-add of
  those columns into the output pixels (+ bias): no multiply by an inserted zero, unlike the
  sub-pixel or direct forms on small maps. Reference: ``F.conv_transpose2d``.

All four take and return channels-last CPU tensors in float32 or bfloat16 (arithmetic in float32,
bf16 results rounded once). Each C++ loop is compiled for AVX-512, AVX2 and SSE2 and the CPU's best
is picked at import (``target_clones``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError
from ..ops import _core

__all__ = ["fused_group_norm", "fused_group_norm_reference", "pixel_attention", "pixel_attention_reference",
           "winograd_weights", "winograd_conv3x3", "winograd_applies", "conv_transpose_columns",
           "gemm_conv_transpose2d", "gemm_conv_transpose_applies"]

_CL = torch.channels_last
_ELEM_SIZE = {torch.float32: 4, torch.bfloat16: 2}

# Weight transforms G ((m + 2) x 3) of F(m x m, 3x3), by output tile m (the C++ core has B and A).
_G = {2: torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64),
      4: torch.tensor([[1 / 4, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                       [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0.0, 0.0, 1.0]], dtype=torch.float64)}
_TILE_OF = {16: 2, 36: 4}  # tile positions (alpha^2) -> m


def _channels_last(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype not in _ELEM_SIZE or x.ndim != 4:
        raise InvalidArgumentError(f"{name} must be a 4-d float32 or bfloat16 CPU tensor, got {x.dtype} "
                                   f"{tuple(x.shape)} on {x.device}")
    return x.contiguous(memory_format=_CL)


def _row_adds(add: torch.Tensor | tuple[torch.Tensor, ...] | None, n: int, c: int,
              dtype: torch.dtype) -> list[tuple[int, int, int, torch.Tensor | None]]:
    """Up to two added bias tables as the C++ core's (address, rows, row stride) in ``dtype``; the
    tensors are kept alive in the last field. Row slices of a wider table are passed without a copy."""
    adds = () if add is None else (add,) if isinstance(add, torch.Tensor) else tuple(add)
    if len(adds) > 2:
        raise InvalidArgumentError(f"at most two bias tables can be added, got {len(adds)}")
    out = []
    for table in adds:
        if table.ndim != 2 or table.shape[1] != c or table.shape[0] not in (1, n):
            raise InvalidArgumentError(f"add must be [1 or {n}, {c}], got {tuple(table.shape)}")
        table = table.to(dtype)
        if table.stride(1) != 1:
            table = table.contiguous()
        out.append((table.data_ptr(), table.shape[0], table.stride(0), table))
    return out + [(0, 0, 0, None)] * (2 - len(out))


def fused_group_norm_reference(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                               add: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
                               residual: torch.Tensor | None = None, silu: bool = True) -> torch.Tensor:
    """``silu(group_norm(x)) + sum(add)[:, :, None, None] + residual`` in float32 torch ops
    (without the SiLU for ``silu=False``)."""
    out = F.group_norm(x.float(), groups, weight.float(), bias.float(), eps)
    if silu:
        out = F.silu(out)
    for table in () if add is None else (add,) if isinstance(add, torch.Tensor) else add:
        out = out + table.float()[:, :, None, None]
    if residual is not None:
        out = out + residual.float()
    return out


def fused_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                     add: torch.Tensor | tuple[torch.Tensor, ...] | None = None, residual: torch.Tensor | None = None,
                     silu: bool = True) -> torch.Tensor:
    """:func:`fused_group_norm_reference` in one C++ pass; ``add`` one or two [1 or N, C] tables
    (rounded to x's dtype; rows may be slices of wider tables), ``residual`` like x.

    The result has x's dtype, channels-last.
    """
    x = _channels_last(x, "x")
    n, c, h, w = x.shape
    if c % groups:
        raise InvalidArgumentError(f"{c} channels are not divisible into {groups} groups")
    if weight.shape != (c,) or bias.shape != (c,):
        raise InvalidArgumentError(f"weight and bias must be [{c}], got {tuple(weight.shape)}, {tuple(bias.shape)}")
    (a1, r1, s1, _t1), (a2, r2, s2, _t2) = _row_adds(add, n, c, x.dtype)
    if residual is not None:
        if residual.shape != x.shape:
            raise InvalidArgumentError(f"residual must be {tuple(x.shape)}, got {tuple(residual.shape)}")
        residual = residual.to(x.dtype).contiguous(memory_format=_CL)
    weight, bias = weight.float().contiguous(), bias.float().contiguous()
    out = torch.empty_like(x, memory_format=_CL)
    _core().group_norm_fused(x.data_ptr(), weight.data_ptr(), bias.data_ptr(), a1, r1, s1, a2, r2, s2,
                             0 if residual is None else residual.data_ptr(), out.data_ptr(), n, h * w, c, groups,
                             float(eps), silu, _ELEM_SIZE[x.dtype], torch.get_num_threads())
    return out


def pixel_attention_reference(qkv: torch.Tensor, heads: int, head_dim: int, scale: float) -> torch.Tensor:
    """:class:`~rissole_trt.models.layers.Attention`'s arithmetic between its projections, float32:
    qkv [N, 3 * heads * head_dim, H, W] -> [N, heads * head_dim, H, W]."""
    n, _, h, w = qkv.shape
    q, k, v = qkv.float().reshape(n, 3, heads, head_dim, h * w).unbind(1)  # [N, heads, d, T]
    attn = torch.matmul((q * scale).transpose(-2, -1), k).softmax(dim=-1)  # [N, heads, T, T]
    return torch.matmul(attn, v.transpose(-2, -1)).transpose(-2, -1).reshape(n, heads * head_dim, h, w)


def pixel_attention(qkv: torch.Tensor, heads: int, head_dim: int, scale: float) -> torch.Tensor:
    """:func:`pixel_attention_reference` in one C++ pass; the result has qkv's dtype, channels-last."""
    qkv = _channels_last(qkv, "qkv")
    n, c, h, w = qkv.shape
    if c != 3 * heads * head_dim:
        raise InvalidArgumentError(f"qkv must have 3 x {heads} heads x {head_dim} = {3 * heads * head_dim} "
                                   f"channels, got {c}")
    out = torch.empty((n, heads * head_dim, h, w), dtype=qkv.dtype, memory_format=_CL)
    _core().pixel_attention(qkv.data_ptr(), out.data_ptr(), n, h * w, heads, head_dim, float(scale),
                            _ELEM_SIZE[qkv.dtype], torch.get_num_threads())
    return out


def winograd_applies(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` is a convolution :func:`winograd_conv3x3` computes (3x3, stride 1, padding 1)."""
    return (isinstance(conv, torch.nn.Conv2d) and tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1)
            and tuple(conv.padding) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def winograd_weights(weight: torch.Tensor, dtype: torch.dtype = torch.float32, tile: int = 2) -> torch.Tensor:
    """``U = G g G^T`` of 3x3 weights [K, C, 3, 3] for F(tile x tile, 3x3), tile 2 or 4, as
    [(tile + 2)^2, C, K] (tile position, in, out), in ``dtype``."""
    if weight.ndim != 4 or tuple(weight.shape[2:]) != (3, 3):
        raise InvalidArgumentError(f"weights must be [K, C, 3, 3], got {tuple(weight.shape)}")
    if tile not in _G:
        raise InvalidArgumentError(f"the Winograd output tile must be 2 or 4, got {tile}")
    g = _G[tile]
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)  # [alpha, alpha, C, K]
    return u.reshape(len(g) ** 2, weight.shape[1], weight.shape[0]).to(dtype).contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.conv2d(x, w, bias, padding=1)`` for ``u = winograd_weights(w, x.dtype, tile)`` (the tile is
    read off u's shape); channels-last result."""
    x = _channels_last(x, "x")
    n, c, h, w = x.shape
    if u.ndim != 3 or u.shape[0] not in _TILE_OF or u.shape[1] != c or u.dtype != x.dtype:
        raise InvalidArgumentError(f"u must be winograd_weights(w, {x.dtype}, tile) for {c} input channels, got "
                                   f"{u.dtype} {tuple(u.shape)}")
    tile, k = _TILE_OF[u.shape[0]], u.shape[2]
    if bias is not None:
        bias = bias.float().contiguous()
        if bias.shape != (k,):
            raise InvalidArgumentError(f"bias must be [{k}], got {tuple(bias.shape)}")
    tiles = n * -(-h // tile) * -(-w // tile)
    threads, core, es = torch.get_num_threads(), _core(), _ELEM_SIZE[x.dtype]
    v = torch.empty((u.shape[0], tiles, c), dtype=x.dtype)
    core.winograd_input_transform(x.data_ptr(), v.data_ptr(), n, h, w, c, es, threads, tile)
    m = torch.bmm(v, u)  # [alpha^2, tiles, K]
    out = torch.empty((n, k, h, w), dtype=x.dtype, memory_format=_CL)
    core.winograd_output_transform(m.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), n, h, w, k,
                                   es, threads, tile)
    return out


def gemm_conv_transpose_applies(conv: torch.nn.Module) -> bool:
    """Whether ``conv`` is a transposed convolution :func:`gemm_conv_transpose2d` computes (square
    kernel and stride, one group, no dilation or output padding)."""
    return (isinstance(conv, torch.nn.ConvTranspose2d) and conv.groups == 1 and tuple(conv.dilation) == (1, 1)
            and tuple(conv.output_padding) == (0, 0) and conv.kernel_size[0] == conv.kernel_size[1]
            and conv.stride[0] == conv.stride[1] and conv.padding[0] == conv.padding[1])


def conv_transpose_columns(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ConvTranspose2d weights [C, K, k, k] as the GEMM's [C, k * k * K] (tap-major columns), in ``dtype``."""
    if weight.ndim != 4 or weight.shape[2] != weight.shape[3]:
        raise InvalidArgumentError(f"weights must be [C, K, k, k], got {tuple(weight.shape)}")
    c, k, kernel, _ = weight.shape
    return weight.detach().permute(0, 2, 3, 1).reshape(c, kernel * kernel * k).to(dtype).contiguous()


def gemm_conv_transpose2d(x: torch.Tensor, columns: torch.Tensor, bias: torch.Tensor | None, kernel: int,
                          stride: int, padding: int) -> torch.Tensor:
    """``F.conv_transpose2d(x, w, bias, stride, padding)`` for ``columns = conv_transpose_columns(w, x.dtype)``;
    channels-last result."""
    x = _channels_last(x, "x")
    n, c, h, w = x.shape
    if columns.ndim != 2 or columns.shape[0] != c or columns.shape[1] % (kernel * kernel) or columns.dtype != x.dtype:
        raise InvalidArgumentError(f"columns must be conv_transpose_columns(w, {x.dtype}) for {c} input channels "
                                   f"and a {kernel}x{kernel} kernel, got {columns.dtype} {tuple(columns.shape)}")
    k = columns.shape[1] // (kernel * kernel)
    oh, ow = (h - 1) * stride - 2 * padding + kernel, (w - 1) * stride - 2 * padding + kernel
    if oh < 1 or ow < 1:
        raise InvalidArgumentError(f"a {kernel}x{kernel} kernel with padding {padding} leaves no output of a {h}x{w} map")
    if bias is not None:
        bias = bias.float().contiguous()
        if bias.shape != (k,):
            raise InvalidArgumentError(f"bias must be [{k}], got {tuple(bias.shape)}")
    cols = x.permute(0, 2, 3, 1).reshape(-1, c) @ columns  # [N*H*W, k*k*K], a view for channels-last x
    out = torch.empty((n, k, oh, ow), dtype=x.dtype, memory_format=_CL)
    _core().transposed_conv_overlap_add(cols.data_ptr(), 0 if bias is None else bias.data_ptr(), out.data_ptr(), n,
                                        h, w, oh, ow, k, kernel, stride, padding, _ELEM_SIZE[x.dtype],
                                        torch.get_num_threads())
    return out

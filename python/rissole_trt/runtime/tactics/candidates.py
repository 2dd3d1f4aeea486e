"""The candidate implementations of the layers :mod:`rissole_trt.runtime.tactics` tunes.

Candidates (each a module over channels-last activations in the backend's dtype):

* convolutions: ``onednn_packed`` (weights reordered once to oneDNN's blocked format, the torch
  backend's choice), ``conv2d`` (``F.conv2d`` on channels-last weights), ``im2col_gemm``
  (``F.unfold`` + one GEMM, which reaches MKL's AVX-512/AMX GEMM kernels), and for 1x1 convolutions
  ``gemm_1x1`` (a channels-last map is already the [pixels, channels] matrix: one GEMM, no copy),
  and for 3x3 stride-1 convolutions ``winograd_f2`` / ``winograd_f4`` (Winograd F(2x2, 3x3) and, in
  fp32, F(4x4, 3x3): tile transforms in the C++ core, the 16 or 36 products as one batched GEMM;
  :mod:`.cpu_kernels`);
* every convolution on a tiny map (2x2 to 2x2, 4x4 to 2x2, 2x2 to 4x4): ``dense_map``, the layer as
  the dense matrix from a row's input pixels to its output pixels, one GEMM;
* the 4x4 stride-2 upsampling: ``subpixel_packed`` / ``subpixel_conv2d`` (four 2x2 convolutions,
  one per output parity), ``conv_transpose`` (oneDNN's transposed convolution) and
  ``gemm_overlap_add`` (one GEMM to per-tap columns, then the C++ core's overlap-add);
* self-attention: ``matmul`` (the reference's two matmuls and softmax), ``sdpa``
  (``F.scaled_dot_product_attention``, torch's fused flash-attention CPU kernel) and ``fused_cpu``
  (the C++ core's one-pass attention over small maps, :mod:`.cpu_kernels`);
* residual blocks: ``torch_ops`` (the block's own GroupNorm, SiLU and adds) and ``fused_norm``
  (each GroupNorm + SiLU + the bias rows or the residual add as one C++ pass), around the block's
  convolutions as tuned;
* the other GroupNorms (the one-group input and level norms): ``torch_ops`` and ``fused_norm``
  (the same C++ kernel without the SiLU).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import InvalidArgumentError
from ...models.layers import Attention, UNetResBlock
from ..cpu_kernels import (
    conv_transpose_columns,
    fused_group_norm,
    gemm_conv_transpose2d,
    gemm_conv_transpose_applies,
    pixel_attention,
    winograd_applies,
    winograd_conv3x3,
    winograd_weights,
)
from ..torch_backend import PreparedConv, SubPixelConvTranspose, _pair

#: The largest (input pixels x output pixels) of a map the dense-map convolution is offered for: 2x2
#: to 2x2, 4x4 to 2x2 and 2x2 to 4x4 (matrices of at most 64 C x K entries).
DENSE_MAP_MAX_PIXEL_PAIRS = 64


class Im2colConv(nn.Module):
    """A stride-s convolution as im2col (``F.unfold``) and one GEMM per call."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = _pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding)
        self.weight = conv.weight.detach().to(dtype).reshape(conv.out_channels, -1).contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        oh = (h + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        ow = (w + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        cols = F.unfold(x, self.kernel, padding=self.padding, stride=self.stride)  # [N, C*kh*kw, L]
        out = torch.matmul(cols.transpose(1, 2), self.weight.t())  # [N, L, O]: channels-last order
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)


class Gemm1x1(nn.Module):
    """A 1x1 stride-1 convolution as one GEMM over the channels-last pixel matrix."""

    @staticmethod
    def applies(conv: nn.Module) -> bool:
        return (isinstance(conv, nn.Conv2d) and _pair(conv.kernel_size) == [1, 1] and _pair(conv.stride) == [1, 1]
                and _pair(conv.padding) == [0, 0])

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.weight = conv.weight.detach().to(dtype).reshape(conv.out_channels, -1).t().contiguous()
        self.bias = None if conv.bias is None else conv.bias.detach().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        pixels = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view for channels-last x
        out = pixels @ self.weight if self.bias is None else torch.addmm(self.bias, pixels, self.weight)
        return out.reshape(n, h, w, -1).permute(0, 3, 1, 2)


class DenseMapConv(nn.Module):
    """A convolution over a tiny map as one GEMM: on an h x w map the layer is a linear map from the
    [h*w*C] pixels of a row to its [h'*w'*K] outputs, so its dense matrix (built once per input size by
    running the layer on the unit basis; every entry is one weight or zero) replaces the convolution.
    On 2x2 maps a 3x3 kernel sees the whole map, so the GEMM does fewer multiplies than the padded
    direct convolution, as one call that reaches the AMX / AVX-512 GEMM kernels. Only for maps whose
    input times output pixels are at most :data:`DENSE_MAP_MAX_PIXEL_PAIRS` (the matrix grows as their
    product)."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_channels, self.dtype = conv.in_channels, dtype
        # Plain tensors, not parameters: the float32 layer, run only to build the matrices.
        self.weight = conv.weight.detach().float()
        self.bias = None if conv.bias is None else conv.bias.detach().float()
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.settings = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, groups=conv.groups)
        if self.transposed:
            self.settings["output_padding"] = conv.output_padding
        self.matrices: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]] = {}

    def layer(self, t: torch.Tensor) -> torch.Tensor:
        """The float32 layer without its bias."""
        return (F.conv_transpose2d if self.transposed else F.conv2d)(t, self.weight, None, **self.settings)

    def applies_to(self, x: torch.Tensor, *_) -> bool:
        h, w = x.shape[2:]
        oh, ow = self.layer(torch.zeros(1, self.in_channels, h, w)).shape[2:]
        return h * w * oh * ow <= DENSE_MAP_MAX_PIXEL_PAIRS

    def _matrix(self, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        if (h, w) not in self.matrices:
            c = self.in_channels
            # basis[i] is pixel p = i // C, channel i % C set to one: the channels-last flattening order
            basis = torch.eye(h * w * c).reshape(h * w * c, h, w, c).permute(0, 3, 1, 2)
            with torch.no_grad():
                columns = self.layer(basis)  # [h*w*C, K, h', w']
            size = tuple(columns.shape[2:])
            matrix = columns.permute(0, 2, 3, 1).reshape(h * w * c, -1).to(self.dtype).contiguous()
            rows = None if self.bias is None else self.bias.repeat(size[0] * size[1]).to(self.dtype)
            self.matrices[(h, w)] = (matrix, rows, size)
        return self.matrices[(h, w)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        if (h, w) not in self.matrices and not self.applies_to(x):
            raise InvalidArgumentError(f"the dense-map convolution is for maps of at most "
                                       f"{DENSE_MAP_MAX_PIXEL_PAIRS} input x output pixels, got {h}x{w}")
        matrix, bias, (oh, ow) = self._matrix(h, w)
        flat = x.permute(0, 2, 3, 1).reshape(n, -1)  # a view for channels-last x
        out = flat @ matrix if bias is None else torch.addmm(bias, flat, matrix)
        return out.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)


class SdpaAttention(nn.Module):
    """:class:`Attention` through ``F.scaled_dot_product_attention`` (same projections)."""

    def __init__(self, attention: Attention, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.n_heads, self.head_dim = attention.n_heads, attention.head_dim
        self.qkv, self.out = qkv, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        qkv = self.qkv(x).reshape(n, 3, self.n_heads, self.head_dim, h * w).transpose(-2, -1)
        res = F.scaled_dot_product_attention(qkv[:, 0], qkv[:, 1], qkv[:, 2])  # [N, heads, hw, d]
        return self.out(res.transpose(-2, -1).reshape(n, self.n_heads * self.head_dim, h, w))


class MatmulAttention(nn.Module):
    """:class:`Attention`'s own arithmetic with prepared projections."""

    def __init__(self, attention: Attention, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.reference = copy.copy(attention)  # shares nothing mutable: only the two submodules differ
        self.reference._modules = dict(attention._modules, qkv=qkv, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x)


class FusedAttention(nn.Module):
    """:class:`Attention` with the part between its projections in one C++ pass (:func:`pixel_attention`)."""

    def __init__(self, attention: Attention, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.scale = attention.n_heads, attention.head_dim, attention.scale
        self.qkv, self.out = qkv, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(pixel_attention(self.qkv(x), self.n_heads, self.head_dim, self.scale))


class WinogradConv(nn.Module):
    """A 3x3 stride-1 padding-1 convolution by Winograd F(tile x tile, 3x3), weights transformed once."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, tile: int = 2) -> None:
        super().__init__()
        self.register_buffer("u", winograd_weights(conv.weight, dtype, tile))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv3x3(x, self.u, self.bias)


class GemmConvTranspose(nn.Module):
    """A transposed convolution as one GEMM to per-tap columns and the C++ core's overlap-add."""

    def __init__(self, conv: nn.ConvTranspose2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.register_buffer("columns", conv_transpose_columns(conv.weight, dtype))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemm_conv_transpose2d(x, self.columns, self.bias, self.kernel, self.stride, self.padding)


class FusedNormResBlock(nn.Module):
    """:class:`UNetResBlock` (eval) with each GroupNorm + SiLU + add as one C++ pass; same convolutions."""

    def __init__(self, block: UNetResBlock) -> None:
        super().__init__()
        self.conv1, self.conv2, self.skip = block.conv1, block.conv2, block.skip
        self.groups, self.eps = block.norm1.num_groups, block.norm1.eps
        for i, norm in ((1, block.norm1), (2, block.norm2)):
            self.register_buffer(f"gamma{i}", norm.weight.detach().float())
            self.register_buffer(f"beta{i}", norm.bias.detach().float())

    def forward(self, x: torch.Tensor, time_bias: torch.Tensor, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        add = time_bias if pos_bias is None else (time_bias, pos_bias)  # column slices: read in place
        h = fused_group_norm(self.conv1(x), self.groups, self.gamma1, self.beta1, self.eps, add=add)
        return fused_group_norm(self.conv2(h), self.groups, self.gamma2, self.beta2, self.eps, residual=self.skip(x))


class FusedGroupNorm(nn.Module):
    """A GroupNorm (the UNet's one-group level norms) as one C++ pass after its statistics."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        c = norm.num_channels
        self.register_buffer("gamma", norm.weight.detach().float() if norm.affine else torch.ones(c))
        self.register_buffer("beta", norm.bias.detach().float() if norm.affine else torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_group_norm(x, self.groups, self.gamma, self.beta, self.eps, silu=False)


def conv_candidates(conv: nn.Module, dtype: torch.dtype, packed_ok: bool) -> dict[str, nn.Module]:
    if SubPixelConvTranspose.applies(conv):
        out = {"subpixel_conv2d": SubPixelConvTranspose(conv, dtype, packed=False),
               "conv_transpose": PreparedConv(conv, dtype, packed=packed_ok), "dense_map": DenseMapConv(conv, dtype)}
        if packed_ok:  # (packed_ok: CPU, where the C++ overlap-add runs)
            out["subpixel_packed"] = SubPixelConvTranspose(conv, dtype, packed=True)
            if gemm_conv_transpose_applies(conv):
                out["gemm_overlap_add"] = GemmConvTranspose(conv, dtype)
        return out
    out = {"conv2d": PreparedConv(conv, dtype, packed=False)}
    if packed_ok:
        out["onednn_packed"] = PreparedConv(conv, dtype, packed=True)
    out["dense_map"] = DenseMapConv(conv, dtype)
    if isinstance(conv, nn.Conv2d):
        out["im2col_gemm"] = Im2colConv(conv, dtype)
        if Gemm1x1.applies(conv):
            out["gemm_1x1"] = Gemm1x1(conv, dtype)
        if packed_ok and winograd_applies(conv):  # the C++ transforms are CPU code (packed_ok: CPU)
            out["winograd_f2"] = WinogradConv(conv, dtype, tile=2)
            if dtype == torch.float32:  # F4's transforms grow values ~100x: bf16 tiles lose ~1e-1, never in tolerance
                out["winograd_f4"] = WinogradConv(conv, dtype, tile=4)
    return out

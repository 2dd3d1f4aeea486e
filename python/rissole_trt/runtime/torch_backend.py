"""The fast PyTorch denoiser: the block UNet's per-step forward with its weights prepared once.

What it changes against ``BlockUNet.forward_hoisted`` (same layers, same arithmetic, same weights):

* **prepacked convolutions**: on the CPU every ``F.conv2d`` call re-lays-out its weights into
  oneDNN's blocked format (about 14% of a CelebA-size call). Here each conv's weights are reordered
  once (``torch._C._nn.mkldnn_reorder_conv2d_weight``) and run with ``torch.ops.mkldnn
  ._convolution_pointwise``, the ops torch.compile's CPU freezing pass emits. The packed result is
  bitwise the same as ``F.conv2d`` (it runs the same oneDNN primitive);
* **sub-pixel upsampling**: the 4x4 stride-2 transposed convolutions run as four 2x2
  convolutions, one per output parity (oneDNN's transposed convolution reached half the speed of its
  ordinary one on these small maps; 18% of a CelebA-size call);
* **channels-last activations** throughout (oneDNN's native layout: no reorders between layers);
* **fused adds**: the residual shortcut's 1x1 conv and the input conv add their other operand as a
  oneDNN post-op; GroupNorm is followed by an in-place SiLU and in-place bias adds (fewer
  full-size temporaries);
* **bf16** (``precision="bf16"``): weights and activations in bfloat16 (GroupNorm statistics and
  softmax accumulate in float32 inside torch's kernels), ε returned in float32. This is fast only
  where the hardware has bf16 arithmetic (AVX-512-BF16 / AMX on x86, any recent NVIDIA GPU); on other
  CPUs torch emulates it, many times slower than fp32: :func:`bf16_native` says which.

Only the per-step part changes: the timestep-invariant parts (neighbour conv, time and position
embeddings) are still computed once, in float32, by :class:`rissole_trt.models.BlockDenoiser`.

Use::

    backend = TorchBackend(model, precision="fp32")     # once per model: packs the weights
    eps_fn = backend.denoiser(cond)                      # per batch, like model.denoiser(cond)
    blocks = rissole_trt.diffusion.sample(eps_fn, shape, model.schedule, "ddpm")
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import Attention, UNetResBlock
from ..models.rissole import BlockDenoiser, RissoleModel
from ..models.unet import BlockUNet

__all__ = ["PRECISIONS", "precision_dtype", "bf16_native", "precision_native", "packs_for_onednn", "PreparedConv", "SubPixelConvTranspose", "FastUNet", "FastBlockDenoiser", "TorchBackend"]

#: Precisions the torch backend runs in.
PRECISIONS = ("fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_CL = torch.channels_last


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name; ValueError for an unknown one."""
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return _DTYPES[precision]


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes in bf16 natively (else torch emulates bf16, slowly)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def precision_native(precision: str, device: str | torch.device = "cpu") -> bool:
    """False when ``device`` only emulates ``precision`` (bf16 without bf16 arithmetic)."""
    return precision_dtype(precision) == torch.float32 or bf16_native(device)


def packs_for_onednn(device: str | torch.device, dtype: torch.dtype) -> bool:
    """Whether convolutions run with prepacked oneDNN weights: on the CPU, when oneDNN supports the dtype."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and (dtype == torch.float32 or bf16_native("cpu")))


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return list(v) if isinstance(v, tuple) else [v, v]


class PreparedConv:
    """One Conv2d / ConvTranspose2d with its weights prepared once; ``conv(x, add)`` = conv(x) + bias (+ add).

    ``packed``: oneDNN weights reordered on the first call (the input shape is only a layout hint:
    the packed weights serve every batch size). Otherwise plain ``F.conv2d`` on channels-last
    weights in the backend's dtype (CUDA, or a CPU without oneDNN support for the dtype).
    """

    def __init__(self, module: nn.Conv2d | nn.ConvTranspose2d, dtype: torch.dtype, packed: bool) -> None:
        if module.groups != 1 or _pair(module.dilation) != [1, 1]:
            raise ValueError("the fast torch backend supports ungrouped, undilated convolutions only")
        self.transposed = isinstance(module, nn.ConvTranspose2d)
        self.stride, self.padding = _pair(module.stride), _pair(module.padding)
        self.output_padding = _pair(module.output_padding) if self.transposed else None
        self.weight = module.weight.detach().to(dtype)
        self.bias = None if module.bias is None else module.bias.detach().to(dtype)
        self.packed = packed
        self._packed_weight: torch.Tensor | None = None
        if not packed:
            self.weight = self.weight.contiguous(memory_format=_CL)

    def _pack(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return torch.ops.mkldnn._reorder_convolution_transpose_weight(
                self.weight, self.padding, self.output_padding, self.stride, [1, 1], 1, list(x.shape))
        return torch._C._nn.mkldnn_reorder_conv2d_weight(
            self.weight.to_mkldnn(), self.padding, self.stride, [1, 1], 1, list(x.shape))

    def __call__(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if not self.packed:
            if self.transposed:
                y = F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)
            else:
                y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
            return y if add is None else y.add_(add)
        if self._packed_weight is None:
            self._packed_weight = self._pack(x)
        mk = torch.ops.mkldnn
        if self.transposed:
            y = mk._convolution_transpose_pointwise(x, self._packed_weight, self.bias, self.padding,
                                                    self.output_padding, self.stride, [1, 1], 1, "none", [], "")
            return y if add is None else y.add_(add)
        if add is None:
            return mk._convolution_pointwise(x, self._packed_weight, self.bias, self.padding, self.stride,
                                             [1, 1], 1, "none", [], "")
        # conv(x) + bias, then + add as a oneDNN post-op: the same two roundings as the eager sum.
        return mk._convolution_pointwise.binary(x, add, self._packed_weight, self.bias, self.padding, self.stride,
                                                [1, 1], 1, "add", None, None, [], None)


class SubPixelConvTranspose:
    """A 4x4, stride-2, padding-1 ConvTranspose2d (the UNet's upsampling) as four 2x2 convolutions.

    Output pixel (2m + a, 2n + b) only sees input rows {m-1, m} (a = 0) or {m, m+1} (a = 1), through
    kernel taps (3, 1) or (2, 0), and likewise for columns: each of the four output parities is an
    ordinary 2x2 convolution of the input. oneDNN runs those at about twice the speed of its
    transposed convolution on the UNet's small maps (same FLOPs; float32 sums in another order).
    """

    # parity -> the kernel taps seen by input offsets -1/0 (a = 0) or 0/+1 (a = 1), in offset order
    _TAPS = {0: (3, 1), 1: (2, 0)}

    @staticmethod
    def applies(module: nn.Module) -> bool:
        return (isinstance(module, nn.ConvTranspose2d) and module.groups == 1
                and _pair(module.kernel_size) == [4, 4] and _pair(module.stride) == [2, 2]
                and _pair(module.padding) == [1, 1] and _pair(module.output_padding) == [0, 0]
                and _pair(module.dilation) == [1, 1])

    def __init__(self, module: nn.ConvTranspose2d, dtype: torch.dtype, packed: bool) -> None:
        w = module.weight.detach()  # [C_in, C_out, 4, 4]
        self.out_channels = w.shape[1]
        self.parities = []
        for a in (0, 1):
            for b in (0, 1):
                rows, cols = self._TAPS[a], self._TAPS[b]
                kernel = w[:, :, list(rows)][:, :, :, list(cols)].transpose(0, 1)  # [C_out, C_in, 2, 2]
                conv = nn.Conv2d(w.shape[0], w.shape[1], 2, bias=module.bias is not None)
                conv.weight.data, conv.bias = kernel.contiguous(), module.bias
                # F.pad order (left, right, top, bottom): offsets -1/0 pad before, 0/+1 pad after.
                self.parities.append(((1 - b, b, 1 - a, a), PreparedConv(conv, dtype, packed)))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.empty((n, self.out_channels, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=_CL)
        for i, (pad, conv) in enumerate(self.parities):
            a, b = divmod(i, 2)
            out[:, :, a::2, b::2] = conv(F.pad(x, pad))
        return out


class _Norm:
    """GroupNorm with its affine parameters (if any) in the backend's dtype."""

    def __init__(self, module: nn.GroupNorm | None, groups: int, dtype: torch.dtype, eps: float = 1e-5) -> None:
        self.groups = groups if module is None else module.num_groups
        self.eps = eps if module is None else module.eps
        affine = module is not None and module.affine
        self.weight = module.weight.detach().to(dtype) if affine else None
        self.bias = module.bias.detach().to(dtype) if affine else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class _Res:
    """A UNetResBlock: conv, GN, SiLU, + biases, conv, GN, SiLU, + shortcut (dropout is off at inference)."""

    def __init__(self, block: UNetResBlock, dtype: torch.dtype, packed: bool) -> None:
        self.conv1, self.conv2 = PreparedConv(block.conv1, dtype, packed), PreparedConv(block.conv2, dtype, packed)
        self.norm1, self.norm2 = _Norm(block.norm1, 0, dtype), _Norm(block.norm2, 0, dtype)
        self.skip = PreparedConv(block.skip, dtype, packed) if isinstance(block.skip, nn.Conv2d) else None
        a, b = block.bias_slice
        self.cols = slice(a, b)

    def __call__(self, x: torch.Tensor, time_bias: torch.Tensor, pos_bias: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)), inplace=True)
        h.add_(time_bias[:, self.cols, None, None])
        if pos_bias is not None:
            h.add_(pos_bias[:, self.cols, None, None])
        h = F.silu(self.norm2(self.conv2(h)), inplace=True)
        # h + skip(x): addition commutes, so the fused form rounds exactly like the eager one.
        return self.skip(x, add=h) if self.skip is not None else h.add_(x)


class _Attn:
    """The middle self-attention (same arithmetic as :class:`rissole_trt.models.layers.Attention`)."""

    def __init__(self, attn: Attention, dtype: torch.dtype, packed: bool) -> None:
        self.qkv, self.out = PreparedConv(attn.qkv, dtype, packed), PreparedConv(attn.out, dtype, packed)
        self.heads, self.dim, self.scale = attn.n_heads, attn.head_dim, attn.scale

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        q, k, v = self.qkv(x).reshape(-1, 3, self.heads, self.dim, h * w).unbind(1)
        attn = torch.matmul((q * self.scale).transpose(-2, -1), k).softmax(dim=-1)
        res = torch.matmul(attn, v.transpose(-2, -1)).transpose(-2, -1).reshape(-1, self.heads * self.dim, h, w)
        return self.out(res.contiguous(memory_format=_CL))


class FastUNet:
    """The per-step forward of a :class:`BlockUNet` with prepared weights (see the module docstring).

    Built from the UNet's current weights: rebuild it after changing them. ``forward_hoisted``
    has :meth:`BlockUNet.forward_hoisted`'s contract; its inputs may be float32 (converted here) or
    already prepared with :meth:`prepare`.
    """

    def __init__(self, unet: BlockUNet, precision: str = "fp32") -> None:
        self.dtype = precision_dtype(precision)
        self.precision = precision
        self.device = next(unet.parameters()).device
        # oneDNN packing on the CPU when it supports the dtype; plain channels-last convs otherwise.
        self.packed = packs_for_onednn(self.device, self.dtype)
        dt, pk = self.dtype, self.packed
        self.has_pos = unet.pos_embed is not None
        self.x_conv = PreparedConv(unet.x_conv, dt, pk)
        self.in_conv = PreparedConv(unet.in_conv, dt, pk)
        self.down = [(_Res(lv.res1, dt, pk), _Res(lv.res2, dt, pk), _Norm(lv.norm, 0, dt), PreparedConv(lv.downsample, dt, pk))
                     for lv in unet.down]
        self.mid = (_Res(unet.mid_res1, dt, pk), _Attn(unet.mid_attn, dt, pk), _Res(unet.mid_res2, dt, pk))
        # On the CPU the upsampling runs as four 2x2 convs (see SubPixelConvTranspose); GPUs keep theirs.
        upsample = SubPixelConvTranspose if self.device.type == "cpu" else PreparedConv
        self.up = [(upsample(lv.upsample, dt, pk) if SubPixelConvTranspose.applies(lv.upsample) else
                    PreparedConv(lv.upsample, dt, pk), _Res(lv.res1, dt, pk), _Res(lv.res2, dt, pk), _Norm(lv.norm, 0, dt))
                   for lv in unet.up]
        self.out_conv = PreparedConv(unet.out_conv, dt, pk)
        self.input_norm = _Norm(None, 1, dt, eps=1e-5)  # the parameter-free layer norm over (C, H, W)

    def prepare(self, t: torch.Tensor) -> torch.Tensor:
        """A float feature map [N, C, H, W] or bias table [N, W] in this backend's dtype and layout."""
        t = t.to(self.dtype)
        return t.contiguous(memory_format=_CL) if t.ndim == 4 else t.contiguous()

    @torch.no_grad()
    def forward_hoisted(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                        pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """ε [N, C, h, w] (float32, contiguous) for noisy blocks x given the hoisted parts."""
        if (pos_bias is None) == self.has_pos:
            raise ValueError("pos_bias is required for a model with position embedding and must be None without one")
        out_dtype = x.dtype
        x, cond_feat, time_bias = self.prepare(x), self.prepare(cond_feat), self.prepare(time_bias)
        pos_bias = None if pos_bias is None else self.prepare(pos_bias)
        h = self.in_conv(self.input_norm(self.x_conv(x, add=cond_feat)))
        skips = []
        for res1, res2, norm, downsample in self.down:
            h = norm(res2(res1(h, time_bias, pos_bias), time_bias, pos_bias))
            skips.append(h)
            h = downsample(h)
        res1, attn, res2 = self.mid
        h = res2(attn(res1(h, time_bias, pos_bias)), time_bias, pos_bias)
        for upsample, res1, res2, norm in self.up:
            h = torch.cat((upsample(h), skips.pop()), dim=1)
            h = norm(res2(res1(h, time_bias, pos_bias), time_bias, pos_bias))
        return self.out_conv(h).to(out_dtype).contiguous()


class FastBlockDenoiser(BlockDenoiser):
    """:class:`BlockDenoiser` whose per-step call runs a :class:`FastUNet`.

    Same contract: ``eps_fn(x_t, t)`` with x_t in the layout of the ``cond`` given at creation,
    t an int or one per image/row; returns float32 ε like x_t. The hoisted parts are computed once
    in float32 by :class:`BlockDenoiser` and then converted to the backend's dtype and layout.
    """

    def __init__(self, model: RissoleModel, cond: torch.Tensor, pos: torch.Tensor | None = None, *,
                 unet: FastUNet) -> None:
        super().__init__(model, cond, pos, forward=unet.forward_hoisted)
        self.cond_feat = unet.prepare(self.cond_feat)
        self.pos_bias = None if self.pos_bias is None else unet.prepare(self.pos_bias)
        self.time_table = unet.prepare(self.time_table)


class TorchBackend:
    """The torch denoiser backend for one model: weights prepared once, a denoiser per batch.

    Args:
        model: the model (its device decides where the backend runs).
        precision: ``"fp32"`` (exact mode: the reference arithmetic, differing from the eager
            module only by float32 rounding order) or ``"bf16"``.
    """

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        self.model = model
        self.precision = precision
        self.unet = FastUNet(model.unet, precision)

    @property
    def native(self) -> bool:
        """False when the precision is emulated on this device (bf16 on a CPU without bf16 arithmetic)."""
        return precision_native(self.precision, self.unet.device)

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> FastBlockDenoiser:
        """An ``eps_fn(x_t, t)`` over the neighbours ``cond``, as :meth:`RissoleModel.denoiser`."""
        return FastBlockDenoiser(self.model, cond, pos, unet=self.unet)

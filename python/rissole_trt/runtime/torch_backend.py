"""The fast PyTorch denoiser: the model's own block UNet with its convolutions prepared once.

:func:`prepare_unet` copies the :class:`BlockUNet` (sharing nothing mutable with it) and swaps
modules in place; the copy's own ``forward_hoisted`` then runs, so the architecture is written once,
in :mod:`rissole_trt.models.unet`. What the swaps change (same layers, same weights):

* **prepacked convolutions** (:class:`PreparedConv`): on the CPU every ``F.conv2d`` call re-lays-out
  its weights into oneDNN's blocked format (about 14% of a CelebA-size call). Here each conv's
  weights are reordered once (``torch._C._nn.mkldnn_reorder_conv2d_weight``) and run with
  ``torch.ops.mkldnn._convolution_pointwise``, the ops torch.compile's CPU freezing pass emits
  (bitwise the same as ``F.conv2d``: the same oneDNN primitive);
* **sub-pixel upsampling** (:class:`SubPixelConvTranspose`, CPU only): each 4x4 stride-2 transposed
  convolution runs as four 2x2 convolutions, one per output parity (oneDNN's transposed convolution
  reached half the speed of its ordinary one on these small maps);
* **channels-last activations** throughout (oneDNN's native layout: no reorders between layers);
* **bf16** (``precision="bf16"``): weights and activations in bfloat16 (GroupNorm statistics and
  softmax accumulate in float32 inside torch's kernels), ε returned in float32. Fast only where the
  hardware has bf16 arithmetic (AVX-512-BF16 / AMX on x86, recent NVIDIA GPUs); elsewhere torch
  emulates it, many times slower than fp32: :func:`bf16_native` says which.

The timestep-invariant parts (neighbour conv, time and position embeddings) are still computed
once, in float32, by :class:`rissole_trt.models.BlockDenoiser`, then converted.

Use::

    backend = rissole_trt.runtime.build("torch", model, "fp32")   # once per model: packs the weights
    eps_fn = backend.denoiser(cond)                               # per batch, like model.denoiser(cond)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..models.rissole import BlockDenoiser, RissoleModel
from ..models.unet import BlockUNet
from ..platform import bf16_native, precision_dtype, precision_native
from .backend import Backend, Capabilities

__all__ = ["PRECISIONS", "precision_dtype", "bf16_native", "precision_native", "packs_for_onednn", "PreparedConv",
           "SubPixelConvTranspose", "prepare_unet", "TorchBackend"]

#: Precisions the torch backend runs in.
PRECISIONS = ("fp32", "bf16")
_CL = torch.channels_last


def packs_for_onednn(device: str | torch.device, dtype: torch.dtype) -> bool:
    """Whether convolutions run with prepacked oneDNN weights: on the CPU, when oneDNN supports the dtype."""
    return (torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available()
            and (dtype == torch.float32 or bf16_native("cpu")))


def _pair(v: int | tuple[int, ...]) -> list[int]:
    return list(v) if isinstance(v, tuple) else [v, v]


class PreparedConv(nn.Module):
    """One Conv2d / ConvTranspose2d with its weights prepared once, in ``dtype``.

    ``packed``: oneDNN weights reordered on the first call (the input shape is only a layout hint:
    the packed weights serve every batch size). Otherwise plain ``F.conv2d`` on channels-last
    weights (CUDA, or a CPU without oneDNN support for the dtype).
    """

    def __init__(self, module: nn.Conv2d | nn.ConvTranspose2d, dtype: torch.dtype, packed: bool) -> None:
        super().__init__()
        if module.groups != 1 or _pair(module.dilation) != [1, 1]:
            raise InvalidArgumentError("the fast torch backend supports ungrouped, undilated convolutions only")
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            if self.transposed:
                return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding)
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        if self._packed_weight is None:
            self._packed_weight = self._pack(x)
        mk = torch.ops.mkldnn
        if self.transposed:
            return mk._convolution_transpose_pointwise(x, self._packed_weight, self.bias, self.padding,
                                                       self.output_padding, self.stride, [1, 1], 1, "none", [], "")
        return mk._convolution_pointwise(x, self._packed_weight, self.bias, self.padding, self.stride,
                                         [1, 1], 1, "none", [], "")


class SubPixelConvTranspose(nn.Module):
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
        super().__init__()
        w = module.weight.detach()  # [C_in, C_out, 4, 4]
        self.out_channels = w.shape[1]
        self.pads = []
        convs = []
        for a in (0, 1):
            for b in (0, 1):
                rows, cols = self._TAPS[a], self._TAPS[b]
                kernel = w[:, :, list(rows)][:, :, :, list(cols)].transpose(0, 1)  # [C_out, C_in, 2, 2]
                conv = nn.Conv2d(w.shape[0], w.shape[1], 2, bias=module.bias is not None)
                conv.weight.data, conv.bias = kernel.contiguous(), module.bias
                # F.pad order (left, right, top, bottom): offsets -1/0 pad before, 0/+1 pad after.
                self.pads.append((1 - b, b, 1 - a, a))
                convs.append(PreparedConv(conv, dtype, packed))
        self.parities = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.empty((n, self.out_channels, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=_CL)
        for i, (pad, conv) in enumerate(zip(self.pads, self.parities)):
            a, b = divmod(i, 2)
            out[:, :, a::2, b::2] = conv(F.pad(x, pad))
        return out


def prepare_unet(unet: BlockUNet, precision: str = "fp32") -> BlockUNet:
    """An eval-mode copy of ``unet`` in ``precision`` with every convolution prepared (see above).

    Built from the UNet's current weights: prepare again after changing them.
    """
    dtype = precision_dtype(precision)
    device = next(unet.parameters()).device
    packed = packs_for_onednn(device, dtype)
    prepared = copy.deepcopy(unet).eval().requires_grad_(False).to(dtype)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if device.type == "cpu" and SubPixelConvTranspose.applies(child):
                setattr(parent, name, SubPixelConvTranspose(child, dtype, packed))
            elif isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                setattr(parent, name, PreparedConv(child, dtype, packed))
            else:
                swap(child)

    swap(prepared)
    return prepared


class _PreparedDenoiser(BlockDenoiser):
    """:class:`BlockDenoiser` whose per-step call runs the prepared UNet: the hoisted parts are
    computed once in float32 by the model, then converted to the backend's dtype and layout."""

    def __init__(self, backend: "TorchBackend", cond: torch.Tensor, pos: torch.Tensor | None) -> None:
        super().__init__(backend.model, cond, pos, forward=backend.forward_hoisted)
        self.cond_feat = backend.convert(self.cond_feat)
        self.pos_bias = None if self.pos_bias is None else backend.convert(self.pos_bias)
        self.time_table = backend.convert(self.time_table)


class TorchBackend(Backend):
    """The torch denoiser backend for one model: weights prepared once, a denoiser per batch.

    Args:
        model: the model (its device decides where the backend runs).
        precision: ``"fp32"`` (exact mode: the reference arithmetic, differing from the eager
            module only by float32 rounding order) or ``"bf16"``.
    """

    name = "torch"
    description = "the model's UNet with prepacked oneDNN convolutions, channels-last (fp32 or bf16)"
    capabilities = Capabilities(devices=("cpu", "cuda"), precisions=PRECISIONS)

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        super().__init__(model, precision)
        self.unet = prepare_unet(model.unet, precision)

    def convert(self, t: torch.Tensor) -> torch.Tensor:
        """A float feature map [N, C, H, W] or bias table [N, W] in this backend's dtype and layout."""
        t = t.to(self.dtype)
        return t.contiguous(memory_format=_CL) if t.ndim == 4 else t.contiguous()

    @torch.no_grad()
    def forward_hoisted(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                        pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`BlockUNet.forward_hoisted` on the prepared UNet; ε float32, contiguous, like x."""
        eps = self.unet.forward_hoisted(self.convert(x), self.convert(cond_feat), self.convert(time_bias),
                                        None if pos_bias is None else self.convert(pos_bias))
        return eps.to(x.dtype).contiguous()

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        """An ``eps_fn(x_t, t)`` over the neighbours ``cond``, as :meth:`RissoleModel.denoiser`."""
        return _PreparedDenoiser(self, cond, pos)


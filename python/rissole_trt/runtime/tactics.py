"""Per-layer tactic selection: what ``rissole-trt build-engine`` does for the CPU.

TensorRT builds a GPU engine by timing candidate kernels ("tactics") for every layer on the target
device. The CPU has the same problem: which convolution algorithm wins depends on the ISA (AVX2,
AVX-512, AMX), the layer's shape and the rows per call. :func:`tune` makes a copy of the model's
block UNet in which every layer that has alternatives is a *tunable* module holding all of them,
runs the copy once per bucket to capture each layer's real input, times every candidate on it, and
keeps the fastest whose output lies within the tolerance table (:mod:`rissole_trt.tolerances`)
of the plain float32 layer. The result is a :class:`TacticTable`; :class:`TunedBackend` runs the
UNet with it, each layer dispatching on its input's row count to the bucket's choice.

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

Then the **rows per call** (micro-batching): each bucket also runs as several calls of a smaller
bucket's rows (with that bucket's tactics), in case the smaller working set's cache locality
outweighs the per-call overhead on this machine; the fastest split is kept.

Layers are tuned inner first (a block's convolutions before the block), and a composite layer is
timed with its inner layers' choices for that bucket, so each layer's time is the one it will run at.
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from ..models.layers import Attention, UNetResBlock
from ..models.rissole import RissoleModel
from ..models.unet import BlockUNet
from ..platform import precision_dtype
from ..tolerances import excess
from .backend import Artifacts, Capabilities
from .base import PerStepBackend
from .cpu_kernels import (
    conv_transpose_columns,
    fused_group_norm,
    gemm_conv_transpose2d,
    gemm_conv_transpose_applies,
    pixel_attention,
    winograd_applies,
    winograd_conv3x3,
    winograd_weights,
)
from .torch_backend import PRECISIONS, PreparedConv, SubPixelConvTranspose, _pair, packs_for_onednn

__all__ = ["TacticTable", "tune", "apply_tactics", "TunedBackend", "layer_tolerance"]

_CL = torch.channels_last
#: Layers outside the per-step network (run once per batch by BlockDenoiser): not tuned.
_HOISTED = {"cond_conv", "time_embed", "pos_embed", "context_embed"}
#: The largest (input pixels x output pixels) of a map the dense-map convolution is offered for: 2x2
#: to 2x2, 4x4 to 2x2 and 2x2 to 4x4 (matrices of at most 64 C x K entries).
DENSE_MAP_MAX_PIXEL_PAIRS = 64


def layer_tolerance(precision: str) -> str:
    """The tolerance-table entry a layer's candidate must meet against the float32 layer."""
    return "tactic_fp32" if precision == "fp32" else "bf16_eps"


class _Im2colConv(nn.Module):
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


class _Gemm1x1(nn.Module):
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


class _DenseMapConv(nn.Module):
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


class _SdpaAttention(nn.Module):
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


class _MatmulAttention(nn.Module):
    """:class:`Attention`'s own arithmetic with prepared projections."""

    def __init__(self, attention: Attention, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.reference = copy.copy(attention)  # shares nothing mutable: only the two submodules differ
        self.reference._modules = dict(attention._modules, qkv=qkv, out=out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reference(x)


class _FusedAttention(nn.Module):
    """:class:`Attention` with the part between its projections in one C++ pass (:func:`pixel_attention`)."""

    def __init__(self, attention: Attention, qkv: nn.Module, out: nn.Module) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.scale = attention.n_heads, attention.head_dim, attention.scale
        self.qkv, self.out = qkv, out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(pixel_attention(self.qkv(x), self.n_heads, self.head_dim, self.scale))


class _WinogradConv(nn.Module):
    """A 3x3 stride-1 padding-1 convolution by Winograd F(tile x tile, 3x3), weights transformed once."""

    def __init__(self, conv: nn.Conv2d, dtype: torch.dtype, tile: int = 2) -> None:
        super().__init__()
        self.register_buffer("u", winograd_weights(conv.weight, dtype, tile))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return winograd_conv3x3(x, self.u, self.bias)


class _GemmConvTranspose(nn.Module):
    """A transposed convolution as one GEMM to per-tap columns and the C++ core's overlap-add."""

    def __init__(self, conv: nn.ConvTranspose2d, dtype: torch.dtype) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = conv.kernel_size[0], conv.stride[0], conv.padding[0]
        self.register_buffer("columns", conv_transpose_columns(conv.weight, dtype))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gemm_conv_transpose2d(x, self.columns, self.bias, self.kernel, self.stride, self.padding)


class _FusedNormResBlock(nn.Module):
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


class _FusedGroupNorm(nn.Module):
    """A GroupNorm (the UNet's one-group level norms) as one C++ pass after its statistics."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups, self.eps = norm.num_groups, norm.eps
        c = norm.num_channels
        self.register_buffer("gamma", norm.weight.detach().float() if norm.affine else torch.ones(c))
        self.register_buffer("beta", norm.bias.detach().float() if norm.affine else torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_group_norm(x, self.groups, self.gamma, self.beta, self.eps, silu=False)


def _conv_candidates(conv: nn.Module, dtype: torch.dtype, packed_ok: bool) -> dict[str, nn.Module]:
    if SubPixelConvTranspose.applies(conv):
        out = {"subpixel_conv2d": SubPixelConvTranspose(conv, dtype, packed=False),
               "conv_transpose": PreparedConv(conv, dtype, packed=packed_ok), "dense_map": _DenseMapConv(conv, dtype)}
        if packed_ok:  # (packed_ok: CPU, where the C++ overlap-add runs)
            out["subpixel_packed"] = SubPixelConvTranspose(conv, dtype, packed=True)
            if gemm_conv_transpose_applies(conv):
                out["gemm_overlap_add"] = _GemmConvTranspose(conv, dtype)
        return out
    out = {"conv2d": PreparedConv(conv, dtype, packed=False)}
    if packed_ok:
        out["onednn_packed"] = PreparedConv(conv, dtype, packed=True)
    out["dense_map"] = _DenseMapConv(conv, dtype)
    if isinstance(conv, nn.Conv2d):
        out["im2col_gemm"] = _Im2colConv(conv, dtype)
        if _Gemm1x1.applies(conv):
            out["gemm_1x1"] = _Gemm1x1(conv, dtype)
        if packed_ok and winograd_applies(conv):  # the C++ transforms are CPU code (packed_ok: CPU)
            out["winograd_f2"] = _WinogradConv(conv, dtype, tile=2)
            if dtype == torch.float32:  # F4's transforms grow values ~100x: bf16 tiles lose ~1e-1, never in tolerance
                out["winograd_f4"] = _WinogradConv(conv, dtype, tile=4)
    return out


class _Tunable(nn.Module):
    """One layer with several implementations; ``choice[rows]`` names the one run for that many rows
    (``default`` for any other count). While ``capture`` is a dict, calls record their inputs."""

    def __init__(self, kind: str, candidates: dict[str, nn.Module], default: str) -> None:
        super().__init__()
        self.kind = kind
        self.candidates = nn.ModuleDict(candidates)
        self.default = default
        self.choice: dict[int, str] = {}
        self.capture: dict[int, tuple] | None = None

    def forward(self, x: torch.Tensor, *rest: torch.Tensor | None) -> torch.Tensor:
        if self.capture is not None:
            self.capture[x.shape[0]] = (x, *rest)
        return self.candidates[self.choice.get(x.shape[0], self.default)](x, *rest)


def _tunable_unet(unet: BlockUNet, precision: str) -> tuple[BlockUNet, dict[str, _Tunable]]:
    """A prepared eval copy of ``unet`` whose convolutions and attention layers are :class:`_Tunable`."""
    dtype = precision_dtype(precision)
    device = next(unet.parameters()).device
    packed_ok = packs_for_onednn(device, dtype)
    base = copy.deepcopy(unet).eval().requires_grad_(False)
    tunables: dict[str, _Tunable] = {}

    def conv_tunable(name: str, conv: nn.Module) -> _Tunable:
        candidates = _conv_candidates(conv, dtype, packed_ok)
        default = next(c for c in ("subpixel_packed", "onednn_packed", "subpixel_conv2d", "conv2d") if c in candidates)
        tunables[name] = _Tunable("conv", candidates, default)
        return tunables[name]

    def swap(parent: nn.Module, prefix: str, norms: bool = True) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            if name in _HOISTED:
                continue
            if isinstance(child, Attention):
                qkv, out = conv_tunable(f"{name}.qkv", child.qkv), conv_tunable(f"{name}.out", child.out)
                candidates = {"matmul": _MatmulAttention(child, qkv, out), "sdpa": _SdpaAttention(child, qkv, out)}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_cpu"] = _FusedAttention(child, qkv, out)
                tunables[name] = _Tunable("attention", candidates, "matmul")
                setattr(parent, child_name, tunables[name])
            elif isinstance(child, UNetResBlock):
                # Its convolutions first: they are tuned before the block (its norms are the block's).
                swap(child, f"{name}.", norms=False)
                candidates = {"torch_ops": child}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_norm"] = _FusedNormResBlock(child)
                tunables[name] = _Tunable("resblock", candidates, "torch_ops")
                tunables[name].bias_slice = child.bias_slice  # read by BlockUNet._res
                setattr(parent, child_name, tunables[name])
            elif isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                setattr(parent, child_name, conv_tunable(name, child))
            elif isinstance(child, nn.GroupNorm) and norms:
                candidates = {"torch_ops": child}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_norm"] = _FusedGroupNorm(child)
                tunables[name] = _Tunable("norm", candidates, "torch_ops")
                setattr(parent, child_name, tunables[name])
            else:
                swap(child, f"{name}.", norms)

    swap(base, "")
    # Norms, biases and embeddings in the backend's dtype; the tunables' candidates already are
    # (float32 buffers of the C++ kernels stay float32: they are buffers, not parameters).
    for module in base.modules():
        if not isinstance(module, _Tunable):
            for key, param in module._parameters.items():
                if param is not None:
                    module._parameters[key] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
    return base, tunables


@dataclass
class TacticTable:
    """Per layer and bucket (rows per call): the chosen candidate and what every candidate measured."""

    precision: str
    layers: dict[str, dict[str, dict]] = field(default_factory=dict)  # layer -> str(rows) -> record
    # str(rows) -> {"chosen": rows per call, "ms": {str(rows per call): ms of the whole network}}
    calls: dict[str, dict] = field(default_factory=dict)

    def choice(self, layer: str, rows: int) -> str:
        return self.layers[layer][str(rows)]["chosen"]

    def rows_per_call(self, rows: int) -> int:
        """How many rows one call of the network takes when ``rows`` arrive (``rows``: no split)."""
        return int(self.calls.get(str(rows), {}).get("chosen", rows))

    def to_dict(self) -> dict:
        return {"precision": self.precision, "layers": self.layers, "calls": self.calls}

    @classmethod
    def from_dict(cls, doc: dict) -> "TacticTable":
        return cls(doc["precision"], doc["layers"], doc["calls"])

    def decisions(self) -> dict[str, dict[str, dict]]:
        """Per layer and bucket: what was chosen and why (the fastest within tolerance; the runner-up
        within tolerance, and the candidates that were faster but outside the tolerance)."""
        out: dict[str, dict[str, dict]] = {}
        for layer, per_rows in self.layers.items():
            for rows, record in per_rows.items():
                timed = record["candidates"]
                chosen = record["chosen"]
                ok = sorted((c for c, r in timed.items() if r["excess"] <= 1.0), key=lambda c: timed[c]["ms"])
                runner_up = next((c for c in ok if c != chosen), None)
                out.setdefault(layer, {})[rows] = {
                    "chosen": chosen, "ms": timed[chosen]["ms"],
                    "runner_up": runner_up, "runner_up_ms": None if runner_up is None else timed[runner_up]["ms"],
                    "faster_outside_tolerance": sorted(c for c, r in timed.items()
                                                       if r["excess"] > 1.0 and r["ms"] < timed[chosen]["ms"])}
        return out

    def summary(self) -> dict[str, int]:
        """How many (layer, bucket) pairs each candidate won."""
        counts: dict[str, int] = {}
        for per_rows in self.layers.values():
            for record in per_rows.values():
                counts[record["chosen"]] = counts.get(record["chosen"], 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _median_seconds(fn: Callable[[], object], min_time: float, reps: int = 3) -> float:
    fn()  # warm-up (first-call packing, allocator)
    samples, start = [], time.perf_counter()
    while len(samples) < reps or (time.perf_counter() - start < min_time and len(samples) < 50):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


@torch.no_grad()
def tune(model: RissoleModel, precision: str, inputs_per_bucket: dict[int, tuple], *, seconds_per_candidate: float,
         log: Callable[[str], None] = lambda _: None) -> TacticTable:
    """Time every candidate of every tunable layer at each bucket and keep the fastest within tolerance.

    Args:
        inputs_per_bucket: rows -> the per-step network's float32 inputs (``step_spec`` order).
        seconds_per_candidate: timing budget of one candidate at one layer and bucket (at least 3 calls).
    """
    unet, tunables = _tunable_unet(model.unet, precision)
    dtype = precision_dtype(precision)
    kind = layer_tolerance(precision)
    table = TacticTable(precision)
    reference_unet = copy.deepcopy(model.unet).float().eval()  # the plain float32 layers
    for rows, inputs in inputs_per_bucket.items():
        for tunable in tunables.values():
            tunable.capture = {}
        unet.forward_hoisted(*_convert_inputs(inputs, dtype))
        captured = {name: tunable.capture[rows] for name, tunable in tunables.items()}
        for tunable in tunables.values():
            tunable.capture = None
        for name, tunable in tunables.items():  # inner layers first (see _tunable_unet)
            args = captured[name]
            expected = reference_unet.get_submodule(name)(*(None if a is None else a.float() for a in args))
            record: dict = {"candidates": {}}
            for candidate, module in tunable.candidates.items():
                if hasattr(module, "applies_to") and not module.applies_to(*args):
                    continue  # e.g. the dense-map convolution on a large map
                out = module(*args)
                err = excess(out.float(), expected, kind)
                seconds = _median_seconds(lambda: module(*args), seconds_per_candidate)
                record["candidates"][candidate] = {"ms": seconds * 1e3, "excess": err}
            ok = {c: r for c, r in record["candidates"].items() if r["excess"] <= 1.0}
            if not ok:
                raise InvalidArgumentError(f"no candidate of layer {name} at {rows} rows is within tolerance")
            record["chosen"] = min(ok, key=lambda c: ok[c]["ms"])
            tunable.choice[rows] = record["chosen"]  # layers around this one are timed with it
            table.layers.setdefault(name, {})[str(rows)] = record
        log(f"tactics at {rows} rows: " + ", ".join(f"{c} x{n}" for c, n in _count(table, rows).items()))
    for rows, inputs in inputs_per_bucket.items():  # every bucket's layers are tuned: now the splits
        converted = _convert_inputs(inputs, dtype)
        splits = [rows] + sorted((r for r in inputs_per_bucket if r < rows), reverse=True)
        ms = {str(r): 1e3 * _median_seconds(lambda: _in_calls(unet, converted, r), seconds_per_candidate)
              for r in splits}
        chosen = min(splits, key=lambda r: ms[str(r)])
        table.calls[str(rows)] = {"chosen": chosen, "ms": ms}
        if chosen != rows:
            log(f"{rows} rows run as calls of {chosen} rows")
    return table


def _in_calls(unet: BlockUNet, inputs: tuple, rows_per_call: int) -> torch.Tensor:
    """``unet.forward_hoisted(*inputs)`` as calls of at most ``rows_per_call`` rows (inputs with one row,
    such as a shared time bias, go to every call)."""
    n = inputs[0].shape[0]
    if rows_per_call >= n:
        return unet.forward_hoisted(*inputs)
    pieces = []
    for start in range(0, n, rows_per_call):
        part = [t if t is None or t.shape[0] != n else t[start:start + rows_per_call] for t in inputs]
        pieces.append(unet.forward_hoisted(*part))
    return torch.cat(pieces)


def _count(table: TacticTable, rows: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for per_rows in table.layers.values():
        chosen = per_rows[str(rows)]["chosen"]
        counts[chosen] = counts.get(chosen, 0) + 1
    return counts


def _convert_inputs(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(None if t is None else (t.to(dtype).contiguous(memory_format=_CL) if t.ndim == 4 else t.to(dtype))
                 for t in inputs)


def apply_tactics(model: RissoleModel, table: TacticTable) -> BlockUNet:
    """The model's UNet with every tunable layer dispatching to the table's choice per bucket."""
    unet, tunables = _tunable_unet(model.unet, table.precision)
    if set(tunables) != set(table.layers):
        raise InvalidArgumentError("the tactic table was made for another network (its layers differ)")
    for name, tunable in tunables.items():
        tunable.choice = {int(rows): record["chosen"] for rows, record in table.layers[name].items()}
        unknown = set(tunable.choice.values()) - set(tunable.candidates)
        if unknown:
            raise InvalidArgumentError(f"layer {name}: tactic(s) {sorted(unknown)} are not available on this machine")
        # Unused candidates are dropped: they would hold a second copy of the weights.
        keep = set(tunable.choice.values()) | {tunable.default}
        tunable.candidates = nn.ModuleDict({c: m for c, m in tunable.candidates.items() if c in keep})
    return unet


class TunedBackend(PerStepBackend):
    """The per-step UNet with a :class:`TacticTable` applied (``forward_hoisted`` float32 in and out)."""

    name = "tuned"
    description = "the model's UNet with this machine's per-layer tactic table (built engines only)"
    capabilities = Capabilities(devices=("cpu",), precisions=PRECISIONS, purposes=("build",),
                                needs_artifacts=("tactics",))

    @classmethod
    def from_artifacts(cls, model: RissoleModel, precision: str, artifacts: Artifacts) -> "TunedBackend":
        return cls(model, artifacts.table)

    def __init__(self, model: RissoleModel, table: TacticTable) -> None:
        super().__init__(model, table.precision)
        self.unet = apply_tactics(model, table)
        self.table = table

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        rows_per_call = self.table.rows_per_call(inputs[0].shape[0])
        return _in_calls(self.unet, _convert_inputs(inputs, self.dtype), rows_per_call).float().contiguous()

"""The rewriter: a copy of the model's block UNet whose tunable layers hold every candidate
(:class:`Tunable`), and that copy set to a :class:`~.table.TacticTable`'s choices."""
from __future__ import annotations

import copy

import torch
from torch import nn

from ...errors import InvalidArgumentError
from ...models.layers import Attention, UNetResBlock
from ...models.rissole import RissoleModel
from ...models.unet import BlockUNet
from ...platform import precision_dtype
from ..torch_backend import packs_for_onednn
from .candidates import (
    FusedAttention,
    FusedGroupNorm,
    FusedNormResBlock,
    MatmulAttention,
    SdpaAttention,
    conv_candidates,
)
from .table import TacticTable

_CL = torch.channels_last
#: Layers outside the per-step network (run once per batch by BlockDenoiser): not tuned.
_HOISTED = {"cond_conv", "time_embed", "pos_embed", "context_embed"}


class Tunable(nn.Module):
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


def tunable_unet(unet: BlockUNet, precision: str) -> tuple[BlockUNet, dict[str, Tunable]]:
    """A prepared eval copy of ``unet`` whose convolutions and attention layers are :class:`Tunable`."""
    dtype = precision_dtype(precision)
    device = next(unet.parameters()).device
    packed_ok = packs_for_onednn(device, dtype)
    base = copy.deepcopy(unet).eval().requires_grad_(False)
    tunables: dict[str, Tunable] = {}

    def conv_tunable(name: str, conv: nn.Module) -> Tunable:
        candidates = conv_candidates(conv, dtype, packed_ok)
        default = next(c for c in ("subpixel_packed", "onednn_packed", "subpixel_conv2d", "conv2d") if c in candidates)
        tunables[name] = Tunable("conv", candidates, default)
        return tunables[name]

    def swap(parent: nn.Module, prefix: str, norms: bool = True) -> None:
        for child_name, child in list(parent.named_children()):
            name = f"{prefix}{child_name}"
            if name in _HOISTED:
                continue
            if isinstance(child, Attention):
                qkv, out = conv_tunable(f"{name}.qkv", child.qkv), conv_tunable(f"{name}.out", child.out)
                candidates = {"matmul": MatmulAttention(child, qkv, out), "sdpa": SdpaAttention(child, qkv, out)}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_cpu"] = FusedAttention(child, qkv, out)
                tunables[name] = Tunable("attention", candidates, "matmul")
                setattr(parent, child_name, tunables[name])
            elif isinstance(child, UNetResBlock):
                # Its convolutions first: they are tuned before the block (its norms are the block's).
                swap(child, f"{name}.", norms=False)
                candidates = {"torch_ops": child}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_norm"] = FusedNormResBlock(child)
                tunables[name] = Tunable("resblock", candidates, "torch_ops")
                tunables[name].bias_slice = child.bias_slice  # read by BlockUNet._res
                setattr(parent, child_name, tunables[name])
            elif isinstance(child, (nn.Conv2d, nn.ConvTranspose2d)):
                setattr(parent, child_name, conv_tunable(name, child))
            elif isinstance(child, nn.GroupNorm) and norms:
                candidates = {"torch_ops": child}
                if packed_ok:  # the fused kernel is CPU code
                    candidates["fused_norm"] = FusedGroupNorm(child)
                tunables[name] = Tunable("norm", candidates, "torch_ops")
                setattr(parent, child_name, tunables[name])
            else:
                swap(child, f"{name}.", norms)

    swap(base, "")
    # Norms, biases and embeddings in the backend's dtype; the tunables' candidates already are
    # (float32 buffers of the C++ kernels stay float32: they are buffers, not parameters).
    for module in base.modules():
        if not isinstance(module, Tunable):
            for key, param in module._parameters.items():
                if param is not None:
                    module._parameters[key] = nn.Parameter(param.detach().to(dtype), requires_grad=False)
    return base, tunables


def in_calls(unet: BlockUNet, inputs: tuple, rows_per_call: int) -> torch.Tensor:
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


def convert_inputs(inputs: tuple, dtype: torch.dtype) -> tuple:
    return tuple(None if t is None else (t.to(dtype).contiguous(memory_format=_CL) if t.ndim == 4 else t.to(dtype))
                 for t in inputs)


def apply_tactics(model: RissoleModel, table: TacticTable) -> BlockUNet:
    """The model's UNet with every tunable layer dispatching to the table's choice per bucket."""
    unet, tunables = tunable_unet(model.unet, table.precision)
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

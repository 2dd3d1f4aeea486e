"""The ONNX graph of the per-step denoiser: what ONNX Runtime runs here and TensorRT will consume.

Only ``BlockUNet.forward_hoisted`` is exported: the timestep-independent parts (neighbour conv,
time and position embeddings) are computed once per batch by
:class:`rissole_trt.models.BlockDenoiser`, in torch. Input and output names, shapes and dynamic
axes come from :func:`rissole_trt.runtime.spec.step_spec` (``rows`` and ``time_rows`` apart).

``precision="fp16"`` exports the graph a strongly typed TensorRT network builds in half precision:
weights and activations in fp16, every GroupNorm and attention (its softmax) computed in float32
between casts, inputs and output float32 as in the fp32 graph (cast at the graph's edges).
"""
from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_file
from ..errors import InvalidArgumentError
from ..models.layers import Attention, CrossAttention
from ..models.rissole import RissoleModel
from ..models.unet import BlockUNet
from .spec import step_spec

OPSET = 17
#: Precisions of the exported graph, and their torch dtypes.
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class _PerStep(nn.Module):
    """``forward_hoisted`` of ``unet`` with float32 inputs and output, computed in ``dtype``."""

    def __init__(self, unet: BlockUNet, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.unet, self.dtype = unet, dtype

    def forward(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (t if t is None else t.to(self.dtype) for t in (x, cond_feat, time_bias, pos_bias))
        return self.unet.forward_hoisted(*inputs).float()


class _Float32Island(nn.Module):
    """A layer computed in float32 inside a low-precision graph: floating inputs cast up, the result
    cast back to the first input's dtype. Keeps the attributes the UNet reads off its layers."""

    _PASSED = ("kv_slice", "index")

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer.float()
        for name in self._PASSED:
            if hasattr(layer, name):
                setattr(self, name, getattr(layer, name))

    def forward(self, *args, **kwargs):
        def up(t):
            return t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t

        return self.layer(*map(up, args), **{k: up(v) for k, v in kwargs.items()}).to(args[0].dtype)


def low_precision_unet(unet: BlockUNet, dtype: torch.dtype) -> BlockUNet:
    """An eval copy of ``unet`` in ``dtype`` whose GroupNorms and attention layers run in float32."""
    copy_ = copy.deepcopy(unet).eval().requires_grad_(False).to(dtype)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, (nn.GroupNorm, Attention, CrossAttention)):
                setattr(parent, name, _Float32Island(child))
            else:
                swap(child)

    swap(copy_)
    return copy_


def sample_inputs(model: RissoleModel, rows: int = 2) -> tuple[torch.Tensor, ...]:
    """Example inputs of the exported graph, in the spec's order (for tracing); ``time_rows`` = 1,
    as in the Engine's samplers (the exported graph stays dynamic in both axes)."""
    unet = model.unet
    device = next(model.parameters()).device
    spec = step_spec(model)
    sizes = {"rows": rows, "time_rows": 1}
    with torch.no_grad():
        cond = torch.zeros(rows, model.config.unet.cond_channels, *spec.inputs[0].shape[2:], device=device)
        made = {"x": torch.zeros(spec.inputs[0].concrete(sizes), device=device),
                "cond_feat": unet.condition(cond),
                "time_bias": unet.embed_time(torch.arange(1, device=device))}
        if "pos_bias" in spec.input_names:
            made["pos_bias"] = unet.embed_pos(torch.arange(rows, device=device) % model.config.n_blocks)
    for tensor in spec.inputs:
        if tuple(made[tensor.name].shape) != tensor.concrete(sizes):
            raise AssertionError(f"{tensor.name}: made {list(made[tensor.name].shape)}, spec {tensor.shape}")
    return tuple(made[name] for name in spec.input_names)


def export_denoiser_onnx(model: RissoleModel, path: str | os.PathLike, precision: str = "fp32") -> Path:
    """Write the per-step denoiser of ``model`` as an ONNX file (atomically) and check it;
    ``precision`` "fp32" or "fp16" (see the module docstring)."""
    import onnx

    if precision not in EXPORT_DTYPES:
        raise InvalidArgumentError(f"the ONNX graph is exported in {' or '.join(EXPORT_DTYPES)}, not {precision!r}")
    path = Path(path)
    spec = step_spec(model)
    model.eval()  # export restores the wrapper's mode: an eval wrapper keeps dropout off
    dtype = EXPORT_DTYPES[precision]
    unet = model.unet if dtype == torch.float32 else low_precision_unet(model.unet, dtype)
    with atomic_file(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(_PerStep(unet, dtype).eval(), sample_inputs(model), tmp, dynamo=False,
                              opset_version=OPSET, input_names=spec.input_names, output_names=[spec.output.name],
                              dynamic_axes=spec.dynamic_axes())
        onnx.checker.check_model(str(tmp))
    return path

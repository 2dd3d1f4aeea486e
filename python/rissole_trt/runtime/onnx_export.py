"""The ONNX graph of the per-step denoiser: what ONNX Runtime runs here and TensorRT will consume.

Only ``BlockUNet.forward_hoisted`` is exported: the timestep-independent parts (neighbour conv,
time and position embeddings) are computed once per batch by
:class:`rissole_trt.models.BlockDenoiser`, in torch. Input and output names, shapes and dynamic
axes come from :func:`rissole_trt.runtime.spec.step_spec` (``rows`` and ``time_rows`` apart).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.rissole import RissoleModel
from .spec import step_spec
from ..atomic import atomic_file

OPSET = 17


class _PerStep(nn.Module):
    def __init__(self, model: RissoleModel) -> None:
        super().__init__()
        self.unet = model.unet

    def forward(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet.forward_hoisted(x, cond_feat, time_bias, pos_bias)


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


def export_denoiser_onnx(model: RissoleModel, path: str | os.PathLike) -> Path:
    """Write the per-step denoiser of ``model`` as an ONNX file (atomically) and check it."""
    import onnx

    path = Path(path)
    spec = step_spec(model)
    model.eval()  # export restores the wrapper's mode: an eval wrapper keeps dropout off
    with atomic_file(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(_PerStep(model).eval(), sample_inputs(model), tmp, dynamo=False,
                              opset_version=OPSET, input_names=spec.input_names, output_names=[spec.output.name],
                              dynamic_axes=spec.dynamic_axes())
        onnx.checker.check_model(str(tmp))
    return path

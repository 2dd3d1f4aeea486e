"""The ONNX graph of the per-step denoiser: what ONNX Runtime runs here and TensorRT will consume.

Only ``BlockUNet.forward_hoisted`` is exported: the timestep-independent parts (neighbour conv,
time and position embeddings) are computed once per generation by
:class:`rissole_trt.models.BlockDenoiser`, in torch. Inputs (batch axis ``n`` dynamic):

    x          [n, C, bs, bs]        noisy latent blocks
    cond_feat  [n, ch0/2, h, w]      neighbour features (BlockUNet.condition)
    time_bias  [n or 1, E]           rows of BlockUNet.embed_time (1 row: all rows share t)
    pos_bias   [n, E]                BlockUNet.embed_pos (only for models with position embedding)
    -> eps     [n, C, bs, bs]
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..models.rissole import RissoleModel

OPSET = 17


class _PerStep(nn.Module):
    def __init__(self, model: RissoleModel) -> None:
        super().__init__()
        self.unet = model.unet

    def forward(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet.forward_hoisted(x, cond_feat, time_bias, pos_bias)


def input_names(model: RissoleModel) -> list[str]:
    names = ["x", "cond_feat", "time_bias"]
    return names + ["pos_bias"] if model.unet.pos_embed is not None else names


def sample_inputs(model: RissoleModel, rows: int = 2) -> tuple[torch.Tensor, ...]:
    """Example inputs of the exported graph (for tracing and for shape profiles)."""
    config = model.config
    unet = model.unet
    device = next(model.parameters()).device
    with torch.no_grad():
        cond = torch.zeros(rows, config.unet.cond_channels, config.block_size, config.block_size, device=device)
        x = torch.zeros(rows, config.unet.latent_channels, config.block_size, config.block_size, device=device)
        inputs = [x, unet.condition(cond), unet.embed_time(torch.arange(rows, device=device))]
        if unet.pos_embed is not None:
            inputs.append(unet.embed_pos(torch.arange(rows, device=device) % config.n_blocks))
    return tuple(inputs)


def export_denoiser_onnx(model: RissoleModel, path: str | os.PathLike) -> Path:
    """Write the per-step denoiser of ``model`` as an ONNX file (atomically) and check it."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = input_names(model)
    model.eval()  # export restores the wrapper's mode: an eval wrapper keeps dropout off
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks
            torch.onnx.export(_PerStep(model).eval(), sample_inputs(model), tmp, dynamo=False,
                              opset_version=OPSET, input_names=names, output_names=["eps"],
                              dynamic_axes={name: {0: "n"} for name in names + ["eps"]})
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

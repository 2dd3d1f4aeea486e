"""The ONNX Runtime denoiser backend (CPU): the per-step UNet exported once and run by ORT."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import RissoleError
from ..models.rissole import BlockDenoiser, RissoleModel
from .onnx_export import export_denoiser_onnx, input_names


def _onnxruntime():
    try:
        import onnx  # noqa: F401  (the exporter's checker)
        import onnxruntime
    except ImportError as error:
        raise RissoleError(f"the onnxruntime backend needs onnx and onnxruntime ({error}); "
                           "pip install 'rissole-trt[onnx]'") from error
    return onnxruntime


class OnnxRuntimeBackend:
    """Exports ``model``'s per-step UNet to ONNX (into ``cache_dir`` or a temporary folder) and runs it
    with ONNX Runtime's CPU provider. ``denoiser(cond)`` has the contract of ``RissoleModel.denoiser``."""

    name = "onnxruntime"

    def __init__(self, model: RissoleModel, *, cache_dir: str | os.PathLike | None = None,
                 threads: int | None = None) -> None:
        ort = _onnxruntime()
        if next(model.parameters()).device.type != "cpu":
            raise RissoleError("the onnxruntime backend runs on the CPU; use device='cpu'")
        self.model = model
        self._tmp = None if cache_dir is not None else tempfile.TemporaryDirectory(prefix="rissole-onnx-")
        directory = Path(cache_dir) if cache_dir is not None else Path(self._tmp.name)
        self.path = export_denoiser_onnx(model, directory / "denoiser.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self._names = input_names(model)

    def _forward(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                 pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        values = (x, cond_feat, time_bias, pos_bias)
        feeds = {name: np.ascontiguousarray(value.detach().numpy(), dtype=np.float32)
                 for name, value in zip(self._names, values)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        return BlockDenoiser(self.model, cond, pos, forward=self._forward)

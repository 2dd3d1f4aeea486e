"""The ONNX Runtime denoiser backend (CPU): the per-step UNet exported once and run by ORT."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import BackendUnavailableError
from ..models.rissole import RissoleModel
from .backend import Capabilities
from .base import OnnxGraphBackend
from .onnx_export import export_denoiser_onnx
from .spec import step_spec


class OnnxRuntimeBackend(OnnxGraphBackend):
    """Runs ``model``'s per-step UNet exported to ONNX (``onnx_path``, e.g. an engine's, or a private export)
    with ONNX Runtime's CPU provider. ``denoiser(cond)`` has the contract of ``RissoleModel.denoiser``."""

    name = "onnxruntime"
    description = "the per-step UNet exported to ONNX once and run by ONNX Runtime's CPU provider"
    capabilities = Capabilities(devices=("cpu",), precisions=("fp32",), purposes=("run", "build", "peer"),
                                needs_artifacts=("onnx",))

    package, extra = "onnxruntime", "onnx"

    def __init__(self, model: RissoleModel, precision: str = "fp32", *, onnx_path: str | os.PathLike | None = None,
                 threads: int | None = None) -> None:
        ok, reason = self.probe()
        if not ok:
            raise BackendUnavailableError(f"backend 'onnxruntime' {reason}")
        import onnxruntime as ort

        if precision != "fp32":
            raise BackendUnavailableError(f"the onnxruntime backend runs fp32, not {precision}")
        super().__init__(model, precision)
        if self.device.type != "cpu":
            raise BackendUnavailableError("the onnxruntime backend runs on the CPU; use device='cpu'")
        self._tmp = None
        if onnx_path is None:  # a private export, removed with the backend
            self._tmp = tempfile.TemporaryDirectory(prefix="rissole-onnx-")
            onnx_path = export_denoiser_onnx(model, Path(self._tmp.name) / "denoiser.onnx")
        self.path = Path(onnx_path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.spec = step_spec(model)

    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(value.detach().numpy(), dtype=np.float32)
                 for name, value in self.spec.feeds(*inputs).items()}
        return torch.from_numpy(self.session.run([self.spec.output.name], feeds)[0])


"""The OpenVINO denoiser backend (CPU): the per-step UNet's ONNX graph compiled with static shapes.

A peer a user would otherwise pick (``pip install 'rissole-trt[cpu]'``). OpenVINO compiles fastest
code for static shapes, so the graph is reshaped and compiled once per distinct input shape (row
count) and kept; ``precision="bf16"`` sets ``INFERENCE_PRECISION_HINT`` (fast only with bf16
arithmetic: AVX-512-BF16 / AMX).
"""
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
from .spec import step_spec
from .torch_backend import PRECISIONS

_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoBackend(OnnxGraphBackend):
    """``model``'s per-step UNet exported to ONNX (``onnx_path`` if given, else a temporary export)
    and run by OpenVINO's CPU plugin, compiled per input shape."""

    name = "openvino"
    description = "the per-step UNet's ONNX graph compiled by OpenVINO's CPU plugin, static shapes per row count"
    capabilities = Capabilities(devices=("cpu",), precisions=PRECISIONS, purposes=("run", "build", "peer"),
                                needs_artifacts=("onnx",))

    package, extra = "openvino", "cpu"

    def __init__(self, model: RissoleModel, precision: str = "fp32", *, onnx_path: str | os.PathLike | None = None,
                 threads: int | None = None) -> None:
        ok, reason = self.probe()
        if not ok:
            raise BackendUnavailableError(f"backend 'openvino' {reason}")
        import openvino as ov

        from .onnx_export import export_denoiser_onnx

        super().__init__(model, precision)
        if self.device.type != "cpu":
            raise BackendUnavailableError("the openvino backend runs on the CPU; use device='cpu'")
        self.spec = step_spec(model)
        self._tmp = None
        if onnx_path is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rissole-openvino-")
            onnx_path = export_denoiser_onnx(model, Path(self._tmp.name) / "denoiser.onnx")
        self.core = ov.Core()
        self.graph = self.core.read_model(str(onnx_path))
        self.config = {"INFERENCE_PRECISION_HINT": _HINTS[precision],
                       "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
                       "PERFORMANCE_HINT": "LATENCY"}
        self._compiled: dict[tuple, object] = {}

    def _request(self, feeds: dict[str, np.ndarray]):
        key = tuple(feeds[name].shape for name in self.spec.input_names)
        if key not in self._compiled:
            graph = self.graph.clone()
            graph.reshape({name: list(feeds[name].shape) for name in self.spec.input_names})
            self._compiled[key] = self.core.compile_model(graph, "CPU", self.config).create_infer_request()
        return self._compiled[key]

    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        feeds = {name: np.ascontiguousarray(value.detach().float().numpy())
                 for name, value in self.spec.feeds(*inputs).items()}
        request = self._request(feeds)
        request.infer(feeds)
        return torch.from_numpy(np.array(request.get_output_tensor(0).data, copy=True))


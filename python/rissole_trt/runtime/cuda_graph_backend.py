"""The CUDA-graph denoiser backend: the per-step UNet captured once per input shape and replayed.

At small batches a GPU spends most of a step launching ~100 kernels; a CUDA graph replays the
whole captured step as one launch. Inputs are copied into static buffers owned by the backend
(a graph reads fixed addresses), the captured output is copied out. One graph per distinct input
shape (the engine's buckets keep that set small). For DDIM and DPM-Solver++ the Engine goes one
step further through :meth:`CudaGraphBackend.loop_sampler`: the whole sampling loop as one graph
(:mod:`rissole_trt.runtime.loop_graph`), with ``overlap="half"``'s window shift inside each
captured step. Written against torch's documented ``torch.cuda.graph``
API; its tests are marked ``gpu`` and run only on a CUDA machine.
"""
from __future__ import annotations

import copy

import torch

from ..errors import BackendUnavailableError
from ..models.rissole import RissoleModel
from ..windows import WindowedDenoiser
from .base import PerStepBackend
from .loop_graph import LoopDenoiser, LoopGraphs, cuda_capture
from .registry import BackendSpec
from .torch_backend import PRECISIONS

_WARMUP_CALLS = 3  # on a side stream before capture, as torch's CUDA-graph notes require


def _available() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}"


class _Captured:
    def __init__(self, unet: torch.nn.Module, inputs: tuple) -> None:
        self.static = tuple(None if t is None else t.clone() for t in inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(_WARMUP_CALLS):
                unet.forward_hoisted(*self.static)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = unet.forward_hoisted(*self.static)

    def __call__(self, inputs: tuple) -> torch.Tensor:
        for buffer, value in zip(self.static, inputs):
            if buffer is not None:
                buffer.copy_(value)
        self.graph.replay()
        return self.output.clone()


class CudaGraphBackend(PerStepBackend):
    """``model``'s per-step UNet (a private copy in ``precision``) replayed from CUDA graphs."""

    name = "cuda_graph"

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        super().__init__(model, precision)
        if self.device.type != "cuda":
            raise BackendUnavailableError("the cuda_graph backend needs the model on a CUDA device")
        self.unet = self.private_unet()
        self._graphs: dict[tuple, _Captured] = {}
        self.loops = LoopGraphs(cuda_capture)

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        inputs = self.cast(inputs)
        key = tuple(None if t is None else tuple(t.shape) for t in inputs)
        if key not in self._graphs:
            self._graphs[key] = _Captured(self.unet, inputs)
        return self._graphs[key](inputs).float()

    def _uncaptured(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """The per-step network itself: what a whole-loop capture records (graphs do not nest)."""
        return self.unet.forward_hoisted(*self.cast(inputs)).float()

    def _uncaptured_copy(self, denoiser: LoopDenoiser) -> LoopDenoiser:
        """``denoiser`` stepping through :meth:`_uncaptured` (the windows' row denoiser, with overlap)."""
        if isinstance(denoiser, WindowedDenoiser):
            return denoiser.with_inner(self._uncaptured_copy(denoiser.inner))
        plain = copy.copy(denoiser)
        plain.forward = self._uncaptured
        return plain

    def loop_sampler(self, rows: int):
        """``sample(denoiser, sampler, shape, generator, clip=None)``: the whole loop from one graph."""
        def sample(denoiser: LoopDenoiser, sampler, shape, generator, clip=None) -> torch.Tensor:
            return self.loops.sample(self._uncaptured_copy(denoiser), sampler, shape, generator, clip=clip)
        return sample


SPEC = BackendSpec(
    name="cuda_graph", devices=("cuda",), precisions=PRECISIONS,
    description="the per-step UNet captured as a CUDA graph per row count and replayed (one launch per step)",
    available=_available,
    build=CudaGraphBackend,
)

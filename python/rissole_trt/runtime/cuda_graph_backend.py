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
from .backend import Capabilities
from .base import PerStepBackend
from .loop_graph import Capture, LoopDenoiser, LoopGraphs, cuda_capture
from .torch_backend import PRECISIONS


def normalised(inputs: tuple) -> tuple:
    """``inputs`` without trailing Nones: ``(x, c, t)`` and ``(x, c, t, None)`` are one call of
    ``forward_hoisted``, so they must find one graph, not capture a second one."""
    end = len(inputs)
    while end and inputs[end - 1] is None:
        end -= 1
    return tuple(inputs[:end])


class _Captured:
    """One input shape's graph: it reads ``static`` (copies of the first inputs, refreshed per call)."""

    def __init__(self, forward, inputs: tuple, capture: Capture) -> None:
        self.static = tuple(None if t is None else t.clone() for t in inputs)
        self.replay, self.output = capture(lambda: forward(*self.static))

    def __call__(self, inputs: tuple) -> torch.Tensor:
        for buffer, value in zip(self.static, inputs):
            if buffer is not None:
                buffer.copy_(value)
        self.replay()
        return self.output.clone()


class StepGraphs:
    """``forward(*inputs)`` recorded by ``capture`` once per input shape, then replayed."""

    def __init__(self, forward, capture: Capture = cuda_capture) -> None:
        self.forward, self.capture = forward, capture
        self.graphs: dict[tuple, _Captured] = {}

    def __call__(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        inputs = normalised(inputs)
        key = tuple(None if t is None else tuple(t.shape) for t in inputs)
        if key not in self.graphs:
            self.graphs[key] = _Captured(self.forward, inputs, self.capture)
        return self.graphs[key](inputs)


class CudaGraphBackend(PerStepBackend):
    """``model``'s per-step UNet (a private copy in ``precision``) replayed from CUDA graphs."""

    name = "cuda_graph"
    description = "the per-step UNet captured as a CUDA graph per row count and replayed (one launch per step)"
    capabilities = Capabilities(devices=("cuda",), precisions=PRECISIONS, captures_loop=True)

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
        return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}"

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        super().__init__(model, precision)
        if self.device.type != "cuda":
            raise BackendUnavailableError("the cuda_graph backend needs the model on a CUDA device")
        self.unet = self.private_unet()
        self.steps = StepGraphs(self.unet.forward_hoisted)
        self.loops = LoopGraphs(cuda_capture)

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        return self.steps(*self.cast(inputs)).float()

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


"""The torch.compile denoiser backend: the per-step UNet compiled by inductor with freezing.

A peer a user would otherwise pick; ``build-engine`` times it as a whole-graph candidate and
``bench --peers`` beside the others. Freezing folds the weights into the graph as constants (and on
the CPU prepacks them for oneDNN, as the torch backend does by hand); shapes are static, so each
new row count compiles once more (tens of seconds on a small CPU: the first call of a shape is slow).
"""
from __future__ import annotations

import torch

from ..models.rissole import RissoleModel
from .backend import Capabilities
from .base import PerStepBackend
from .torch_backend import PRECISIONS


class CompileBackend(PerStepBackend):
    """``model``'s per-step UNet under ``torch.compile(mode="max-autotune-no-cudagraphs")`` with
    inductor freezing, in ``precision``; ``forward_hoisted`` takes and returns float32."""

    name = "torch_compile"
    description = "torch.compile (inductor, freezing, static shapes) of the per-step UNet; compiles per row count"
    capabilities = Capabilities(devices=("cpu", "cuda"), precisions=PRECISIONS, purposes=("run", "build", "peer"))

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        try:
            import torch._inductor.config  # noqa: F401
        except ImportError as error:  # a torch without inductor
            return False, f"this torch has no inductor ({error})"
        return True, f"torch {torch.__version__} inductor"

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # weights as constants: needs eval mode and no grad
        super().__init__(model, precision)
        self.unet = self.private_unet()
        self._compiled = torch.compile(self.unet.forward_hoisted, dynamic=False)

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        return self._compiled(*self.cast(inputs)).float().contiguous()


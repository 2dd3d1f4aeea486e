"""The eager backend: the plain model module, the specification every other backend is tested against."""
from __future__ import annotations

import torch

from ..models.rissole import BlockDenoiser
from .backend import Backend, Capabilities


class EagerBackend(Backend):
    """``denoiser(cond)`` is :meth:`RissoleModel.denoiser`: float32, no preparation."""

    name = "eager"
    description = "the plain PyTorch module (the specification)"
    capabilities = Capabilities(devices=("cpu", "cuda"), precisions=("fp32",), purposes=("run", "build", "peer"))

    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        return self.model.unet.forward_hoisted(*inputs)

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        return self.model.denoiser(cond, pos)

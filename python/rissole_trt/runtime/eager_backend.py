"""The eager backend: the plain model module, the specification every other backend is tested against."""
from __future__ import annotations

import torch

from ..models.rissole import BlockDenoiser, RissoleModel
from .registry import BackendSpec


class EagerBackend:
    """``denoiser(cond)`` is :meth:`RissoleModel.denoiser`: float32, no preparation."""

    name = "eager"
    native = True

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        self.model = model
        self.precision = precision

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        return self.model.denoiser(cond, pos)


SPEC = BackendSpec(
    name="eager", devices=("cpu", "cuda"), precisions=("fp32",),
    description="the plain PyTorch module (the specification)",
    available=lambda: (True, f"torch {torch.__version__}"),
    build=EagerBackend,
)

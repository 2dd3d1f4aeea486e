"""What every per-step backend shares: it wraps one model, runs ``forward_hoisted`` (float32 in and
out, the signature of :meth:`BlockUNet.forward_hoisted`) and hands the samplers a
:class:`BlockDenoiser` over it."""
from __future__ import annotations

import copy

import torch

from ..models.rissole import BlockDenoiser, RissoleModel
from ..models.unet import BlockUNet
from .torch_backend import precision_dtype, precision_native


class PerStepBackend:
    """Base of backends whose per-step call is ``forward_hoisted``; subclasses set ``name`` and define it."""

    name = "?"

    def __init__(self, model: RissoleModel, precision: str) -> None:
        self.model = model
        self.precision = precision
        self.dtype = precision_dtype(precision)
        self.device = next(model.parameters()).device

    @property
    def native(self) -> bool:
        """False when the device only emulates the precision (bf16 without bf16 arithmetic)."""
        return precision_native(self.precision, self.device)

    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        """An ``eps_fn(x_t, t)`` over the neighbours ``cond``, as :meth:`RissoleModel.denoiser`."""
        return BlockDenoiser(self.model, cond, pos, forward=self.forward_hoisted)

    def private_unet(self) -> BlockUNet:
        """An eval-mode, gradient-free copy of the model's UNet in this backend's dtype."""
        return copy.deepcopy(self.model.unet).eval().requires_grad_(False).to(self.dtype)

    def cast(self, inputs: tuple) -> tuple:
        return tuple(None if t is None else t.to(self.dtype) for t in inputs)

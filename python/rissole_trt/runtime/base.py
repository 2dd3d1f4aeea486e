"""What every per-step backend shares: it wraps one model, runs ``forward_hoisted`` (float32 in and
out, the signature of :meth:`BlockUNet.forward_hoisted`) and hands the samplers a
:class:`BlockDenoiser` over it."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch

from typing import Callable, Sequence

from ..models.rissole import BlockDenoiser, RissoleModel
from ..models.unet import BlockUNet
from .torch_backend import precision_dtype, precision_native


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 arithmetic on CUDA inside: torch lets cuDNN convolutions use TF32 (10-bit mantissas)
    by default, too coarse for a reference that fp32 candidates are checked against."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run_in_buckets(buckets: Sequence[int], run: Callable[..., torch.Tensor], x: torch.Tensor, cond_feat: torch.Tensor,
                   time_bias: torch.Tensor, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
    """A per-step call of any number of rows through ``run``, which takes only rows in ``buckets``
    (fixed shapes: a plan's profiles, a captured graph): more rows than the largest bucket are split
    into pieces of it, fewer are padded up to the next bucket with copies of the last row and cut
    off the output. A ``time_bias`` of one row (the samplers' shared timestep) is passed as it is."""
    rows, largest = x.shape[0], max(buckets)
    if rows > largest:
        pieces = []
        for start in range(0, rows, largest):
            part = slice(start, min(rows, start + largest))
            pieces.append(run_in_buckets(buckets, run, x[part], cond_feat[part],
                                         time_bias if time_bias.shape[0] == 1 else time_bias[part],
                                         None if pos_bias is None else pos_bias[part]))
        return torch.cat(pieces)
    bucket = min(b for b in buckets if b >= rows)

    def pad(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None or t.shape[0] != rows or bucket == rows:
            return t
        return torch.cat([t, t[-1:].expand(bucket - rows, *t.shape[1:])])

    time_rows = time_bias if time_bias.shape[0] == 1 else pad(time_bias)
    return run(pad(x), pad(cond_feat), time_rows, pad(pos_bias))[:rows]


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

"""The ``tuned`` backend: the per-step UNet run with a built engine's tactic table."""
from __future__ import annotations

import torch

from ...models.rissole import RissoleModel
from ..backend import Artifacts, Capabilities
from ..base import PerStepBackend
from ..torch_backend import PRECISIONS
from .rewriter import apply_tactics, convert_inputs, in_calls
from .table import TacticTable


class TunedBackend(PerStepBackend):
    """The per-step UNet with a :class:`TacticTable` applied (``forward_hoisted`` float32 in and out)."""

    name = "tuned"
    description = "the model's UNet with this machine's per-layer tactic table (built engines only)"
    capabilities = Capabilities(devices=("cpu",), precisions=PRECISIONS, purposes=("build",),
                                needs_artifacts=("tactics",))

    @classmethod
    def from_artifacts(cls, model: RissoleModel, precision: str, artifacts: Artifacts) -> "TunedBackend":
        return cls(model, artifacts.table)

    def __init__(self, model: RissoleModel, table: TacticTable) -> None:
        super().__init__(model, table.precision)
        self.unet = apply_tactics(model, table)
        self.table = table

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        rows_per_call = self.table.rows_per_call(inputs[0].shape[0])
        return in_calls(self.unet, convert_inputs(inputs, self.dtype), rows_per_call).float().contiguous()

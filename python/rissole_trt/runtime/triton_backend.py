"""The Triton backend (CUDA): the fused kernels of :mod:`rissole_trt.kernels` in the sampling loop.

* For ``xattn`` models every cross-attention layer runs as one
  :func:`~rissole_trt.kernels.gather_xattn.gather_xattn` call: the per-step network gets the
  neighbours as their database ids and uint16 codes (:class:`CodeContext`) instead of hoisted keys
  and values, and looks their keys and values up in per-layer tables over the codebook computed
  once when the backend is built. Nothing per image is precomputed but the time and position
  biases. The rest of the UNet runs in torch (a private copy in the backend's precision).
* For every model the sampler update is one kernel per step
  (:mod:`~rissole_trt.kernels.sampler_step`): :attr:`~.backend.Capabilities.fused_step` tells the Engine.

``auto`` picks it on a GPU for xattn models. On a CPU the kernels run only under Triton's
interpreter (``TRITON_INTERPRET=1``, for tests): the registry offers the backend for CUDA only.
"""
from __future__ import annotations

import os

import torch

from ..errors import BackendUnavailableError, InvalidArgumentError
from ..models.rissole import BlockDenoiser, RissoleModel
from ..windows import ShiftedWindows, WindowedDenoiser
from .backend import Capabilities
from .base import PerStepBackend
from .torch_backend import PRECISIONS


class CodeContext:
    """The neighbours of a batch of block rows as the fused kernel reads them: ids ``[B, k]``, the
    database's codes ``[P, N, bs, bs]`` and each row's image and block (or, with ``sources``, its
    shifted window: :meth:`ShiftedWindows.token_sources`). ``attention(i)`` is layer i's attention
    over them (what :meth:`BlockUNet.forward_hoisted` calls in place of hoisted keys and values)."""

    def __init__(self, ids: torch.Tensor, codes: torch.Tensor, tables: list[dict[str, torch.Tensor]],
                 scales: list[float], blocks: int,
                 sources: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        from ..kernels.gather_xattn import check_inputs

        images = ids.shape[0]
        per_image = blocks if sources is None else sources[0].shape[0]  # blocks, or windows
        self.ids, self.codes, self.tables, self.scales, self.sources = ids, codes, tables, scales, sources
        self.row_image = torch.arange(images, device=ids.device).repeat_interleave(per_image)
        self.row_block = torch.arange(per_image, device=ids.device).repeat(images)
        probe = torch.empty(len(self.row_image), 1, *tables[0]["k_pos"].shape[1:], dtype=tables[0]["k_pos"].dtype,
                            device=ids.device)
        # ids (and sources) refused before any step
        check_inputs(probe, ids, self.row_image, self.row_block, codes, **tables[0], sources=sources)

    def attention(self, index: int):
        from ..kernels.gather_xattn import gather_xattn

        table, scale = self.tables[index], self.scales[index]
        return lambda q: gather_xattn(q.contiguous(), self.ids, self.row_image, self.row_block, self.codes, **table,
                                      scale=scale, sources=self.sources)


class TritonBackend(PerStepBackend):
    """``model``'s per-step UNet with Triton's fused gather + cross-attention, and the fused sampler step."""

    name = "triton"
    description = ("Triton kernels: neighbour gathering fused with cross-attention over the database's codes "
                   "(xattn models) and the sampler update in one pass")
    #: The Engine runs the sampler update through rissole_trt.kernels.sampler_step; xattn models read codes.
    capabilities = Capabilities(devices=("cuda",), precisions=PRECISIONS, reads_codes=True, fused_step=True)

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        try:
            import triton
        except ImportError:
            return False, "Triton is not installed (pip install '.[gpu]')"
        if not torch.cuda.is_available():  # the kernels still run (slowly) in Triton's interpreter
            return False, (f"torch sees no CUDA device (Triton {triton.__version__} is installed: its kernels run on "
                           "CPU tensors with TRITON_INTERPRET=1)")
        return True, f"Triton {triton.__version__}, {torch.cuda.get_device_name()}"

    def __init__(self, model: RissoleModel, precision: str = "fp32") -> None:
        super().__init__(model, precision)
        if self.device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise BackendUnavailableError("the triton backend needs the model on a CUDA device "
                                          "(or TRITON_INTERPRET=1 to run its kernels on the CPU, slowly)")
        self.unet = self.private_unet()
        self.tables = self.scales = None
        if self.reads_codes:
            codebook = model.autoencoder.codebook.detach().float()
            self.tables = [{name: t.to(self.dtype) for name, t in table.items()}
                           for table in model.unet.xattn_tables(codebook)]
            self.scales = [layer.scale for layer in model.unet._xattn_layers]

    @property
    def reads_codes(self) -> bool:
        """Only an xattn model's network reads the neighbours (through their codes); others get features."""
        return self.model.config.unet.conditioning == "xattn"

    @torch.no_grad()
    def forward_hoisted(self, x: torch.Tensor, cond_feat, time_bias: torch.Tensor,
                        pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(cond_feat, torch.Tensor):
            cond_feat = cond_feat.to(self.dtype)
        eps = self.unet.forward_hoisted(x.to(self.dtype), cond_feat, time_bias.to(self.dtype),
                                        None if pos_bias is None else pos_bias.to(self.dtype))
        return eps.float()

    def code_denoiser(self, cond: torch.Tensor, ids: torch.Tensor, codes: torch.Tensor,
                      windows: ShiftedWindows | None = None) -> BlockDenoiser | WindowedDenoiser:
        """The denoiser over neighbours ``ids`` [B, k] read through the database's ``codes``; ``cond``
        (their blocks [B, P, k*C, bs, bs]) fixes the layout and is not otherwise read. With
        ``windows`` (``overlap="half"``) the rows are the shifted windows, whose tokens the kernel
        looks up across the blocks they straddle."""
        if not self.reads_codes:
            raise InvalidArgumentError("only an xattn model reads its neighbours through their codes")
        if cond.ndim != 5 or ids.ndim != 2 or cond.shape[0] != ids.shape[0]:
            raise InvalidArgumentError(f"cond must be [B, P, ...] and ids [B, k] for the same B, got "
                                       f"{list(cond.shape)} and {list(ids.shape)}")
        ids, codes = ids.to(device=self.device, dtype=torch.int64), codes.to(self.device)
        if windows is None:
            context = CodeContext(ids, codes, self.tables, self.scales, self.model.config.n_blocks)
            return BlockDenoiser(self.model, cond, forward=self.forward_hoisted, condition=lambda _: context)
        context = CodeContext(ids, codes, self.tables, self.scales, self.model.config.n_blocks,
                              sources=windows.token_sources(self.device))
        return windows.denoiser(lambda rows, pos: BlockDenoiser(self.model, rows, pos, forward=self.forward_hoisted,
                                                                condition=lambda _: context), cond)


"""What a CUDA device refuses but a CPU accepts, refused on the CPU too, so CI catches it."""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_INDEXING = (torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.index_select, torch.Tensor.index_select,
             torch.take, torch.gather)


class NoUnsignedIndexing(TorchFunctionMode):
    """Raises where a uint16/32/64 tensor is indexed: torch's CUDA index kernels do not cover unsigned
    types ("index_cuda" not implemented for 'UInt16'); its CPU kernels do."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _INDEXING and args[0].dtype in (torch.uint16, torch.uint32, torch.uint64):
            raise AssertionError(f"{func.__name__} on a {args[0].dtype} tensor: CUDA cannot index it")
        return func(*args, **(kwargs or {}))

"""Half-block shifted windows: sampling that lets each block see the blocks generated beside it.

With ``overlap="none"`` (the reference) every step predicts ε for the P aligned blocks
independently, each from its own position's neighbour blocks, and the samples' block borders join
about as badly as blocks of different similar images do (``benchmarks/diagnose_seams.py``). With
``overlap="half"`` each step also predicts ε on the block-sized windows shifted by half a block
(a window straddling a border sees both sides of it), each conditioned on the neighbours' latents
cropped to the same window, with a position bias that is the mean of the covered blocks' position
embeddings weighted by the overlap; the predictions are blended per latent pixel with weights that
fall off towards each window's edges (MultiDiffusion's averaging of overlapping windows). The
model is unchanged; a step costs ``(2 bf - 1)^2 / bf^2`` times the aligned one (9/4 for 2x2 blocks).

The fast paths take the windows too: a :class:`WindowedDenoiser` keeps its per-batch tensors in its
row denoiser, so a whole-loop CUDA graph captures the crop and blend inside every step, and
:meth:`ShiftedWindows.token_sources` tells the Triton kernel that reads the neighbours' codes where
each window's tokens lie in the blocks it straddles.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import ops
from .errors import InvalidArgumentError

__all__ = ["OVERLAPS", "ShiftedWindows", "WindowedDenoiser", "check_overlap", "rows_per_image"]

#: Sampling overlaps: ``none`` (the reference's aligned blocks) or ``half`` (half-block shifted windows too).
OVERLAPS = ("none", "half")


def check_overlap(overlap: str, block_factor: int, block_size: int) -> None:
    """InvalidArgumentError for an unknown overlap, or ``half`` on a model it cannot shift."""
    if overlap not in OVERLAPS:
        raise InvalidArgumentError(f"unknown overlap {overlap!r}; choose one of {', '.join(OVERLAPS)}")
    if overlap == "half":
        if block_factor < 2:
            raise InvalidArgumentError("overlap='half' needs a model of several blocks (block_factor >= 2)")
        if block_size % 2:
            raise InvalidArgumentError(f"overlap='half' needs an even block size, the model's is {block_size}")


class ShiftedWindows:
    """The windows of a ``block_factor`` x ``block_factor`` grid of ``block_size`` blocks, stride half a block."""

    def __init__(self, block_factor: int, block_size: int) -> None:
        check_overlap("half", block_factor, block_size)
        self.bf, self.bs = block_factor, block_size
        side = block_factor * block_size
        stride = block_size // 2
        self.offsets = [(y, x) for y in range(0, side - block_size + 1, stride)
                        for x in range(0, side - block_size + 1, stride)]
        ramp = torch.minimum(torch.arange(block_size) + 0.5, block_size - 0.5 - torch.arange(block_size))
        self.weight = torch.outer(ramp, ramp) / (block_size / 2) ** 2  # 1 at the centre, small at the edges
        total = torch.zeros(side, side)
        for y, x in self.offsets:
            total[y:y + block_size, x:x + block_size] += self.weight
        self.total = total

    def position_weights(self) -> torch.Tensor:
        """``[W, P]``: the share of each window that lies in each block (rows of one-hots for aligned ones)."""
        bs = self.bs
        out = torch.zeros(len(self.offsets), self.bf * self.bf)
        for w, (y, x) in enumerate(self.offsets):
            for by in range(self.bf):
                for bx in range(self.bf):
                    rows = max(0, min(y + bs, (by + 1) * bs) - max(y, by * bs))
                    cols = max(0, min(x + bs, (bx + 1) * bs) - max(x, bx * bs))
                    out[w, by * self.bf + bx] = rows * cols / bs ** 2
        return out

    def crop(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, C, H, W]`` -> the windows ``[B * W, C, bs, bs]`` (image-major)."""
        bs = self.bs
        return torch.stack([z[:, :, y:y + bs, x:x + bs] for y, x in self.offsets], 1).flatten(0, 1)

    def blend(self, windows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`crop` for per-window predictions: the weighted mean per latent pixel."""
        bs, count = self.bs, windows.shape[0] // len(self.offsets)
        windows = windows.view(count, len(self.offsets), *windows.shape[1:])
        side = self.bf * bs
        out = windows.new_zeros(count, windows.shape[2], side, side)
        weight = self.weight.to(windows)
        for w, (y, x) in enumerate(self.offsets):
            out[:, :, y:y + bs, x:x + bs] += windows[:, w] * weight
        return out / self.total.to(windows)

    def token_sources(self, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Where each window's pixels lie in the block grid: ``(block, in-block position)``, int64
        ``[W, bs²]`` each, row-major in the window. Token ``(j, s)`` of window w's neighbour context is
        position ``pos[w, s]`` of block ``block[w, s]`` of neighbour j: what a kernel reading the
        neighbours' codes looks up instead of the cropped latents (for the aligned windows, the identity)."""
        bs = self.bs
        within = torch.arange(bs * bs)
        ys = torch.tensor([y for y, _ in self.offsets])[:, None] + within // bs
        xs = torch.tensor([x for _, x in self.offsets])[:, None] + within % bs
        block = (ys // bs) * self.bf + xs // bs
        return block.to(device), ((ys % bs) * bs + xs % bs).to(device)

    def denoiser(self, make_rows: Callable[[torch.Tensor, torch.Tensor], Callable], cond_blocks: torch.Tensor):
        """A :class:`WindowedDenoiser` over blocks ``[B, P, C, bs, bs]`` from a row denoiser
        ``make_rows(cond [B*W, k*C, bs, bs], position weights [B*W, P])`` of the windows."""
        count = cond_blocks.shape[0]
        # On the batch's device once, not at every step's blend
        self.weight, self.total = self.weight.to(cond_blocks.device), self.total.to(cond_blocks.device)
        cond = self.crop(ops.merge_blocks(cond_blocks, self.bf))
        positions = self.position_weights().to(cond_blocks.device).repeat(count, 1)
        return WindowedDenoiser(self, make_rows(cond, positions))


class WindowedDenoiser:
    """``eps_fn(x_t, t)`` over blocks ``[B, P, C, bs, bs]``: every step crops x_t to the windows, runs
    the row denoiser ``inner`` over them (``[B*W, C, bs, bs]``) and blends its ε back. Only ``inner``
    holds per-batch tensors (a whole-loop capture copies and refreshes those)."""

    def __init__(self, windows: ShiftedWindows, inner: Callable) -> None:
        self.windows, self.inner = windows, inner

    def with_inner(self, inner: Callable) -> "WindowedDenoiser":
        """The same windows over another row denoiser (e.g. a static copy of this one's)."""
        return WindowedDenoiser(self.windows, inner)

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        windows = self.windows
        if isinstance(t, torch.Tensor) and t.ndim == 1:  # one timestep per image -> per window
            t = t.repeat_interleave(len(windows.offsets))
        eps = self.inner(windows.crop(ops.merge_blocks(x_t, windows.bf)), t)
        return ops.split_blocks(windows.blend(eps), windows.bf)


def rows_per_image(block_factor: int, block_size: int, overlap: str) -> int:
    """Denoiser rows per image and step: the P aligned blocks, or with ``half`` every window
    (stride half a block: 2 bf - 1 positions per axis)."""
    check_overlap(overlap, block_factor, block_size)
    return block_factor ** 2 if overlap == "none" else (2 * block_factor - 1) ** 2

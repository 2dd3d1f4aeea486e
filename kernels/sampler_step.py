"""The sampler update fused into one pass over all rows: DDPM, DDIM and DPM-Solver++(2M).

Every sampler step is linear in its inputs (:class:`rissole_trt.diffusion.samplers.LinearStep`)::

    x'  = c_x·x + c_eps·ε + c_prev·x0_prev + c_noise·z
    x0  = x0_x·x + x0_eps·ε                     (kept for the next step by multistep samplers)

Done as torch ops that is four or five passes over the rows and a temporary per term; the kernel
reads x, ε, z and x0_prev once, computes in float32 and writes x' and x0 once. The noise z is drawn
per image by torch's generators before the call, exactly as the unfused loop draws it, so a seed
keeps its meaning. x0 is written in place over x0_prev (each element is read before it is written).

:func:`sampler_step_reference` is the specification, in plain torch; :class:`FusedSteps` runs a
whole :class:`rissole_trt.diffusion.samplers.Sampler` through the kernel.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # kernels sit below diffusion: its step coefficients are read by attribute only
    from rissole_trt.diffusion.samplers import LinearStep, Sampler

__all__ = ["sampler_step", "sampler_step_reference", "FusedSteps"]


def _check(x, eps, noise, prev, step: LinearStep) -> None:
    for name, t in (("eps", eps), ("noise", noise), ("prev", prev)):
        if t is not None and (t.shape != x.shape or t.dtype != x.dtype or t.device != x.device):
            raise ValueError(f"{name} must be like x ({x.dtype} {list(x.shape)} on {x.device}), "
                             f"got {t.dtype} {list(t.shape)} on {t.device}")
    if step.noise != 0.0 and noise is None:
        raise ValueError("this step draws noise: give noise")
    if step.prev != 0.0 and prev is None:
        raise ValueError("this step uses the previous step's x0: give prev")


def sampler_step_reference(x, eps, noise, prev, step: LinearStep) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x', x0 or None) of ``step`` in plain torch, in float32 arithmetic."""
    _check(x, eps, noise, prev, step)
    xf, ef = x.float(), eps.float()
    out = step.x * xf + step.eps * ef
    if step.prev != 0.0:
        out = out + step.prev * prev.float()
    if step.noise != 0.0:
        out = out + step.noise * noise.float()
    x0 = (step.x0_x * xf + step.x0_eps * ef).to(x.dtype) if step.keeps_x0 else None
    return out.to(x.dtype), x0


try:
    import triton
    import triton.language as tl
except ImportError:  # the reference still works; sampler_step says what is missing
    triton = None

if triton is not None:

    @triton.jit
    def _sampler_step_kernel(x_ptr, eps_ptr, noise_ptr, prev_ptr, out_ptr, x0_ptr, n_elements,
                             c_x, c_eps, c_prev, c_noise, x0_x, x0_eps,
                             HAS_NOISE: tl.constexpr, HAS_PREV: tl.constexpr, KEEPS_X0: tl.constexpr,
                             BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elements
        x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
        eps = tl.load(eps_ptr + offs, mask=mask).to(tl.float32)
        out = c_x * x + c_eps * eps
        if HAS_PREV:
            out += c_prev * tl.load(prev_ptr + offs, mask=mask).to(tl.float32)
        if HAS_NOISE:
            out += c_noise * tl.load(noise_ptr + offs, mask=mask).to(tl.float32)
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)
        if KEEPS_X0:  # x0_ptr may alias prev_ptr: this element's prev was read above
            tl.store(x0_ptr + offs, (x0_x * x + x0_eps * eps).to(x0_ptr.dtype.element_ty), mask=mask)


def sampler_step(x, eps, noise, prev, step: LinearStep, x0_out: torch.Tensor | None = None,
                 block: int = 1024) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused kernel: :func:`sampler_step_reference`'s result in one pass. ``x0_out`` (like x;
    may be ``prev`` itself) receives x0 when the step keeps it. CUDA tensors, or CPU tensors under
    ``TRITON_INTERPRET=1``."""
    if triton is None:
        raise RuntimeError("sampler_step needs Triton (pip install triton); sampler_step_reference runs without it")
    _check(x, eps, noise, prev, step)
    if x0_out is not None and (x0_out.shape != x.shape or x0_out.dtype != x.dtype or not x0_out.is_contiguous()):
        raise ValueError("x0_out must be a contiguous tensor like x")
    x, eps = x.contiguous(), eps.contiguous()
    has_noise, has_prev = step.noise != 0.0, step.prev != 0.0
    noise = noise.contiguous() if has_noise else x
    prev = prev.contiguous() if has_prev else x
    out = torch.empty_like(x)
    x0 = None
    if step.keeps_x0:
        x0 = torch.empty_like(x) if x0_out is None else x0_out
    n = x.numel()
    if n:
        _sampler_step_kernel[(triton.cdiv(n, block),)](
            x, eps, noise, prev, out, out if x0 is None else x0, n,
            step.x, step.eps, step.prev, step.noise, step.x0_x or 0.0, step.x0_eps or 0.0,
            HAS_NOISE=has_noise, HAS_PREV=has_prev, KEEPS_X0=x0 is not None, BLOCK=block)
    return out, x0


class FusedSteps:
    """``step(i, x, eps, noise) -> x'`` of ``sampler`` through the kernel, holding the multistep
    history in one buffer; the drop-in for :meth:`Sampler.step` in :func:`rissole_trt.diffusion.sample`."""

    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler
        self.history: torch.Tensor | None = None

    def __call__(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        step = self.sampler.linear_step(i)
        if i == 0:
            self.history = None
        if step.keeps_x0 and (self.history is None or self.history.shape != x.shape):
            self.history = torch.empty_like(x, memory_format=torch.contiguous_format)
        out, _ = sampler_step(x, eps, noise, self.history if step.prev != 0.0 else None, step,
                              x0_out=self.history if step.keeps_x0 else None)
        return out

"""The sampling loop shared by every sampler, and where its noise comes from."""

from __future__ import annotations

import math
from typing import Callable, Sequence, Union

import torch

from ..errors import InvalidArgumentError, InvalidTypeError
from .samplers import DEFAULT_SPACING, Sampler, make_sampler
from .schedules import NoiseSchedule, as_int

__all__ = ["EpsFn", "GeneratorArg", "draw_noise", "sample", "clip_x0"]

#: ``eps_fn(x_t, t) -> ε``: the denoiser; ``t`` is the integer timestep (0..T-1) shared by all rows.
EpsFn = Callable[[torch.Tensor, int], torch.Tensor]

#: One generator for the whole batch, one per row (dim 0), or None for torch's global generator.
GeneratorArg = Union[None, torch.Generator, Sequence[torch.Generator]]


def _to(x: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return x if device is None else x.to(device)


def draw_noise(
    shape: Sequence[int],
    generator: GeneratorArg,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A standard normal tensor of ``shape``.

    With a sequence of generators, row r (index r of dim 0) comes from ``generator[r]`` alone, so
    a row's values do not depend on the batch it is in. Values are drawn on each generator's
    device and then moved to ``device`` (when given).
    """
    shape = tuple(shape)
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    if isinstance(generator, torch.Generator):
        return _to(torch.randn(shape, generator=generator, dtype=dtype, device=generator.device), device)
    generators = list(generator)
    if not all(isinstance(g, torch.Generator) for g in generators):
        raise InvalidTypeError("generator must be None, a torch.Generator or a sequence of torch.Generator")
    if len(shape) == 0 or len(generators) != shape[0]:
        raise InvalidArgumentError(f"got {len(generators)} per-row generators for a batch of shape {shape}")
    rows = [_to(torch.randn(shape[1:], generator=g, dtype=dtype, device=g.device), device) for g in generators]
    return torch.stack(rows)


def _ready_sampler(sampler: str | Sampler, schedule: NoiseSchedule, steps: int | None, eta: float | None,
                   spacing: str) -> Sampler:
    """``sampler`` made from its name, or a ready one checked against the settings and the schedule."""
    if isinstance(sampler, Sampler):
        if steps is not None or eta is not None or spacing != DEFAULT_SPACING:
            raise InvalidArgumentError("steps, eta and spacing are fixed by a ready Sampler; pass them to make_sampler instead")
        if sampler.schedule != schedule:
            raise InvalidArgumentError(f"the sampler was built for {sampler.schedule!r}, not {schedule!r}")
        return sampler
    return make_sampler(sampler, schedule, steps, eta=eta, spacing=spacing)


def _initial_noise(noise: torch.Tensor | None, shape: tuple[int, ...], generator: GeneratorArg,
                   dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """x_T: the given ``noise`` (checked against ``shape``) or drawn from ``generator``."""
    if noise is None:
        return draw_noise(shape, generator, dtype=dtype, device=device)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise InvalidArgumentError(f"initial noise has shape {got}, expected {shape}")
    return noise


def _step_noise(i: int, x: torch.Tensor, noise_fn: Callable[[int], torch.Tensor] | None,
                generator: GeneratorArg) -> torch.Tensor:
    """Step i's noise, shaped like ``x``: from ``noise_fn`` (checked) or drawn from ``generator``."""
    if noise_fn is None:
        return draw_noise(tuple(x.shape), generator, dtype=x.dtype, device=x.device)
    step_noise = noise_fn(i)
    if not isinstance(step_noise, torch.Tensor) or step_noise.shape != x.shape:
        got = tuple(step_noise.shape) if isinstance(step_noise, torch.Tensor) else type(step_noise).__name__
        raise InvalidArgumentError(f"noise_fn({i}) returned {got}, expected a tensor of shape {tuple(x.shape)}")
    return step_noise.to(device=x.device, dtype=x.dtype)


def sample(
    eps_fn: EpsFn,
    shape: Sequence[int],
    schedule: NoiseSchedule,
    sampler: str | Sampler = "ddpm",
    steps: int | None = None,
    *,
    eta: float | None = None,
    spacing: str = DEFAULT_SPACING,
    generator: GeneratorArg = None,
    noise: torch.Tensor | None = None,
    noise_fn: Callable[[int], torch.Tensor] | None = None,
    progress: Callable[[int, int], None] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    fused_step: bool = False,
) -> torch.Tensor:
    """Run a sampler from pure noise to a clean sample of ``shape``.

    Args:
        eps_fn: the denoiser, called once per step as ``eps_fn(x_t, t)`` with t from
            ``sampler.timesteps`` (see :func:`timesteps_for`); must return a tensor shaped like x_t.
            Gradients are not disabled here: call under ``torch.inference_mode()`` as needed.
        shape: the sample's shape; dim 0 is the batch.
        schedule: the noise schedule the denoiser was trained with.
        sampler: a name from :data:`SAMPLERS` or a ready :class:`Sampler` (then ``steps``, ``eta``
            and ``spacing`` must be left at their defaults).
        steps, eta, spacing: see :func:`make_sampler` and :func:`timesteps_for`.
        generator: source of the initial noise and of the per-step noise of stochastic samplers
            (None: torch's global generator; a sequence: one generator per row, which makes every
            row independent of the batch size). Noise is drawn in order: x_T first, then one
            tensor per step that needs it. With the global generator seeded as the reference seeds
            it, ``ddpm`` draws exactly what the reference's ``p_sample_loop`` draws.
        noise: the initial x_T, overriding ``generator`` for it; fixes dtype and device.
        noise_fn: ``noise_fn(i)`` returns step i's noise (shaped like x), overriding ``generator``
            for it; called only for steps that need noise (``sampler.needs_noise(i)``).
        progress: called as ``progress(done, total)`` after each step.
        dtype, device: of the sample when ``noise`` is not given.
        fused_step: run every update as one Triton kernel (:mod:`rissole_trt.kernels.sampler_step`;
            CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``) instead of torch ops. The
            noise is drawn the same way, so the result is the same up to float32 rounding.
    """
    sampler = _ready_sampler(sampler, schedule, steps, eta, spacing)
    shape = tuple(as_int(s, "shape entry") for s in shape)
    if not shape or any(s <= 0 for s in shape):
        raise InvalidArgumentError(f"shape must be non-empty with positive sizes, got {shape}")
    x = _initial_noise(noise, shape, generator, dtype, device)

    n = sampler.num_steps
    update = sampler.step
    if fused_step:
        from ..kernels.sampler_step import FusedSteps

        update = FusedSteps(sampler)
    for i, t in enumerate(sampler.timesteps):
        eps = eps_fn(x, t)
        step_noise = _step_noise(i, x, noise_fn, generator) if sampler.needs_noise(i) else None
        x = update(i, x, eps, step_noise)
        if progress is not None:
            progress(i + 1, n)
    return x


def clip_x0(eps_fn: EpsFn, schedule: NoiseSchedule, low: torch.Tensor, high: torch.Tensor) -> EpsFn:
    """``eps_fn`` whose implied clean sample ``x0 = (x_t − √(1−ᾱ_t)·ε)/√ᾱ_t`` is clamped to
    ``[low, high]`` (broadcast against x_t), returned as the ε that gives that x0.

    Expressed through ε, the clamp works with every sampler. It keeps a sample inside the data's
    range where an imperfect denoiser would push it out, which for a VQ latent means off the
    codebook (the decoder then snaps it to arbitrary codes).
    """
    alpha_bars = schedule.alpha_bars

    def clipped(x_t: torch.Tensor, t) -> torch.Tensor:
        eps = eps_fn(x_t, t)
        if isinstance(t, torch.Tensor) and t.ndim == 1:  # one timestep per row
            a = alpha_bars.to(x_t.device, x_t.dtype)[t].view(-1, *([1] * (x_t.ndim - 1)))
            root_a, root_1ma = a.sqrt(), (1 - a).sqrt()
        else:  # Python constants: no host-to-device copy, so the loop can be captured as a CUDA graph
            a = schedule.alpha_bar(int(t))
            root_a, root_1ma = math.sqrt(a), math.sqrt(1 - a)
        x0 = ((x_t - root_1ma * eps) / root_a).clamp(low, high)
        return (x_t - root_a * x0) / root_1ma

    return clipped

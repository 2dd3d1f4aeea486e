"""Noise schedules and samplers, independent of any model.

A sampler only needs ``eps_fn(x_t, t) -> ε``. Timesteps follow the authors' code: t = 0..T-1,
step t uses ``betas[t]``, ᾱ_t = ∏_{s≤t}(1 − β_s).

Example::

    schedule = NoiseSchedule("linear", 1000, 1e-4, 0.02)
    sampler = make_sampler("ddim", schedule, steps=50)  # sampler.timesteps: the t eps_fn will see
    x0 = sample(eps_fn, (4, 10, 8, 8), schedule, sampler, generator=torch.Generator().manual_seed(0))
"""

from .samplers import (
    DEFAULT_SPACING,
    DEFAULT_STEPS,
    SAMPLERS,
    SPACINGS,
    DDIMSampler,
    DDPMSampler,
    DPMSolverPP2MSampler,
    Sampler,
    ddpm_step,
    make_sampler,
    timesteps_for,
)
from .sampling import EpsFn, GeneratorArg, clip_x0, draw_noise, sample
from .schedules import SCHEDULES, NoiseSchedule, make_betas

__all__ = [
    "clip_x0",
    "SCHEDULES",
    "SAMPLERS",
    "SPACINGS",
    "DEFAULT_SPACING",
    "DEFAULT_STEPS",
    "NoiseSchedule",
    "make_betas",
    "timesteps_for",
    "ddpm_step",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverPP2MSampler",
    "make_sampler",
    "sample",
    "draw_noise",
    "EpsFn",
    "GeneratorArg",
]

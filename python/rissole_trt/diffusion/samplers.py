"""Samplers: DDPM (ancestral, exactly the reference's update), DDIM and DPM-Solver++(2M).

A sampler is pure tensor math over a :class:`NoiseSchedule`. Like a diffusers scheduler it has a
fixed list of ``timesteps`` (the integer t, 0..T-1, at which the denoiser is evaluated, in the
order it is evaluated) and a ``step(i, x, eps, noise)`` that turns step ``i``'s ε prediction into
the next sample. The last step always returns the clean-data estimate (ᾱ = 1).

Knowing ``timesteps`` up front lets a caller precompute everything that depends only on t (the
UNet's time embedding) for exactly those values.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from ..errors import InvalidArgumentError, InvalidTypeError, OutOfRangeError
from .schedules import NoiseSchedule, as_int

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "DEFAULT_SPACING",
    "DEFAULT_STEPS",
    "timesteps_for",
    "ddpm_step",
    "LinearStep",
    "Sampler",
    "DDPMSampler",
    "DDIMSampler",
    "DPMSolverPP2MSampler",
    "make_sampler",
]

#: Sampler names accepted by :func:`make_sampler` and :func:`rissole_trt.diffusion.sample`.
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpmpp_2m")

#: Timestep spacings for samplers that skip steps (see :func:`timesteps_for`).
SPACINGS: tuple[str, ...] = ("trailing", "linspace", "leading")
DEFAULT_SPACING = "trailing"

#: Steps used when ``steps`` is None; ``None`` means all T steps.
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpmpp_2m": 20}


def _check_sampler_name(sampler: str) -> None:
    if sampler not in SAMPLERS:
        raise InvalidArgumentError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")


def timesteps_for(sampler: str, steps: int | None, n_steps: int, spacing: str = DEFAULT_SPACING) -> list[int]:
    """The timesteps (descending, each in 0..T-1) at which ``sampler`` evaluates the denoiser.

    ``steps=None`` takes the sampler's default (:data:`DEFAULT_STEPS`, capped at T). ``ddpm``
    always uses all T steps. For the others, with n = steps:

    * ``trailing`` (default): ``round(T − i·T/n) − 1`` for i = 0..n−1: starts at T−1 like DDPM
      (where x_T ~ N(0, I) holds best) and ends at T/n − 1, from which the last step jumps to
      clean data. Ending there, rather than at t = 0, keeps DPM-Solver++'s last log-SNR interval
      comparable to the others (Lin et al. 2024 recommend it for DDIM too);
    * ``linspace``: ``round(linspace(T−1, 0, n))``: both ends of the schedule;
    * ``leading``: ``(n−1−i)·(T // n)``: the DDIM paper's choice; ends at 0 but starts below T−1
      when n does not divide T.

    With n = T every spacing gives T−1, ..., 0.
    """
    _check_sampler_name(sampler)
    if spacing not in SPACINGS:
        raise InvalidArgumentError(f"unknown timestep spacing {spacing!r}; valid spacings: {', '.join(SPACINGS)}")
    n_steps = as_int(n_steps, "n_steps")
    if n_steps < 1:
        raise InvalidArgumentError(f"the schedule's number of steps must be positive, got {n_steps}")
    if steps is None:
        default = DEFAULT_STEPS[sampler]
        steps = n_steps if default is None else min(default, n_steps)
    steps = as_int(steps, "steps")
    if steps <= 0:
        raise InvalidArgumentError(f"steps must be positive, got {steps}")
    if steps > n_steps:
        raise InvalidArgumentError(f"steps={steps} is more than the schedule's {n_steps} timesteps")
    if sampler == "ddpm" and steps != n_steps:
        raise InvalidArgumentError(
            f"ddpm samples with all {n_steps} timesteps (got steps={steps}); use 'ddim' or 'dpmpp_2m' for fewer steps"
        )
    if steps == n_steps:
        return list(range(n_steps - 1, -1, -1))
    if spacing == "linspace":
        ts = torch.linspace(n_steps - 1, 0, steps, dtype=torch.float64).round()
    elif spacing == "leading":
        ts = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (n_steps // steps)
    else:
        ts = (n_steps - torch.arange(steps, dtype=torch.float64) * (n_steps / steps)).round() - 1
    out = [int(t) for t in ts.tolist()]
    # Spacing >= 1 between consecutive values keeps them distinct after rounding; check anyway.
    assert all(a > b for a, b in zip(out, out[1:])), out
    return out


def _ddpm_coefs(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """float64 (1/√α_t, β_t/√(1−ᾱ_t), σ_t) of the DDPM step at t."""
    beta, alpha_bar = schedule.beta(t), schedule.alpha_bar(t)
    return 1.0 / math.sqrt(1.0 - beta), beta / math.sqrt(1.0 - alpha_bar), math.sqrt(schedule.posterior_var(t))


def _check_like(name: str, value: torch.Tensor, x: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise InvalidTypeError(f"{name} must be a tensor, got {type(value).__name__}")
    if value.shape != x.shape:
        raise InvalidArgumentError(f"{name} has shape {tuple(value.shape)}, expected x's shape {tuple(x.shape)}")


def ddpm_step(
    schedule: NoiseSchedule,
    x: torch.Tensor,
    eps: torch.Tensor,
    t: int | torch.Tensor,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ancestral DDPM step x_t → x_{t-1}, the reference's ``p_sample``.

    ``x_{t-1} = (x_t − β_t·ε/√(1−ᾱ_t))/√α_t + √σ²_t·noise``,
    σ²_t = β_t(1−ᾱ_{t−1})/(1−ᾱ_t) the posterior variance.
    ``t`` is one timestep for all rows or a 1-D integer tensor with one per row (dim 0 of x).
    At t = 0 the mean is returned (σ²_0 = 0); ``noise`` may then be None.
    """
    _check_like("eps", eps, x)
    if noise is not None:
        _check_like("noise", noise, x)
    if isinstance(t, torch.Tensor) and t.dim() > 0:
        if t.dim() != 1 or t.shape[0] != x.shape[0] or t.dtype.is_floating_point:
            raise InvalidArgumentError(
                f"per-row t must be a 1-D integer tensor of length {x.shape[0]}, got {t.dtype} {tuple(t.shape)}"
            )
        rows = [schedule.check_timestep(r) for r in t.tolist()]
        if noise is None and any(rows):
            raise InvalidArgumentError("noise is required for the DDPM step when any t > 0")
        # One float64 coefficient triple per row, cast to x's dtype and broadcast over its rows.
        coefs = torch.tensor([_ddpm_coefs(schedule, r) for r in rows], dtype=torch.float64)
        coefs = coefs.to(device=x.device, dtype=x.dtype).T.reshape(3, -1, *([1] * (x.dim() - 1)))
        scale, eps_coef, sigma = coefs
        mean = (x - eps_coef * eps) * scale
        return mean if noise is None else mean + sigma * noise
    t = schedule.check_timestep(t)
    scale, eps_coef, sigma = _ddpm_coefs(schedule, t)
    mean = (x - eps_coef * eps) * scale
    if t == 0:  # σ_0 = 0: the reference returns the mean and draws no noise
        return mean
    if noise is None:
        raise InvalidArgumentError(f"noise is required for the DDPM step at t={t} > 0")
    return mean + sigma * noise


@dataclass(frozen=True)
class LinearStep:
    """Every sampler step here is linear in its inputs: ``x' = x·x + eps·ε + prev·x0_prev + noise·z``,
    and a multistep sampler also keeps this step's clean-data estimate ``x0 = x0_x·x + x0_eps·ε`` as
    the next step's ``x0_prev``. Coefficients in float64; what a fused kernel computes in one pass
    (:mod:`rissole_trt.kernels.sampler_step`)."""

    x: float
    eps: float
    prev: float = 0.0
    noise: float = 0.0
    x0_x: float | None = None  # None: this step keeps no history
    x0_eps: float | None = None

    @property
    def keeps_x0(self) -> bool:
        return self.x0_x is not None


class Sampler(ABC):
    """Base class: a schedule, the timesteps to evaluate, and the update rule.

    Use: for ``i, t in enumerate(sampler.timesteps)``: ``eps = eps_fn(x, t)``;
    ``x = sampler.step(i, x, eps, noise)``, with ``noise`` a standard normal tensor like x when
    ``sampler.needs_noise(i)`` (else None). Steps must be taken in order starting at 0
    (multistep samplers keep history; step 0 resets it).
    """

    name: ClassVar[str]

    def __init__(self, schedule: NoiseSchedule, timesteps: Sequence[int]) -> None:
        if not isinstance(schedule, NoiseSchedule):
            raise InvalidTypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self._timesteps = tuple(schedule.check_timestep(t) for t in timesteps)
        self._next = 0

    @property
    def timesteps(self) -> tuple[int, ...]:
        """The t values (0..T-1) at which the denoiser is evaluated, in evaluation order."""
        return self._timesteps

    @property
    def num_steps(self) -> int:
        return len(self._timesteps)

    def needs_noise(self, i: int) -> bool:
        """Whether step ``i`` consumes a standard normal noise tensor."""
        return False

    def step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Advance from ``timesteps[i]`` to the next timestep (clean data after the last)."""
        i = as_int(i, "step index")
        if not 0 <= i < self.num_steps:
            raise OutOfRangeError(f"step index {i} out of range 0..{self.num_steps - 1}")
        if i != 0 and i != self._next:
            raise RuntimeError(f"{self.name}: steps must be taken in order; expected step {self._next}, got {i}")
        _check_like("eps", eps, x)
        if self.needs_noise(i):
            if noise is None:
                raise InvalidArgumentError(f"{self.name} step {i} (t={self._timesteps[i]}) needs noise")
            _check_like("noise", noise, x)
        out = self._step(i, x, eps, noise)
        self._next = i + 1
        return out

    @abstractmethod
    def _step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor: ...

    def linear_step(self, i: int) -> LinearStep:
        """Step ``i`` as coefficients of :class:`LinearStep` (the same update as :meth:`step`, up to
        floating-point reordering); ``prev`` refers to step ``i − 1``'s kept x0."""
        i = as_int(i, "step index")
        if not 0 <= i < self.num_steps:
            raise OutOfRangeError(f"step index {i} out of range 0..{self.num_steps - 1}")
        return self._linear_step(i)

    @abstractmethod
    def _linear_step(self, i: int) -> LinearStep: ...

    def _alpha_bar_next(self, i: int) -> float:
        """ᾱ at the timestep step ``i`` moves to (1 after the last step)."""
        return self.schedule.alpha_bar(self._timesteps[i + 1] if i + 1 < self.num_steps else -1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(schedule={self.schedule!r}, steps={self.num_steps})"


class DDPMSampler(Sampler):
    """Ancestral DDPM over all T steps (:func:`ddpm_step`), as the reference samples."""

    name = "ddpm"

    def __init__(self, schedule: NoiseSchedule) -> None:
        super().__init__(schedule, timesteps_for("ddpm", None, schedule.n_steps))

    def needs_noise(self, i: int) -> bool:
        return self._timesteps[i] > 0

    def _step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        return ddpm_step(self.schedule, x, eps, self._timesteps[i], noise)

    def _linear_step(self, i: int) -> LinearStep:
        scale, eps_coef, sigma = _ddpm_coefs(self.schedule, self._timesteps[i])
        return LinearStep(x=scale, eps=-scale * eps_coef, noise=sigma if self.needs_noise(i) else 0.0)


class DDIMSampler(Sampler):
    """DDIM (Song et al. 2021, eq. 12) from t to the next timestep t' (ᾱ' = 1 after the last):

    ``x0 = (x − √(1−ᾱ)ε)/√ᾱ``; ``σ = η·√((1−ᾱ')/(1−ᾱ))·√(1−ᾱ/ᾱ')``;
    ``x' = √ᾱ'·x0 + √(1−ᾱ'−σ²)·ε + σ·z``.
    η = 0 is deterministic; η = 1 with all T steps is exactly ancestral DDPM.
    """

    name = "ddim"

    def __init__(
        self,
        schedule: NoiseSchedule,
        steps: int | None = None,
        eta: float = 0.0,
        spacing: str = DEFAULT_SPACING,
    ) -> None:
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0.0 <= eta <= 1.0:
            raise InvalidArgumentError(f"eta must be a number in [0, 1], got {eta!r}")
        super().__init__(schedule, timesteps_for("ddim", steps, schedule.n_steps, spacing))
        self.eta = float(eta)
        # Per step: x' = a·x + b·ε + σ·z, coefficients in float64.
        self._coefs: list[tuple[float, float, float]] = []
        for i, t in enumerate(self._timesteps):
            ab, ab_next = schedule.alpha_bar(t), self._alpha_bar_next(i)
            sigma = self.eta * math.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
            direction = math.sqrt(max(0.0, 1 - ab_next - sigma**2))
            a = math.sqrt(ab_next / ab)
            b = direction - math.sqrt(ab_next) * math.sqrt(1 - ab) / math.sqrt(ab)
            self._coefs.append((a, b, sigma))

    def needs_noise(self, i: int) -> bool:
        return self._coefs[i][2] > 0.0

    def _step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        a, b, sigma = self._coefs[i]
        out = a * x + b * eps
        return out + sigma * noise if sigma > 0.0 else out

    def _linear_step(self, i: int) -> LinearStep:
        a, b, sigma = self._coefs[i]
        return LinearStep(x=a, eps=b, noise=sigma)

    def __repr__(self) -> str:
        return f"DDIMSampler(schedule={self.schedule!r}, steps={self.num_steps}, eta={self.eta})"


class DPMSolverPP2MSampler(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), data prediction, deterministic.

    With α = √ᾱ, σ = √(1−ᾱ), λ = log(α/σ), x_θ = (x − σε)/α and h_i = λ_{i+1} − λ_i:
    ``x_{i+1} = (σ_{i+1}/σ_i)·x_i − α_{i+1}(e^{−h_i} − 1)·D_i`` where D_0 = x_θ,0 (first order, no
    history) and ``D_i = (1 + 1/(2r_i))·x_θ,i − 1/(2r_i)·x_θ,i−1`` with r_i = h_{i−1}/h_i.
    The final step goes to σ = 0 (λ = ∞), where the update is first order and returns x_θ.
    """

    name = "dpmpp_2m"

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, spacing: str = DEFAULT_SPACING) -> None:
        super().__init__(schedule, timesteps_for("dpmpp_2m", steps, schedule.n_steps, spacing))
        ab = [schedule.alpha_bar(t) for t in self._timesteps]
        self._alpha = [math.sqrt(a) for a in ab]
        self._sigma = [math.sqrt(1 - a) for a in ab]
        self._lambda = [math.log(a) - math.log(s) for a, s in zip(self._alpha, self._sigma)]
        self._prev_x0: torch.Tensor | None = None

    def _step(self, i: int, x: torch.Tensor, eps: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        x0 = (x - self._sigma[i] * eps) / self._alpha[i]
        if i == 0:
            self._prev_x0 = None
        if i == self.num_steps - 1:
            return x0
        h = self._lambda[i + 1] - self._lambda[i]
        if self._prev_x0 is None:
            d = x0
        else:
            r = (self._lambda[i] - self._lambda[i - 1]) / h
            d = (1 + 0.5 / r) * x0 - (0.5 / r) * self._prev_x0
        self._prev_x0 = x0
        # −α(e^{−h} − 1) = −α·expm1(−h): expm1 keeps precision for small h.
        return (self._sigma[i + 1] / self._sigma[i]) * x - (self._alpha[i + 1] * math.expm1(-h)) * d

    def _linear_step(self, i: int) -> LinearStep:
        x0_x, x0_eps = 1.0 / self._alpha[i], -self._sigma[i] / self._alpha[i]
        if i == self.num_steps - 1:
            return LinearStep(x=x0_x, eps=x0_eps)
        h = self._lambda[i + 1] - self._lambda[i]
        if i == 0:
            new, old = 1.0, 0.0  # first order: D = x0
        else:
            r = (self._lambda[i] - self._lambda[i - 1]) / h
            new, old = 1 + 0.5 / r, 0.5 / r
        m = -self._alpha[i + 1] * math.expm1(-h)
        return LinearStep(x=self._sigma[i + 1] / self._sigma[i] + m * new * x0_x, eps=m * new * x0_eps,
                          prev=-m * old, x0_x=x0_x, x0_eps=x0_eps)


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    steps: int | None = None,
    *,
    eta: float | None = None,
    spacing: str = DEFAULT_SPACING,
) -> Sampler:
    """Build the sampler called ``name`` (one of :data:`SAMPLERS`).

    ``eta`` applies to ``ddim`` only (default 0); passing it to another sampler is an error.
    """
    _check_sampler_name(name)
    if eta is not None and name != "ddim":
        raise InvalidArgumentError(f"eta applies to the 'ddim' sampler only, not {name!r}")
    if name == "ddpm":
        # Validates steps (must be None or T) and spacing with the same messages as the others.
        timesteps_for("ddpm", steps, schedule.n_steps, spacing)
        return DDPMSampler(schedule)
    if name == "ddim":
        return DDIMSampler(schedule, steps, 0.0 if eta is None else eta, spacing)
    return DPMSolverPP2MSampler(schedule, steps, spacing)

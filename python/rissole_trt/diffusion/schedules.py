"""β schedules and the quantities derived from them.

Conventions follow the authors' RISSOLE code (``rissole_main/model/ddpm``):

* timesteps are indices ``t = 0 .. T-1``; step ``t`` uses ``betas[t]`` and the UNet's time
  embedding receives that same integer ``t``;
* ``alpha_bars[t] = prod_{s <= t} (1 - betas[s])``, so ``t = 0`` is already one noising step;
* ``alpha_bar(-1) = 1`` (clean data), which makes the posterior variance at ``t = 0`` exactly 0.

The reference computes the schedule in float32; we compute in float64 and cast, which differs
from it by at most a few float32 ulps (far below any parity tolerance).
"""

from __future__ import annotations

import math
import numbers
import operator

import torch

from ..errors import InvalidArgumentError, OutOfRangeError

__all__ = ["SCHEDULES", "make_betas", "NoiseSchedule"]

#: Names of the β schedules, as the reference's ``beta_schedule`` config field spells them.
SCHEDULES: tuple[str, ...] = ("linear", "cosine", "quadratic", "sigmoid")

# Offset and clipping of the cosine schedule (Nichol & Dhariwal 2021), as the reference uses them.
_COSINE_S = 0.008
_COSINE_CLIP = (0.0001, 0.9999)


def as_int(value: object, name: str) -> int:
    """``value`` as a Python int (accepts numpy/torch integers), else a ValueError naming it."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}") from None


def _check_params(kind: str, n_steps: int, beta_1: float, beta_2: float) -> None:
    if kind not in SCHEDULES:
        raise InvalidArgumentError(f"unknown beta schedule {kind!r}; valid schedules: {', '.join(SCHEDULES)}")
    if as_int(n_steps, "n_steps") < 1:
        raise InvalidArgumentError(f"n_steps must be a positive integer, got {n_steps!r}")
    for name, value in (("beta_1", beta_1), ("beta_2", beta_2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    # The reference demands beta_1 < beta_2 < 1 for every schedule (cosine ignores the values);
    # beta_1 > 0 is ours: with beta = 0 at t = 0 the ε parameterisation divides by 1 - alpha_bar = 0.
    if not 0.0 < beta_1 < beta_2 < 1.0:
        raise InvalidArgumentError(f"need 0 < beta_1 < beta_2 < 1, got beta_1={beta_1}, beta_2={beta_2}")


def make_betas(
    kind: str,
    n_steps: int,
    beta_1: float = 1e-4,
    beta_2: float = 0.02,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the ``n_steps`` β values of schedule ``kind``, computed in float64, as ``dtype``.

    ``linear``: ``linspace(beta_1, beta_2, T)``; ``quadratic``: ``linspace(√beta_1, √beta_2, T)²``;
    ``sigmoid``: ``sigmoid(linspace(-6, 6, T)) · (beta_2 - beta_1) + beta_1``;
    ``cosine``: ``beta_t = 1 - f(t+1)/f(t)`` with ``f(u) = cos²((u/T + s)/(1 + s) · π/2)``, s = 0.008,
    clipped to [0.0001, 0.9999] (``beta_1``/``beta_2`` are validated but unused, as in the reference).
    """
    _check_params(kind, n_steps, beta_1, beta_2)
    if not dtype.is_floating_point:
        raise InvalidArgumentError(f"dtype must be a floating-point dtype, got {dtype}")
    n_steps = as_int(n_steps, "n_steps")
    f64 = torch.float64
    if kind == "linear":
        betas = torch.linspace(beta_1, beta_2, n_steps, dtype=f64)
    elif kind == "quadratic":
        betas = torch.linspace(beta_1**0.5, beta_2**0.5, n_steps, dtype=f64) ** 2
    elif kind == "sigmoid":
        betas = torch.sigmoid(torch.linspace(-6.0, 6.0, n_steps, dtype=f64)) * (beta_2 - beta_1) + beta_1
    else:
        u = torch.linspace(0, n_steps, n_steps + 1, dtype=f64)
        f = torch.cos((u / n_steps + _COSINE_S) / (1 + _COSINE_S) * (math.pi / 2)) ** 2
        betas = torch.clip(1 - f[1:] / f[:-1], *_COSINE_CLIP)
    return betas.to(dtype)


class NoiseSchedule:
    """A discrete DDPM noise schedule: β and everything derived from it.

    Tensors (``betas``, ``alphas``, ``alpha_bars``, ``alpha_bars_prev``, ``posterior_variance``,
    each of length ``n_steps``) are computed in float64 and cast to ``dtype``. Samplers read
    per-step coefficients in float64 through :meth:`alpha_bar`, :meth:`beta` and
    :meth:`posterior_var`.
    """

    def __init__(
        self,
        kind: str = "linear",
        n_steps: int = 1000,
        beta_1: float = 1e-4,
        beta_2: float = 0.02,
        *,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        betas = make_betas(kind, n_steps, beta_1, beta_2, dtype=torch.float64)
        if not dtype.is_floating_point:
            raise InvalidArgumentError(f"dtype must be a floating-point dtype, got {dtype}")
        self._kind, self._n_steps = kind, as_int(n_steps, "n_steps")
        self._beta_1, self._beta_2 = float(beta_1), float(beta_2)
        self._dtype = dtype

        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        alpha_bars_prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
        # float64 copies as Python lists: samplers index them per step without tensor overhead.
        self._betas64 = betas.tolist()
        self._alpha_bars64 = alpha_bars.tolist()
        self._posterior64 = posterior_variance.tolist()

        self.betas = betas.to(dtype)
        self.alphas = alphas.to(dtype)
        self.alpha_bars = alpha_bars.to(dtype)
        self.alpha_bars_prev = alpha_bars_prev.to(dtype)
        self.posterior_variance = posterior_variance.to(dtype)

    # Read-only description ------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self._kind

    @property
    def n_steps(self) -> int:
        return self._n_steps

    @property
    def beta_1(self) -> float:
        return self._beta_1

    @property
    def beta_2(self) -> float:
        return self._beta_2

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(kind={self._kind!r}, n_steps={self._n_steps}, "
            f"beta_1={self._beta_1}, beta_2={self._beta_2}, dtype={self._dtype})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NoiseSchedule):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple:
        return (self._kind, self._n_steps, self._beta_1, self._beta_2, self._dtype)

    # float64 scalar access for samplers -----------------------------------------------------
    def check_timestep(self, t: int) -> int:
        """Return ``t`` as an int after checking it is a valid timestep index (0..T-1)."""
        t = as_int(t, "timestep")
        if not 0 <= t < self._n_steps:
            raise OutOfRangeError(f"timestep {t} out of range 0..{self._n_steps - 1}")
        return t

    def alpha_bar(self, t: int) -> float:
        """ᾱ_t in float64; ``t = -1`` means clean data (ᾱ = 1)."""
        if not isinstance(t, bool) and t == -1:
            return 1.0
        return self._alpha_bars64[self.check_timestep(t)]

    def beta(self, t: int) -> float:
        """β_t in float64."""
        return self._betas64[self.check_timestep(t)]

    def posterior_var(self, t: int) -> float:
        """Posterior variance β_t(1 − ᾱ_{t−1})/(1 − ᾱ_t) in float64 (0 at t = 0)."""
        return self._posterior64[self.check_timestep(t)]

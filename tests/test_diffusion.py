"""Schedules and samplers of rissole_trt.diffusion, on toy ε functions with closed-form answers.

The toy data distribution is x0 ~ N(μ, s²) independently per dimension. With
x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·ε, (x_t, ε) is jointly Gaussian: Var(x_t) = v_t = ᾱ_t·s² + 1 − ᾱ_t and
Cov(ε, x_t) = √(1−ᾱ_t), so the optimal (MSE) denoiser is
    ε*(x_t, t) = E[ε | x_t] = √(1−ᾱ_t)·(x_t − √ᾱ_t·μ) / v_t,
which for s = 0 (point mass at μ) is (x_t − √ᾱ_t·μ)/√(1−ᾱ_t).
Every sampler then maps noise to samples affinely, so moments can be checked tightly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole_trt.diffusion import (
    SAMPLERS,
    SCHEDULES,
    SPACINGS,
    NoiseSchedule,
    ddpm_step,
    draw_noise,
    make_betas,
    make_sampler,
    sample,
    timesteps_for,
)
from rissole_trt.errors import OutOfRangeError

from tolerances import assert_close

REFERENCE_IO = Path(__file__).resolve().parent / "fixtures" / "reference" / "ref_add_io.npz"

MU = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
S = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)


class Gaussian:
    """x0 ~ N(mu, s²) per dimension; ``eps`` is the exact E[ε | x_t] (module docstring)."""

    def __init__(self, schedule: NoiseSchedule, mu: torch.Tensor, s: torch.Tensor) -> None:
        self.schedule, self.mu, self.s = schedule, mu, s
        self.calls: list[int] = []

    def eps(self, x: torch.Tensor, t: int) -> torch.Tensor:
        self.calls.append(t)
        ab = self.schedule.alpha_bar(t)
        v = ab * self.s**2 + (1 - ab)
        return ((x - math.sqrt(ab) * self.mu) * (math.sqrt(1 - ab) / v)).to(x.dtype)

    def marginal(self, t: int, z: torch.Tensor) -> torch.Tensor:
        """Exact samples of x_t from standard normal ``z`` (a sampler started here has no prior error)."""
        ab = self.schedule.alpha_bar(t)
        return math.sqrt(ab) * self.mu + torch.sqrt(ab * self.s**2 + 1 - ab) * z

    def denoised_std(self, t: int) -> torch.Tensor:
        """Std of E[x0 | x_t] over x_t: what a sampler ending with the clean-data estimate at t yields."""
        ab = self.schedule.alpha_bar(t)
        return self.s * torch.sqrt(ab * self.s**2 / (ab * self.s**2 + 1 - ab))


def _affine_moments(run, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of a deterministic sampler's output: it is affine in x_T, so x_T = ±1 gives both."""
    z = torch.tensor([[-1.0], [1.0]], dtype=dtype).expand(2, len(MU)).contiguous()
    out = run(z)
    return (out[1] + out[0]) / 2, (out[1] - out[0]) / 2


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------


def test_linear_quadratic_sigmoid_match_closed_form():
    T, b1, b2 = 1000, 1e-4, 0.02
    frac = [t / (T - 1) for t in range(T)]
    expected = {
        "linear": [b1 + f * (b2 - b1) for f in frac],
        "quadratic": [(math.sqrt(b1) + f * (math.sqrt(b2) - math.sqrt(b1))) ** 2 for f in frac],
        "sigmoid": [b1 + (b2 - b1) / (1 + math.exp(-(-6 + 12 * f))) for f in frac],
    }
    for kind, values in expected.items():
        betas = make_betas(kind, T, b1, b2, dtype=torch.float64)
        assert betas.shape == (T,)
        torch.testing.assert_close(betas, torch.tensor(values, dtype=torch.float64), rtol=1e-12, atol=0)
    linear = make_betas("linear", T, b1, b2)
    assert linear.dtype == torch.float32
    assert linear[0].item() == pytest.approx(1e-4, rel=1e-6) and linear[-1].item() == pytest.approx(0.02, rel=1e-6)


def test_cosine_matches_formula_and_ignores_beta_range():
    T, s = 1000, 0.008

    def f(u: float) -> float:
        return math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2

    expected = [min(max(1 - f(t + 1) / f(t), 1e-4), 0.9999) for t in range(T)]
    betas = make_betas("cosine", T, 1e-4, 0.02, dtype=torch.float64)
    torch.testing.assert_close(betas, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=0)
    # The clip is active at both ends (β starts below 1e-4 and reaches 1 at t = T-1).
    assert betas[0].item() == 1e-4 and betas[-1].item() == 0.9999
    torch.testing.assert_close(make_betas("cosine", T, 1e-3, 0.5), make_betas("cosine", T))
    # Where unclipped, ᾱ_t/ᾱ_{t-1} = f(t+1)/f(t): the schedule is the cosine ᾱ of the paper.
    sched = NoiseSchedule("cosine", T)
    for t in (100, 500, 900):
        assert sched.alpha_bar(t) / sched.alpha_bar(t - 1) == pytest.approx(f(t + 1) / f(t), rel=1e-12)


@pytest.mark.parametrize("kind", SCHEDULES)
def test_noise_schedule_derived_quantities(kind):
    sched = NoiseSchedule(kind, 200, 1e-4, 0.05)
    betas = make_betas(kind, 200, 1e-4, 0.05, dtype=torch.float64)
    ab = np.cumprod(1 - betas.numpy())
    assert sched.betas.dtype == sched.alpha_bars.dtype == torch.float32
    torch.testing.assert_close(sched.betas, betas.float())
    torch.testing.assert_close(sched.alphas, (1 - betas).float())
    torch.testing.assert_close(sched.alpha_bars, torch.from_numpy(ab).float())
    assert sched.alpha_bar(199) == pytest.approx(ab[-1], rel=1e-12) and sched.alpha_bar(-1) == 1.0
    assert torch.all(sched.alpha_bars[1:] < sched.alpha_bars[:-1])
    assert 0 < sched.alpha_bars[-1] and sched.alpha_bars[0] < 1
    assert sched.alpha_bars_prev[0] == 1 and torch.equal(sched.alpha_bars_prev[1:], sched.alpha_bars[:-1])
    assert sched.posterior_variance[0] == 0 and sched.posterior_var(0) == 0.0
    t = 57
    assert sched.posterior_var(t) == pytest.approx(betas[t].item() * (1 - ab[t - 1]) / (1 - ab[t]), rel=1e-12)


def test_linear_schedule_final_alpha_bar():
    # ᾱ_{T-1} = ∏(1 − β_t) over the reference's linear schedule.
    expected = math.prod(1 - (1e-4 + t * (0.02 - 1e-4) / 999) for t in range(1000))
    assert NoiseSchedule().alpha_bar(999) == pytest.approx(expected, rel=1e-12)
    assert NoiseSchedule(dtype=torch.float64).alpha_bars.dtype == torch.float64


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown beta schedule 'cosin'.*linear, cosine, quadratic, sigmoid"):
        NoiseSchedule("cosin")
    for n in (0, -3, True, 2.5):
        with pytest.raises(ValueError, match="n_steps"):
            NoiseSchedule("linear", n)
    for b1, b2 in ((0.02, 1e-4), (0.0, 0.02), (1e-4, 1.0), (float("nan"), 0.02)):
        with pytest.raises(ValueError, match="beta"):
            NoiseSchedule("linear", 10, b1, b2)
    sched = NoiseSchedule("linear", 10)
    for t in (10, -2):
        with pytest.raises(IndexError, match="timestep .* out of range 0..9"):
            sched.alpha_bar(t)
    with pytest.raises(ValueError, match="floating-point"):
        NoiseSchedule(dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# The DDPM step: the reference's update
# ---------------------------------------------------------------------------------------------


def test_ddpm_step_reproduces_reference_fixture():
    """Row 3 of the authors' fixture has t = 500, so its `eps` is the ε the fixture's `step` used."""
    with np.load(REFERENCE_IO) as io:
        row = {k: torch.from_numpy(io[k][3:4]) for k in ("x", "eps", "noise", "step", "t")}
    assert row["t"].item() == 500
    sched = NoiseSchedule("linear", 1000, 1e-4, 0.02)
    out = ddpm_step(sched, row["x"], row["eps"], 500, row["noise"])
    torch.testing.assert_close(out, row["step"], rtol=0, atol=2e-6)
    out_rows = ddpm_step(sched, row["x"], row["eps"], row["t"], row["noise"])
    torch.testing.assert_close(out_rows, row["step"], rtol=0, atol=2e-6)


def test_ddpm_step_is_the_readme_formula():
    sched = NoiseSchedule(dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x, eps, noise = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    b, ab, abp = sched.betas, sched.alpha_bars, sched.alpha_bars_prev
    for t in (0, 1, 250, 999):
        var = b[t] * (1 - abp[t]) / (1 - ab[t])
        expected = (x - b[t] * eps / torch.sqrt(1 - ab[t])) / torch.sqrt(1 - b[t]) + torch.sqrt(var) * noise
        torch.testing.assert_close(ddpm_step(sched, x, eps, t, noise), expected, rtol=1e-12, atol=1e-12)
    # At t = 0 the mean is returned and no noise is needed.
    torch.testing.assert_close(ddpm_step(sched, x, eps, 0), ddpm_step(sched, x, eps, 0, noise))
    # Per-row timesteps equal row-by-row scalar steps.
    ts = torch.tensor([0, 3, 500, 999])
    rows = torch.cat([ddpm_step(sched, x[i : i + 1], eps[i : i + 1], int(ts[i]), noise[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(ddpm_step(sched, x, eps, ts, noise), rows, rtol=1e-14, atol=1e-14)


def test_ddpm_step_errors():
    sched = NoiseSchedule()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="noise is required"):
        ddpm_step(sched, x, x, 5)
    with pytest.raises(ValueError, match="noise is required"):
        ddpm_step(sched, x, x, torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"eps has shape \(2, 4\)"):
        ddpm_step(sched, x, torch.zeros(2, 4), 5, x)
    with pytest.raises(IndexError, match="out of range"):
        ddpm_step(sched, x, x, 1000, x)
    with pytest.raises(ValueError, match="per-row t"):
        ddpm_step(sched, x, x, torch.tensor([1, 2, 3]), x)


def test_ddpm_sampler_is_the_reference_loop():
    """With the same RNG, `sample(..., 'ddpm')` draws and computes exactly what the reference loop does."""
    sched = NoiseSchedule("linear", 100, 1e-4, 0.1, dtype=torch.float64)
    data = Gaussian(sched, MU, S)
    shape = (6, 3)

    def reference_loop(gen: torch.Generator) -> torch.Tensor:
        b, ab, abp = sched.betas, sched.alpha_bars, sched.alpha_bars_prev
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
        for t in reversed(range(100)):
            mean = (x - b[t] * data.eps(x, t) / torch.sqrt(1 - ab[t])) / torch.sqrt(1 - b[t])
            if t == 0:
                return mean
            z = torch.randn(shape, generator=gen, dtype=torch.float64)
            x = mean + torch.sqrt(b[t] * (1 - abp[t]) / (1 - ab[t])) * z

    expected = reference_loop(torch.Generator().manual_seed(3))
    data.calls.clear()
    out = sample(data.eps, shape, sched, "ddpm", generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    assert data.calls == list(range(99, -1, -1))


def test_ddim_eta1_with_all_steps_is_ddpm():
    """DDIM with η = 1 and every timestep is ancestral DDPM with the posterior variance (Song et al.)."""
    sched = NoiseSchedule("cosine", 100)
    data = Gaussian(sched, MU, S)
    f64 = torch.float64
    ddpm = sample(data.eps, (5, 3), sched, "ddpm", generator=torch.Generator().manual_seed(1), dtype=f64)
    ddim = sample(data.eps, (5, 3), sched, "ddim", 100, eta=1.0, generator=torch.Generator().manual_seed(1), dtype=f64)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Full loops on Gaussian data
# ---------------------------------------------------------------------------------------------

# Relative tolerance on the std of the samples around s: Monte-Carlo error (4σ ≈ 3.1% for 8192
# values per dimension) plus each sampler's discretisation bias, measured with exact moments:
# ≤ 1% for DDPM, ≤ 6% for DDIM-50 η=0 (first order), ≤ 12% for DDIM-50 η=1, ≤ 5% for
# DPM-Solver++(2M)-20 (its clean estimate at t = 49 shrinks s = 0.5 by 5.5%). The exact tests
# below pin the coefficients; this one checks whole loops against the data distribution.
GAUSSIAN_CASES = [
    ("ddpm", None, None, 0.04),
    ("ddim", 50, 0.0, 0.09),
    ("ddim", 50, 1.0, 0.15),
    ("dpmpp_2m", 20, None, 0.08),
]


@pytest.mark.parametrize("name, steps, eta, std_tol", GAUSSIAN_CASES)
def test_samples_recover_gaussian(name, steps, eta, std_tol):
    sched = NoiseSchedule()
    data = Gaussian(sched, MU.float(), S.float())
    # 2·4096 rows × 3 stays under torch's intra-op parallel threshold: fast on a busy machine.
    n = 4096
    # Antithetic pairs (x_T, z_i) and (−x_T, −z_i): the output is affine in the noise, so the pair
    # average is exactly the sampler's mean and only the std carries Monte-Carlo error.
    gen = torch.Generator().manual_seed(0)
    half = draw_noise((n, 3), gen)
    x_T = torch.cat([half, -half])

    def noise_fn(i: int) -> torch.Tensor:
        z = draw_noise((n, 3), gen)
        return torch.cat([z, -z])

    out = sample(data.eps, x_T.shape, sched, name, steps, eta=eta, noise=x_T, noise_fn=noise_fn)
    mean, std = out.double().mean(0), out.double().std(0)
    # Starting from N(0, 1) instead of the exact marginal N(√ᾱ_T·μ, v_T) shifts the output mean by
    # at most s·√ᾱ_T·|μ| (≤ 0.02 here); nothing else may move it.
    prior_shift = S * math.sqrt(sched.alpha_bar(999)) * MU.abs()
    assert torch.all((mean - MU).abs() <= prior_shift + 2e-3), (mean, MU, prior_shift)
    torch.testing.assert_close(std / S, torch.ones(3, dtype=torch.float64), rtol=0, atol=std_tol)


def _ddim_moments(sched: NoiseSchedule, timesteps: list[int], eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean and std after DDIM (Song et al. 2021, eq. 12) on the Gaussian data, started from
    the exact marginal at timesteps[0]: propagate (mean, variance) through the affine updates."""
    mean = math.sqrt(sched.alpha_bar(timesteps[0])) * MU
    var = sched.alpha_bar(timesteps[0]) * S**2 + 1 - sched.alpha_bar(timesteps[0])
    for i, t in enumerate(timesteps):
        a, a_next = sched.alpha_bar(t), sched.alpha_bar(timesteps[i + 1]) if i + 1 < len(timesteps) else 1.0
        k = math.sqrt(1 - a) / (a * S**2 + 1 - a)  # ε = k·(x − √a·μ)
        sigma = eta * math.sqrt((1 - a_next) / (1 - a) * (1 - a / a_next))
        # x_next = √a'·x0 + √(1 − a' − σ²)·ε + σ·z with x0 = (x − √(1−a)·ε)/√a
        slope = math.sqrt(a_next) * (1 - math.sqrt(1 - a) * k) / math.sqrt(a) + math.sqrt(1 - a_next - sigma**2) * k
        eps_coef = math.sqrt(a_next) * math.sqrt(1 - a) / math.sqrt(a) - math.sqrt(1 - a_next - sigma**2)
        offset = eps_coef * k * math.sqrt(a) * MU
        mean, var = slope * mean + offset, slope**2 * var + sigma**2
    return mean, torch.sqrt(var)


def test_ddim_matches_exact_moments():
    sched = NoiseSchedule()
    data = Gaussian(sched, MU, S)
    ts = timesteps_for("ddim", 50, 1000)
    # η = 0: deterministic, so exact to rounding.
    mean, std = _affine_moments(lambda z: sample(data.eps, z.shape, sched, "ddim", 50, noise=data.marginal(ts[0], z)))
    exp_mean, exp_std = _ddim_moments(sched, ts, 0.0)
    torch.testing.assert_close(mean, exp_mean, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(std, exp_std, rtol=1e-9, atol=1e-9)
    # η = 1: check the added noise σ_i at skipped steps through the output std (Monte Carlo).
    n = 8192
    gen = torch.Generator().manual_seed(5)
    x_T = data.marginal(ts[0], draw_noise((n, 3), gen, dtype=torch.float64))
    out = sample(data.eps, (n, 3), sched, "ddim", 50, eta=1.0, noise=x_T, generator=gen)
    exp_mean, exp_std = _ddim_moments(sched, ts, 1.0)
    torch.testing.assert_close(out.mean(0), exp_mean, rtol=0, atol=4 * float(exp_std.max()) / math.sqrt(n))
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(out.std(0) / exp_std, ones, rtol=0, atol=4 / math.sqrt(2 * n))


def _ode_error(name: str, steps: int) -> float:
    """Max relative error of the output std against the exact answer (linspace spacing ends at t = 0)."""
    sched = NoiseSchedule()
    data = Gaussian(sched, MU, S)
    sampler = make_sampler(name, sched, steps, spacing="linspace")
    t0 = sampler.timesteps[0]
    mean, std = _affine_moments(lambda z: sample(data.eps, z.shape, sched, sampler, noise=data.marginal(t0, z)))
    torch.testing.assert_close(mean, MU, rtol=0, atol=1e-9)  # symmetric data: every consistent sampler keeps μ
    return float((std / data.denoised_std(0) - 1).abs().max())


def test_ddim_converges_first_order_and_dpmpp_second_order():
    ddim = [_ode_error("ddim", n) for n in (40, 80, 160)]
    dpm = [_ode_error("dpmpp_2m", n) for n in (40, 80, 160)]
    for a, b in zip(ddim, ddim[1:]):
        assert 1.8 < a / b < 2.2, ddim
    assert 3.5 < dpm[1] / dpm[2] < 4.5, dpm
    assert dpm[2] < 0.01 and dpm[2] < ddim[2] / 3


@pytest.mark.parametrize(
    "name, steps, eta", [("ddpm", None, None), ("ddim", 7, 0.0), ("ddim", 7, 1.0), ("dpmpp_2m", 5, None)]
)
def test_point_mass_lands_on_mu(name, steps, eta):
    sched = NoiseSchedule()
    data = Gaussian(sched, MU, torch.zeros(3, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    out = sample(data.eps, (4, 3), sched, name, steps, eta=eta, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(out, MU.expand(4, 3), rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Timesteps, noise streams, the loop's interface
# ---------------------------------------------------------------------------------------------


def test_timesteps_for_spacings():
    assert timesteps_for("ddim", 10, 1000, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert timesteps_for("ddim", 10, 1000, "linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert timesteps_for("ddim", 10, 1000, "leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert timesteps_for("ddim", 3, 10, "trailing") == [9, 6, 2]
    assert timesteps_for("dpmpp_2m", 1, 1000) == [999]
    for spacing in SPACINGS:
        assert timesteps_for("ddim", 1000, 1000, spacing) == list(range(999, -1, -1))
        for n in (1, 2, 7, 333, 999):
            ts = timesteps_for("dpmpp_2m", n, 1000, spacing)
            assert len(ts) == n and all(a > b for a, b in zip(ts, ts[1:])) and 0 <= ts[-1] and ts[0] <= 999
    assert timesteps_for("ddpm", None, 1000) == list(range(999, -1, -1))
    assert len(timesteps_for("ddim", None, 1000)) == 50 and len(timesteps_for("dpmpp_2m", None, 1000)) == 20
    assert len(timesteps_for("ddim", None, 30)) == 30  # the default is capped at T


def test_eps_fn_sees_exactly_the_sampler_timesteps_and_progress_is_reported():
    sched = NoiseSchedule()
    for name, steps in (("ddim", 13), ("dpmpp_2m", 9), ("ddpm", None)):
        data = Gaussian(sched, MU, S)
        sampler = make_sampler(name, sched, steps)
        seen = []
        sample(data.eps, (2, 3), sched, sampler, progress=lambda done, total: seen.append((done, total)))
        assert data.calls == list(sampler.timesteps) == timesteps_for(name, steps, 1000)
        assert seen == [(i + 1, sampler.num_steps) for i in range(sampler.num_steps)]


def test_per_row_generators_make_rows_independent_of_batch():
    sched = NoiseSchedule("linear", 100, 1e-4, 0.1)
    data = Gaussian(sched, MU, S)
    for name, eta in (("ddpm", None), ("ddim", 0.5)):
        steps = None if name == "ddpm" else 20
        gens = [torch.Generator().manual_seed(seed) for seed in (7, 8, 9)]
        batch = sample(data.eps, (3, 3), sched, name, steps, eta=eta, generator=gens)
        alone = sample(data.eps, (1, 3), sched, name, steps, eta=eta, generator=[torch.Generator().manual_seed(8)])
        torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=0)
        assert not torch.equal(batch[0], batch[1])
    # Same seed, same result; the global generator is used when none is given.
    a = sample(data.eps, (2, 3), sched, "ddpm", generator=torch.Generator().manual_seed(4))
    torch.manual_seed(4)
    b = sample(data.eps, (2, 3), sched, "ddpm")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_noise_fn_is_called_only_for_steps_that_need_noise():
    sched = NoiseSchedule("linear", 50, 1e-4, 0.1)
    data = Gaussian(sched, MU, S)
    for name, steps, eta, expected in (
        ("ddpm", None, None, list(range(49))),  # no noise at t = 0
        ("ddim", 10, 0.0, []),
        ("ddim", 10, 1.0, list(range(9))),  # σ = 0 on the last step to clean data
        ("dpmpp_2m", 10, None, []),
    ):
        asked = []

        def noise_fn(i: int) -> torch.Tensor:
            asked.append(i)
            return torch.zeros(2, 3)

        sample(data.eps, (2, 3), sched, name, steps, eta=eta, noise=torch.zeros(2, 3), noise_fn=noise_fn)
        assert asked == expected, name


def test_sampler_steps_must_be_in_order():
    sched = NoiseSchedule()
    sampler = make_sampler("dpmpp_2m", sched, 5)
    x = torch.randn(2, 3)
    sampler.step(0, x, x)
    with pytest.raises(RuntimeError, match="in order"):
        sampler.step(2, x, x)
    with pytest.raises(IndexError, match="out of range"):
        sampler.step(5, x, x)


def test_sampling_errors():
    sched = NoiseSchedule()
    eps = Gaussian(sched, MU, S).eps
    with pytest.raises(ValueError, match="unknown sampler 'euler'.*ddpm, ddim, dpmpp_2m"):
        sample(eps, (2, 3), sched, "euler")
    with pytest.raises(ValueError, match="unknown timestep spacing 'karras'.*trailing, linspace, leading"):
        sample(eps, (2, 3), sched, "ddim", 10, spacing="karras")
    with pytest.raises(ValueError, match="more than the schedule's 1000"):
        sample(eps, (2, 3), sched, "ddim", 1001)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="steps must be positive"):
            sample(eps, (2, 3), sched, "dpmpp_2m", bad)
    with pytest.raises(ValueError, match="ddpm samples with all 1000 timesteps.*ddim"):
        sample(eps, (2, 3), sched, "ddpm", 50)
    for bad in (-0.1, 1.5, float("nan"), True):
        with pytest.raises(ValueError, match="eta must be a number in"):
            sample(eps, (2, 3), sched, "ddim", 10, eta=bad)
    with pytest.raises(ValueError, match="eta applies to the 'ddim' sampler only"):
        sample(eps, (2, 3), sched, "ddpm", eta=1.0)
    with pytest.raises(ValueError, match=r"initial noise has shape \(2, 4\)"):
        sample(eps, (2, 3), sched, "ddim", 5, noise=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"noise_fn\(0\) returned"):
        sample(eps, (2, 3), sched, "ddim", 5, eta=1.0, noise_fn=lambda i: torch.zeros(3))
    with pytest.raises(ValueError, match="3 per-row generators"):
        sample(eps, (2, 3), sched, "ddim", 5, generator=[torch.Generator() for _ in range(3)])
    with pytest.raises(ValueError, match="eps has shape"):
        sample(lambda x, t: x[:, :2], (2, 3), sched, "ddim", 5)
    with pytest.raises(ValueError, match="fixed by a ready Sampler"):
        sample(eps, (2, 3), sched, make_sampler("ddim", sched, 5), steps=5)
    with pytest.raises(ValueError, match="built for"):
        sample(eps, (2, 3), NoiseSchedule("cosine"), make_sampler("ddim", sched, 5))
    with pytest.raises(ValueError, match="shape"):
        sample(eps, (0, 3), sched, "ddim", 5)
    assert set(SAMPLERS) == {"ddpm", "ddim", "dpmpp_2m"}


def test_clip_x0_keeps_the_implied_clean_sample_in_range_and_changes_nothing_inside():
    from rissole_trt.diffusion import clip_x0

    from tolerances import TOLERANCES

    sched = NoiseSchedule("linear", 100, 1e-4, 0.1)
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    wild = clip_x0(lambda x_t, t: -10 * x_t, sched, torch.tensor(-1.0), torch.tensor(1.0))
    for t in (0, 50, 99, torch.tensor([0, 50, 99])):
        a = sched.alpha_bars[t]
        a = a.view(-1, 1) if isinstance(t, torch.Tensor) else a
        x0 = (x - (1 - a).sqrt() * wild(x, t)) / a.sqrt()
        assert float(x0.abs().max()) <= 1 + TOLERANCES["float64_roundtrip"].atol
    tame = clip_x0(lambda x_t, t: torch.zeros_like(x_t), sched, torch.tensor(-100.0), torch.tensor(100.0))
    torch.testing.assert_close(tame(x, 50), torch.zeros_like(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,steps,eta", [("ddpm", None, None), ("ddim", 7, 0.0), ("ddim", 7, 1.0),
                                            ("dpmpp_2m", 7, None), ("dpmpp_2m", 1, None)])
def test_linear_step_is_the_samplers_update(name, steps, eta):
    """The coefficients a fused kernel uses reproduce every sampler's step (float64, whole loops)."""
    sched = NoiseSchedule("linear", 40, 1e-4, 0.1, dtype=torch.float64)
    sampler = make_sampler(name, sched, 40 if name == "ddpm" else steps, eta=eta)
    g = torch.Generator().manual_seed(0)
    x = linear_x = torch.randn(3, 5, dtype=torch.float64, generator=g)
    history = None
    for i in range(sampler.num_steps):
        eps = torch.randn(3, 5, dtype=torch.float64, generator=g)
        noise = torch.randn(3, 5, dtype=torch.float64, generator=g) if sampler.needs_noise(i) else None
        step = sampler.linear_step(i)
        assert (step.noise != 0.0) == sampler.needs_noise(i)
        x = sampler.step(i, x, eps, noise)
        out = step.x * linear_x + step.eps * eps
        if step.prev:
            out = out + step.prev * history
        if step.noise:
            out = out + step.noise * noise
        if step.keeps_x0:
            history = step.x0_x * linear_x + step.x0_eps * eps
        linear_x = out
        assert_close(linear_x, x, "float64_closed_form")
    with pytest.raises(OutOfRangeError, match="out of range"):
        sampler.linear_step(sampler.num_steps)

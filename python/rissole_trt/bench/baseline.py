"""The speed baseline: the authors' sampling procedure, run on our model.

It reproduces the order of operations of the reference code (``rissole_main``: the DDPM's
``p_sample_loop`` / ``p_sample`` driven block by block by ``make_ddpm_evaluation_data.py``), written
from scratch:

* the P block positions are generated one after another; each position is its own batch of B
  rows (B images) and its own full chain of T ancestral DDPM steps from fresh noise;
* every step runs the UNet's full forward, ``model.unet(x, cond, t, pos)`` in eager float32: the
  neighbour conv, the time embedding (and position embedding) are recomputed at every step;
* the update is the reference's ``p_sample``: float32 coefficient tables indexed per row,
  ``mean = sqrt(1/α_t) · (x − β_t · ε / sqrt(1 − ᾱ_t))``, plus ``sqrt(σ²_t) · z`` for t > 0;
* the whole latent is decoded once at the end (the reference script decodes its whole list of
  intermediate latents, which all alias the final one; we count one decode).

With the same noise it gives the same blocks as ``rissole_trt.diffusion.sample`` with the
``ddpm`` sampler over ``model.denoiser(cond)`` (up to float32 rounding; tests/test_bench.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InvalidArgumentError
from ..timing import Timer

__all__ = ["ReferenceCoefficients", "ReferenceChain", "reference_sample"]


@dataclass(frozen=True)
class ReferenceCoefficients:
    """The float32 tables the reference's DDPM precomputes, derived the way it derives them."""

    betas: torch.Tensor
    sqrt_recip_alphas: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor

    @classmethod
    def from_schedule(cls, schedule, device: torch.device | str = "cpu") -> "ReferenceCoefficients":
        betas = schedule.betas.to(device=device, dtype=torch.float32)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        return cls(
            betas=betas,
            sqrt_recip_alphas=torch.sqrt(1.0 / alphas),
            sqrt_one_minus_alphas_cumprod=torch.sqrt(1.0 - alphas_cumprod),
            posterior_variance=betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        )


def _per_row(table: torch.Tensor, t_rows: torch.Tensor) -> torch.Tensor:
    """The reference's ``extract``: one value per row, shaped to broadcast over [B, C, H, W]."""
    return table.gather(0, t_rows).reshape(-1, 1, 1, 1)


class ReferenceChain:
    """One block position's DDPM chain, advanced one timestep per :meth:`step` the reference's way."""

    def __init__(self, model, cond: torch.Tensor, position: int, x_t: torch.Tensor,
                 coefs: ReferenceCoefficients | None = None) -> None:
        self.model = model
        self.cond = cond  # [B, k*C, bs, bs]: this position's neighbour blocks
        self.x = x_t
        b, device = x_t.shape[0], x_t.device
        self.position = torch.full((b,), position, dtype=torch.long, device=device)
        self.use_pos = model.unet.pos_embed is not None
        self.coefs = coefs or ReferenceCoefficients.from_schedule(model.schedule, device)

    @torch.no_grad()
    def step(self, t: int, noise: Callable[[], torch.Tensor] | None, timer: Timer | None = None) -> torch.Tensor:
        """x_t -> x_{t-1}: the UNet's full forward, then the reference's update; ``noise()`` is
        called for z when t > 0. Times ``"denoiser"`` and ``"step"`` on ``timer``."""
        timer = timer or _NULL_TIMER
        x, c = self.x, self.coefs
        t_rows = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        with timer("denoiser"):
            eps = self.model.unet(x, self.cond, t_rows, self.position if self.use_pos else None)
        with timer("step"):
            mean = _per_row(c.sqrt_recip_alphas, t_rows) * (
                x - _per_row(c.betas, t_rows) * eps / _per_row(c.sqrt_one_minus_alphas_cumprod, t_rows))
            self.x = mean if t == 0 else mean + torch.sqrt(_per_row(c.posterior_variance, t_rows)) * noise()
        return self.x


_NULL_TIMER = Timer()


@torch.no_grad()
def reference_sample(
    model,
    cond: torch.Tensor,
    *,
    n_steps: int | None = None,
    noise: torch.Tensor | None = None,
    noise_fn: Callable[[int], torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    timer: Timer | None = None,
) -> torch.Tensor:
    """Sample latent blocks the reference's way: position after position, each a full chain.

    Args:
        model: a :class:`rissole_trt.models.RissoleModel`.
        cond: neighbour blocks ``[B, P, k*C, bs, bs]`` (as ``Database.neighbour_blocks`` returns).
        n_steps: run only the first ``n_steps`` timesteps of each position's chain (T-1 downwards);
            None runs all T and returns clean blocks.
        noise: the initial x_T ``[B, P, C, bs, bs]``; position p starts from ``noise[:, p]``.
        noise_fn: ``noise_fn(i)`` gives step i's noise ``[B, P, C, bs, bs]`` (position p uses
            ``[:, p]``), as for :func:`rissole_trt.diffusion.sample`; called for steps with t > 0.
        generator: where noise comes from when ``noise`` / ``noise_fn`` are not given, drawn in the
            reference's order (position 0's x_T, its step noises, then position 1's, ...).
        timer: optional; times each UNet call as ``"denoiser"`` and each update as ``"step"``.
    Returns:
        blocks ``[B, P, C, bs, bs]``.
    """
    config = model.config
    p_count, c, bs = config.n_blocks, config.autoencoder.latent_dim, config.block_size
    if cond.ndim != 5 or cond.shape[1] != p_count:
        raise InvalidArgumentError(f"cond must be [B, P={p_count}, k*C, bs, bs], got {list(cond.shape)}")
    b, device = cond.shape[0], cond.device
    shape = (b, c, bs, bs)
    if noise is not None and tuple(noise.shape) != (b, p_count) + shape[1:]:
        raise InvalidArgumentError(f"noise must be [B, P, C, bs, bs] = {[b, p_count, *shape[1:]]}, got {list(noise.shape)}")
    timesteps = list(range(config.diffusion.n_steps - 1, -1, -1))[:n_steps]
    coefs = ReferenceCoefficients.from_schedule(model.schedule, device)
    out = torch.empty((b, p_count) + shape[1:], device=device)
    for p in range(p_count):
        x_t = noise[:, p] if noise is not None else torch.randn(shape, generator=generator, device=device)
        chain = ReferenceChain(model, cond[:, p], p, x_t, coefs)
        for i, t in enumerate(timesteps):
            if noise_fn is not None:
                z = lambda i=i, p=p: noise_fn(i)[:, p]  # noqa: E731
            else:
                z = lambda: torch.randn(shape, generator=generator, device=device)  # noqa: E731
            chain.step(t, z, timer)
        out[:, p] = chain.x
    return out

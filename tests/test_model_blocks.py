"""All blocks in one denoiser call, and the step-invariant work hoisted out of the sampling loop."""

from __future__ import annotations

import pytest
import torch

from rissole_trt.diffusion import sample
from rissole_trt.models import RissoleModel

from reference_fixtures import load_io, paths
from tolerances import assert_close


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    # The rissole_alt variant: its output depends on the block position, so a wrong position shows.
    return RissoleModel.from_reference(**paths("ref_addpos_"))


def _blocks(model, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    p, c, bs, k = cfg.n_blocks, cfg.unet.latent_channels, cfg.block_size, cfg.unet.k
    return torch.randn(b, p, c, bs, bs, generator=g), torch.randn(b, p, k * c, bs, bs, generator=g)


def test_eps_batched_equals_one_call_per_position(model):
    x, cond = _blocks(model, b=3)
    t = torch.tensor([5, 400, 999])
    batched = model.eps_batched(x, cond, t)
    assert batched.shape == x.shape
    for p in range(model.config.n_blocks):
        separate = model.eps(x[:, p], cond[:, p], t, p)
        assert_close(batched[:, p], separate, "fp32_reorder")
    # Positions are really used: the same block at another position gives another ε.
    shifted = model.eps(x[:, 0], cond[:, 0], t, 1)
    assert (shifted - batched[:, 0]).abs().max() > 1e-3


def test_eps_batched_with_one_timestep(model):
    x, cond = _blocks(model, b=2, seed=1)
    torch.testing.assert_close(model.eps_batched(x, cond, 250), model.eps_batched(x, cond, torch.tensor([250, 250])))


class _CallCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args) -> None:
        self.calls += 1


@pytest.mark.parametrize("sampler, steps", [("ddim", 6), ("dpmpp_2m", 5)])
def test_hoisted_denoiser_runs_the_neighbour_conv_once(model, sampler, steps):
    x, cond = _blocks(model, b=2, seed=2)
    x_rows, cond_rows = x.flatten(0, 1), cond.flatten(0, 1)
    pos = torch.arange(model.config.n_blocks).repeat(2)
    shape = tuple(x_rows.shape)

    counter = _CallCounter(model.unet.cond_conv)
    try:
        plain = sample(lambda x_t, t: model.eps(x_t, cond_rows, t, pos), shape, model.schedule, sampler, steps, noise=x_rows)
        assert counter.calls == steps  # the plain model recomputes it every step
        counter.calls = 0
        denoiser = model.denoiser(cond_rows, pos)
        hoisted = sample(denoiser, shape, model.schedule, sampler, steps, noise=x_rows)
        assert counter.calls == 1
        counter.calls = 0
        blocks = sample(model.denoiser(cond), tuple(x.shape), model.schedule, sampler, steps, noise=x)
        assert counter.calls == 1
    finally:
        counter.handle.remove()
    # Other GEMM shapes (P rows of position bias, repeated) round differently on some ISAs.
    assert_close(hoisted, plain, "fp32_sampled")
    assert_close(blocks.flatten(0, 1), plain, "fp32_sampled")


def test_hoisted_denoiser_matches_fixture_eps(model):
    """Per-row timesteps through the precomputed time table give the reference's ε."""
    io = load_io("ref_addpos_")
    eps = model.denoiser(io["cond"], io["pos"])(io["x"], io["t"])
    assert_close(eps, io["eps"], "fp32_fixture")


def test_unet_forward_is_the_composition_of_its_parts(model):
    io = load_io("ref_addpos_")
    unet = model.unet
    with torch.no_grad():
        parts = unet.forward_hoisted(io["x"], unet.condition(io["cond"]), unet.embed_time(io["t"]), unet.embed_pos(io["pos"]))
        whole = unet(io["x"], io["cond"], io["t"], io["pos"])
    assert_close(parts, whole, "bitwise")  # the same calls on the same tensors


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m, x, c: m.eps(x, c, 10), ValueError, "pos is required"),
        (lambda m, x, c: m.eps(x, c, 1000, 0), IndexError, r"t values must lie in 0\.\.999"),
        (lambda m, x, c: m.eps(x, c, 10, 4), IndexError, r"pos values must lie in 0\.\.3"),
        (lambda m, x, c: m.eps(x, c[:, :20], 10, 0), ValueError, r"k\*C=30"),
        (lambda m, x, c: m.eps(x[:, :, :4], c, 10, 0), ValueError, r"x_t must be \[N, 10, 8, 8\]"),
        (lambda m, x, c: m.eps(x, c, 0.5, 0), ValueError, "t must be an integer"),
        (lambda m, x, c: m.denoiser(c, torch.zeros(2, dtype=torch.long))(x, 2.7), ValueError, "t must be an integer"),
        (lambda m, x, c: m.denoiser(c, torch.zeros(x.shape[0], dtype=torch.long))(x[:1], 3), ValueError, "rows"),
    ],
)
def test_bad_inputs_are_named(model, call, error, message):
    x, cond = _blocks(model, b=1, seed=3)
    with pytest.raises(error, match=message):
        call(model, x[:, 0].repeat(2, 1, 1, 1), cond[:, 0].repeat(2, 1, 1, 1))

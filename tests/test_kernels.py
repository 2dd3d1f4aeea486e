"""Triton kernels against their torch references, on CPU tensors under TRITON_INTERPRET=1 (set by
conftest.py before anything imports Triton; on a CUDA machine the same tests run on the GPU). fp32 and fp16:
the interpreter's bf16 ``tl.dot`` is wrong, so bf16 is a GPU test. Tolerances from the one table."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from rissole_trt.kernels.gather_xattn import gather_xattn, gather_xattn_reference  # noqa: E402
from rissole_trt.tolerances import KERNEL_ERROR_FACTOR, TOLERANCES  # noqa: E402
from tolerances import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _problem(rows, lq, heads, dh, k, bs, entries=9, blocks=4, n_codes=40, images=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, entries, (images, k), generator=g)
    ids[0, 0], ids[-1, -1] = 0, entries - 1  # the database's first and last entries
    table = lambda n: torch.randn(n, heads, dh, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return dict(q=torch.randn(rows, lq, heads, dh, generator=g).to(dtype).to(DEVICE), ids=ids.to(DEVICE),
                row_image=(torch.arange(rows) % images).to(DEVICE), row_block=(torch.arange(rows) % blocks).to(DEVICE),
                codes=torch.randint(0, n_codes, (blocks, entries, bs, bs), generator=g).to(torch.uint16).to(DEVICE),
                k_codes=table(n_codes), v_codes=table(n_codes), k_pos=table(bs * bs), v_pos=table(bs * bs))


def _fp32(problem):
    return {name: t.float() if t.is_floating_point() else t for name, t in problem.items()}


SHAPES = [  # rows, Lq (not a multiple of the 16-query tile), heads, head_dim, k, bs
    (5, 20, 4, 24, 3, 5),
    (3, 64, 1, 32, 1, 8),
    (7, 9, 4, 16, 10, 8),
    (2, 33, 1, 8, 10, 5),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"r{s[0]}-lq{s[1]}-h{s[2]}-d{s[3]}-k{s[4]}-bs{s[5]}" for s in SHAPES])
def test_fp32_kernel_matches_the_reference(shape):
    problem = _problem(*shape)
    assert_close(gather_xattn(**problem), gather_xattn_reference(**problem), "kernel_fp32")


@pytest.mark.parametrize("shape", SHAPES[:3], ids=["a", "b", "c"])
def test_fp16_kernel_meets_flash_attentions_error_rule(shape):
    problem = _problem(*shape, dtype=torch.float16)
    exact = gather_xattn_reference(**_fp32(problem))
    kernel_error = (gather_xattn(**problem).float() - exact).abs().max()
    reference_error = (gather_xattn_reference(**problem).float() - exact).abs().max()
    assert kernel_error <= KERNEL_ERROR_FACTOR * reference_error + TOLERANCES["kernel_lowp_floor"].atol


def test_masked_neighbours_are_left_out_and_a_fully_masked_row_is_zero():
    problem = _problem(4, 20, 2, 16, 3, 5, images=2)
    problem["ids"][1] = -1  # image 1 has no neighbours at all: rows 1 and 3
    problem["ids"][0, 1] = -1  # image 0 has two of three
    out = gather_xattn(**problem)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (out[3] == 0).all()
    assert_close(out, gather_xattn_reference(**problem), "kernel_fp32")
    # Dropping a masked neighbour is the same as never having it.
    kept = dict(problem, ids=problem["ids"][:, [0, 2]])
    assert_close(out[[0, 2]], gather_xattn(**kept)[[0, 2]], "kernel_fp32")


@pytest.mark.parametrize("bad,error", [
    (dict(ids=lambda p: p["ids"].clone().fill_(9)), IndexError),  # == entries: out of range
    (dict(ids=lambda p: p["ids"].clone().fill_(-2)), IndexError),
    (dict(row_block=lambda p: p["row_block"] + 4), IndexError),
    (dict(row_image=lambda p: p["row_image"] + 3), IndexError),
    (dict(codes=lambda p: p["codes"].to(torch.int32)), ValueError),
    (dict(k_pos=lambda p: p["k_pos"][:-1]), ValueError),
    (dict(v_codes=lambda p: p["v_codes"].half()), ValueError),
])
def test_bad_inputs_are_refused_before_launch(bad, error):
    problem = _problem(5, 20, 4, 24, 3, 5)
    (name, change), = bad.items()
    problem[name] = change(problem)
    with pytest.raises(error):
        gather_xattn(**problem)

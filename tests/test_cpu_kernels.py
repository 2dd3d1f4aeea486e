"""The C++ core's CPU layer kernels against the plain PyTorch they replace, and as build-engine tactics."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rissole_trt.errors import InvalidArgumentError
from rissole_trt.models.layers import Attention, UNetResBlock
from rissole_trt.presets import make_preset_model
from rissole_trt.runtime.cpu_kernels import (
    conv_transpose_columns,
    fused_group_norm,
    fused_group_norm_reference,
    gemm_conv_transpose2d,
    gemm_conv_transpose_applies,
    pixel_attention,
    pixel_attention_reference,
    winograd_applies,
    winograd_conv3x3,
    winograd_weights,
)
from rissole_trt.runtime.tactics import tune
from rissole_trt.runtime.tactics.candidates import FusedAttention, FusedNormResBlock, WinogradConv

from tolerances import assert_close

_CL = torch.channels_last
# (N, C, H, W, groups): the UNet's maps, odd sizes, one group, one channel per group
SHAPES = [(64, 48, 8, 8, 8), (16, 96, 4, 4, 8), (3, 16, 5, 7, 4), (2, 8, 1, 1, 1), (1, 6, 3, 2, 6)]


def _map(n, c, h, w, seed=0, scale=3.0, shift=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, c, h, w, generator=g) * scale + shift).contiguous(memory_format=_CL)


@pytest.mark.parametrize("n,c,h,w,groups", SHAPES)
@pytest.mark.parametrize("extra", ["none", "one_row", "rows", "residual", "rows_and_residual", "two_slices",
                                   "no_silu"])
def test_fused_group_norm_matches_torch(n, c, h, w, groups, extra):
    x = _map(n, c, h, w)
    g = torch.Generator().manual_seed(1)
    weight, bias = torch.randn(c, generator=g), torch.randn(c, generator=g)
    # two_slices: the time row and the position rows as column slices of the UNet's wider bias tables
    add = {"one_row": torch.randn(1, c, generator=g), "rows": torch.randn(n, c, generator=g),
           "rows_and_residual": torch.randn(n, c, generator=g),
           "two_slices": (torch.randn(1, c + 7, generator=g)[:, 3:3 + c], torch.randn(n, c + 5, generator=g)[:, 5:]),
           "no_silu": torch.randn(n, c, generator=g)}.get(extra)
    residual = _map(n, c, h, w, seed=2) if "residual" in extra else None
    silu = extra != "no_silu"
    expected = fused_group_norm_reference(x, groups, weight, bias, 1e-5, add=add, residual=residual, silu=silu)
    out = fused_group_norm(x, groups, weight, bias, 1e-5, add=add, residual=residual, silu=silu)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=_CL)
    assert_close(out, expected, "tactic_fp32")
    # bf16 in and out, arithmetic in float32: the build accepts it within the bf16 entry
    low_add = None if add is None else tuple(t.bfloat16() for t in add) if isinstance(add, tuple) else add.bfloat16()
    low = fused_group_norm(x.bfloat16(), groups, weight, bias, 1e-5, add=low_add,
                           residual=None if residual is None else residual.bfloat16(), silu=silu)
    assert low.dtype == torch.bfloat16
    assert_close(low.float(), expected, "bf16_eps")


def test_fused_group_norm_takes_nchw_input_and_handles_extreme_values():
    x = _map(4, 8, 3, 3, scale=200.0).contiguous()  # NCHW memory: converted; SiLU's exp saturates both ways
    weight, bias = torch.full((8,), 50.0), torch.zeros(8)
    out = fused_group_norm(x, 2, weight, bias, 1e-5)
    assert torch.isfinite(out).all()
    assert_close(out, fused_group_norm_reference(x, 2, weight, bias, 1e-5), "tactic_fp32")


def test_fused_group_norm_refuses_bad_arguments():
    x = _map(2, 8, 4, 4)
    w = torch.ones(8)
    with pytest.raises(InvalidArgumentError, match="divisible"):
        fused_group_norm(x, 3, w, w, 1e-5)
    with pytest.raises(InvalidArgumentError, match="add must be"):
        fused_group_norm(x, 2, w, w, 1e-5, add=torch.zeros(3, 8))
    with pytest.raises(InvalidArgumentError, match="at most two"):
        fused_group_norm(x, 2, w, w, 1e-5, add=(torch.zeros(1, 8),) * 3)
    with pytest.raises(InvalidArgumentError, match="residual must be"):
        fused_group_norm(x, 2, w, w, 1e-5, residual=torch.zeros(2, 8, 4, 5))
    with pytest.raises(InvalidArgumentError, match="weight and bias"):
        fused_group_norm(x, 2, torch.ones(4), w, 1e-5)
    with pytest.raises(InvalidArgumentError, match="float32 or bfloat16 CPU"):
        fused_group_norm(x.double(), 2, w, w, 1e-5)


# (N, heads, head_dim, H, W): the models' mid attention (64 heads of 4 over a 4x4 or 2x2 map, the
# fixed head-size path), heads that do not fill the vector lanes, wider heads over 8x8, odd sizes, one pixel
ATTENTION_SHAPES = [(64, 64, 4, 4, 4), (16, 64, 4, 2, 2), (3, 20, 4, 2, 3), (8, 4, 16, 8, 8), (3, 3, 5, 3, 2),
                    (2, 2, 3, 1, 1)]


@pytest.mark.parametrize("n,heads,head_dim,h,w", ATTENTION_SHAPES)
def test_pixel_attention_matches_torch(n, heads, head_dim, h, w):
    qkv = _map(n, 3 * heads * head_dim, h, w, scale=2.0, shift=0.0)
    expected = pixel_attention_reference(qkv, heads, head_dim, head_dim ** -0.5)
    out = pixel_attention(qkv, heads, head_dim, head_dim ** -0.5)
    assert out.shape == expected.shape and out.is_contiguous(memory_format=_CL)
    assert_close(out, expected, "tactic_fp32")
    low = pixel_attention(qkv.bfloat16(), heads, head_dim, head_dim ** -0.5)
    assert low.dtype == torch.bfloat16
    assert_close(low.float(), pixel_attention_reference(qkv.bfloat16(), heads, head_dim, head_dim ** -0.5),
                 "bf16_eps")


def test_pixel_attention_saturated_scores_and_bad_arguments():
    qkv = _map(2, 3 * 2 * 4, 4, 4, scale=300.0).contiguous()  # NCHW memory; one weight per query is ~1
    assert_close(pixel_attention(qkv, 2, 4, 0.5), pixel_attention_reference(qkv, 2, 4, 0.5), "tactic_fp32")
    with pytest.raises(InvalidArgumentError, match="channels"):
        pixel_attention(qkv, 3, 4, 0.5)
    with pytest.raises(InvalidArgumentError, match="float32 or bfloat16 CPU"):
        pixel_attention(qkv.double(), 2, 4, 0.5)


def test_fused_attention_matches_the_attention_layer():
    torch.manual_seed(0)
    layer = Attention(48, 64, 4).eval()
    x = _map(8, 48, 4, 4, scale=1.0, shift=0.0)
    with torch.no_grad():
        assert_close(FusedAttention(layer, layer.qkv, layer.out)(x), layer(x), "tactic_fp32")


@pytest.mark.parametrize("n,c,h,w,_", SHAPES)
@pytest.mark.parametrize("out_channels", [5, 96])
@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_matches_conv2d(n, c, h, w, _, out_channels, tile):
    conv = nn.Conv2d(c, out_channels, 3, padding=1)
    x = _map(n, c, h, w)
    with torch.no_grad():
        expected = conv(x)
        out = winograd_conv3x3(x, winograd_weights(conv.weight, tile=tile), conv.bias)
        no_bias = winograd_conv3x3(x, winograd_weights(conv.weight, tile=tile))
    assert out.shape == expected.shape and out.is_contiguous(memory_format=_CL)
    assert_close(out, expected, "tactic_fp32")
    assert_close(no_bias, expected - conv.bias[:, None, None], "tactic_fp32")
    if tile == 2:  # F4 is offered in fp32 only (its transforms grow values ~100x: bf16 tiles lose too much)
        low = winograd_conv3x3(x.bfloat16(), winograd_weights(conv.weight, torch.bfloat16), conv.bias)
        assert_close(low.float(), expected, "bf16_eps")


def test_winograd_f4_covers_the_large_layers_of_the_celeba64_preset():
    conv = nn.Conv2d(512, 512, 3, padding=1)  # the widest 3x3 layer, where rounding grows most
    x = _map(4, 512, 4, 4, scale=1.0, shift=0.0)
    with torch.no_grad():
        assert_close(winograd_conv3x3(x, winograd_weights(conv.weight, tile=4), conv.bias), conv(x), "tactic_fp32")


def test_winograd_applies_to_3x3_stride_1_padding_1_only_and_checks_its_weights():
    assert winograd_applies(nn.Conv2d(4, 4, 3, padding=1))
    for conv in (nn.Conv2d(4, 4, 3, padding=1, stride=2), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 4, 1),
                 nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect")):
        assert not winograd_applies(conv)
    x = _map(1, 4, 4, 4)
    with pytest.raises(InvalidArgumentError, match="winograd_weights"):
        winograd_conv3x3(x, winograd_weights(torch.zeros(4, 5, 3, 3)))
    with pytest.raises(InvalidArgumentError, match="winograd_weights"):
        winograd_conv3x3(x.bfloat16(), winograd_weights(torch.zeros(4, 4, 3, 3)))
    with pytest.raises(InvalidArgumentError, match=r"\[K, C, 3, 3\]"):
        winograd_weights(torch.zeros(4, 4, 1, 1))
    with pytest.raises(InvalidArgumentError, match="tile must be 2 or 4"):
        winograd_weights(torch.zeros(4, 4, 3, 3), tile=6)


# (N, C, H, W, K, kernel, stride, padding): the UNets' 4x4 stride-2 upsampling from 2x2 and 4x4 maps,
# odd map sizes, a stride-1 kernel, non-overlapping taps, one pixel
TRANSPOSED_SHAPES = [(64, 96, 2, 2, 96, 4, 2, 1), (8, 48, 4, 4, 32, 4, 2, 1), (3, 5, 3, 5, 7, 4, 2, 1),
                     (2, 6, 4, 3, 5, 3, 1, 1), (2, 6, 3, 3, 4, 2, 2, 0), (1, 4, 1, 1, 3, 4, 2, 1)]


@pytest.mark.parametrize("n,c,h,w,k,kernel,stride,padding", TRANSPOSED_SHAPES)
def test_gemm_conv_transpose_matches_torch(n, c, h, w, k, kernel, stride, padding):
    torch.manual_seed(0)
    conv = nn.ConvTranspose2d(c, k, kernel, stride, padding)
    assert gemm_conv_transpose_applies(conv)
    x = _map(n, c, h, w, scale=1.0, shift=0.0)
    with torch.no_grad():
        expected = conv(x)
        out = gemm_conv_transpose2d(x, conv_transpose_columns(conv.weight), conv.bias, kernel, stride, padding)
        assert out.shape == expected.shape and out.is_contiguous(memory_format=_CL)
        assert_close(out, expected, "tactic_fp32")
        low = gemm_conv_transpose2d(x.bfloat16(), conv_transpose_columns(conv.weight, torch.bfloat16), None, kernel,
                                    stride, padding)
        assert low.dtype == torch.bfloat16
        assert_close(low.float(), F.conv_transpose2d(x.bfloat16().float(), conv.weight, None, stride, padding),
                     "bf16_eps")


def test_gemm_conv_transpose_applies_to_plain_transposed_convolutions_and_checks_its_columns():
    for conv in (nn.ConvTranspose2d(4, 4, 4, 2, 1, output_padding=1), nn.ConvTranspose2d(4, 4, 4, 2, 1, groups=2),
                 nn.ConvTranspose2d(4, 4, (4, 2), 2, 1), nn.Conv2d(4, 4, 3)):
        assert not gemm_conv_transpose_applies(conv)
    x = _map(1, 4, 3, 3)
    with pytest.raises(InvalidArgumentError, match="conv_transpose_columns"):
        gemm_conv_transpose2d(x, conv_transpose_columns(torch.zeros(5, 4, 4, 4)), None, 4, 2, 1)
    with pytest.raises(InvalidArgumentError, match="conv_transpose_columns"):
        gemm_conv_transpose2d(x.bfloat16(), conv_transpose_columns(torch.zeros(4, 4, 4, 4)), None, 4, 2, 1)
    with pytest.raises(InvalidArgumentError, match="bias must be"):
        gemm_conv_transpose2d(x, conv_transpose_columns(torch.zeros(4, 4, 4, 4)), torch.zeros(3), 4, 2, 1)
    with pytest.raises(InvalidArgumentError, match="no output"):
        gemm_conv_transpose2d(_map(1, 4, 1, 1), conv_transpose_columns(torch.zeros(4, 4, 2, 2)), None, 2, 1, 2)


@pytest.mark.parametrize("position", [True, False])
def test_fused_norm_block_matches_the_residual_block(position):
    torch.manual_seed(0)
    for cin, cout in ((48, 48), (48, 96)):  # identity shortcut, 1x1 shortcut
        block = UNetResBlock(cin, cout, 16, 8, 0.0, position).eval()
        for p in block.parameters():  # non-trivial norm affine parameters
            nn.init.normal_(p, std=0.5)
        x = _map(8, cin, 8, 8, scale=1.0, shift=0.0)
        time_bias = torch.randn(1, cout)
        pos_bias = torch.randn(8, cout) if position else None
        with torch.no_grad():
            assert_close(FusedNormResBlock(block)(x, time_bias, pos_bias), block(x, time_bias, pos_bias),
                         "tactic_fp32")
            winograd = WinogradConv(block.conv1, torch.float32)
            assert_close(winograd(x), block.conv1(x), "tactic_fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_build_times_the_c_core_candidates_for_every_block_attention_and_3x3_conv(precision):
    from rissole_trt.runtime.torch_backend import packs_for_onednn, precision_dtype

    if not packs_for_onednn("cpu", precision_dtype(precision)):
        pytest.skip(f"oneDNN has no {precision} kernels on this CPU: the C++ candidates are offered with them")
    model = make_preset_model("tiny")
    rows = model.config.n_blocks
    c, bs, k = model.config.autoencoder.latent_dim, model.config.block_size, model.config.unet.k
    g = torch.Generator().manual_seed(0)
    den = model.denoiser(torch.randn(1, rows, k * c, bs, bs, generator=g))
    inputs = (torch.randn(rows, c, bs, bs, generator=g), den.cond_feat, den.time_table[10:11], den.pos_bias)
    table = tune(model, precision, {rows: inputs}, seconds_per_candidate=0.001)
    blocks = [name for name, m in model.unet.named_modules() if isinstance(m, UNetResBlock)]
    convs = [name for name, m in model.unet.named_modules() if winograd_applies(m) and name != "cond_conv"]  # hoisted
    assert blocks and convs
    for name in blocks:
        record = table.layers[name][str(rows)]
        assert set(record["candidates"]) == {"torch_ops", "fused_norm"}
        assert record["candidates"]["fused_norm"]["excess"] <= 1.0, name
    for name in convs:
        candidates = table.layers[name][str(rows)]["candidates"]
        assert candidates["winograd_f2"]["excess"] <= 1.0, name
        assert ("winograd_f4" in candidates) == (precision == "fp32"), name
        if precision == "fp32":
            assert candidates["winograd_f4"]["excess"] <= 1.0, name
    attention = [name for name, m in model.unet.named_modules() if isinstance(m, Attention)]
    assert attention
    for name in attention:
        assert table.layers[name][str(rows)]["candidates"]["fused_cpu"]["excess"] <= 1.0, name
    upsamplings = [name for name, m in model.unet.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    assert upsamplings
    for name in upsamplings:
        assert table.layers[name][str(rows)]["candidates"]["gemm_overlap_add"]["excess"] <= 1.0, name

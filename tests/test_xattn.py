"""The cross-attention conditioning mode (``conditioning="xattn"``, issue 12) on the CPU reference path.

The model trains, saves, loads, exports to ONNX and generates like the others; its keys and values
of any context token are rows of per-layer tables over the codebook and the in-block positions, so
the gather-and-attend reference of the Triton kernel (``rissole_trt.kernels.gather_xattn``), fed the
database's uint16 codes, reproduces each layer's attention.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from rissole_trt import cli, ops
from rissole_trt.builder import build_database
from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from rissole_trt.engine import Engine
from rissole_trt.kernels.gather_xattn import gather_xattn_reference
from rissole_trt.models import RissoleModel
from rissole_trt.ops import gather_code_blocks
from rissole_trt.runtime.spec import step_spec
from rissole_trt.runtime.torch_backend import TorchBackend
from rissole_trt.windows import ShiftedWindows

from synthetic import cli_train_tiny, smooth_images
from tolerances import assert_close

AE = AutoencoderConfig(channels=(8, 16), latent_dim=4, n_embeddings=32, n_heads=2, dim_keys=8, n_groups=4)
XATTN = ModelConfig(
    autoencoder=AE,
    unet=UNetConfig(latent_channels=4, channels=(16, 32), n_groups=8, n_heads=2, dim_keys=4, k=3,
                    position_embedding=True, time_emb_dim=32, pos_emb_dim=16, conditioning="xattn",
                    xattn_levels=(0, 1, 2), xattn_heads=2, xattn_head_dim=8, xattn_context_dim=16),
    diffusion=DiffusionConfig(n_steps=50), image_size=32)


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    """An xattn model whose cross-attention layers matter (their output projections start at zero)."""
    torch.manual_seed(0)
    model = RissoleModel(XATTN).eval()
    for layer in model.unet._xattn_layers:
        torch.nn.init.normal_(layer.out.weight, std=0.3)
    return model


@pytest.fixture(scope="module")
def database(model, tmp_path_factory):
    return build_database(model, smooth_images(10, size=32), tmp_path_factory.mktemp("xattn") / "db", progress=False)


def test_config_validates_the_levels_and_round_trips():
    assert ModelConfig.from_json(XATTN.to_json()) == XATTN
    assert XATTN.unet.cond_channels == 12 and XATTN.unet.uses_retrieval
    old = {k: v for k, v in UNetConfig().to_dict().items() if not k.startswith("xattn_")}
    assert UNetConfig.from_dict(old) == UNetConfig()  # files written before the mode existed still load
    with pytest.raises(ValueError, match="needs at least one of xattn_levels"):
        UNetConfig(conditioning="xattn")
    with pytest.raises(ValueError, match="only for conditioning 'xattn'"):
        UNetConfig(xattn_levels=(1,))
    with pytest.raises(ValueError, match="not a level index in 0..2"):
        UNetConfig(conditioning="xattn", xattn_levels=(3,))
    with pytest.raises(ValueError, match="increasing without repeats"):
        UNetConfig(conditioning="xattn", xattn_levels=(2, 1))


def test_layers_sit_where_the_config_says_and_condition_hoists_their_keys_and_values(model):
    unet = model.unet
    assert [lvl.xattn is not None for lvl in unet.down] == [True, True] and unet.mid_xattn is not None
    assert [lvl.xattn is not None for lvl in unet.up] == [True, True]
    one_level = RissoleModel(dataclasses.replace(XATTN, unet=dataclasses.replace(XATTN.unet, xattn_levels=(2,))))
    assert one_level.unet.mid_xattn is not None and all(lvl.xattn is None for lvl in one_level.unet.down)
    cond = torch.randn(5, 12, 4, 4)
    hoisted = unet.condition(cond)
    assert hoisted.shape == (5, 3 * 16, unet.context_width) == (5,) + unet.cond_feat_shape(4)
    assert unet.context_width == 5 * 2 * 2 * 8
    spec = step_spec(model)
    assert spec.inputs[1].shape == ("rows", 48, unet.context_width)
    # Token j*bs² + s is position s of neighbour j: moving neighbour 1's block moves its tokens only.
    swapped = cond.clone()
    swapped[:, 4:8] = swapped[:, 4:8].flip(-1)
    moved = unet.condition(swapped)
    assert torch.equal(moved[:, :16], hoisted[:, :16]) and torch.equal(moved[:, 32:], hoisted[:, 32:])
    assert not torch.equal(moved[:, 16:32], hoisted[:, 16:32])


def _rows_of(database, ids: torch.Tensor):
    """Block rows of images with neighbours ``ids`` [B, k]: (cond [R, k*C, bs, bs], row_image, row_block, codes)."""
    codes = database.codes_tensor()  # [P, N, bs, bs] uint16
    cond = gather_code_blocks(codes, database.codebook_tensor("cpu"), ids).flatten(0, 1)
    p = codes.shape[0]
    return cond, torch.arange(len(ids)).repeat_interleave(p), torch.arange(p).repeat(len(ids)), codes


def test_the_codebook_tables_reproduce_every_layers_attention(model, database):
    """The kernel's contract on real model weights: table lookups through the codes == the layer."""
    ids = torch.tensor([[0, 4, 9], [3, 3, 1]])
    cond, row_image, row_block, codes = _rows_of(database, ids)
    unet = model.unet
    hoisted = unet.condition(cond)
    tables = unet.xattn_tables(database.codebook_tensor("cpu"))
    assert len(tables) == len(unet._xattn_layers) == 5
    g = torch.Generator().manual_seed(1)
    for layer, table in zip(unet._xattn_layers, tables):
        q = torch.randn(len(cond), 7, layer.n_heads, layer.head_dim, generator=g)
        a, b = layer.kv_slice
        expected = layer.attend(q, hoisted[:, :, a:b])
        ours = gather_xattn_reference(q, ids, row_image, row_block, codes, **table, scale=layer.scale)
        assert_close(ours, expected, "fp32_reorder")


def _window_rows_of(model, database, ids: torch.Tensor):
    """The shifted windows' rows of images with neighbours ``ids``: (windows, cropped cond [B*W, k*C, bs, bs],
    row_image, row_block (the window), codes)."""
    windows = ShiftedWindows(model.config.unet.block_factor, model.config.block_size)
    cond = windows.crop(ops.merge_blocks(database.neighbour_blocks(ids), windows.bf))
    count = len(windows.offsets)
    return (windows, cond, torch.arange(len(ids)).repeat_interleave(count), torch.arange(count).repeat(len(ids)),
            database.codes_tensor())


def test_the_codebook_tables_reproduce_every_layers_attention_over_shifted_windows(model, database):
    """With the windows' token sources, lookups through the codes == each layer over the cropped neighbours
    (the plain-torch form of what the kernel computes for ``overlap="half"``)."""
    ids = torch.tensor([[0, 4, 9], [3, 3, 1]])
    windows, cond, row_image, row_block, codes = _window_rows_of(model, database, ids)
    hoisted = model.unet.condition(cond)
    tables = model.unet.xattn_tables(database.codebook_tensor("cpu"))
    g = torch.Generator().manual_seed(2)
    for layer, table in zip(model.unet._xattn_layers, tables):
        q = torch.randn(len(cond), 5, layer.n_heads, layer.head_dim, generator=g)
        a, b = layer.kv_slice
        ours = gather_xattn_reference(q, ids, row_image, row_block, codes, **table, scale=layer.scale,
                                      sources=windows.token_sources())
        assert_close(ours, layer.attend(q, hoisted[:, :, a:b]), "fp32_reorder")
    block, pos = windows.token_sources()
    with pytest.raises(IndexError, match="row_block must lie in"):  # a row naming a window past the last
        gather_xattn_reference(q, ids, row_image, row_block + 1, codes, **table, sources=(block, pos))
    with pytest.raises(IndexError, match="sources must name blocks"):
        gather_xattn_reference(q, ids, row_image, row_block, codes, **table, sources=(block + 4, pos))


def test_save_load_backends_and_onnx_agree(model, database, tmp_path):
    loaded = RissoleModel.load(model.save(tmp_path / "m"))
    ids = torch.tensor([[0, 4, 9], [3, 3, 1]])
    cond = database.neighbour_blocks(ids)  # [B, P, k*C, bs, bs]
    x = torch.randn(2, 4, 4, 4, 4)
    expected = model.denoiser(cond)(x, 20)
    assert torch.equal(loaded.denoiser(cond)(x, 20), expected)
    assert_close(TorchBackend(model).denoiser(cond)(x, 20), expected, "fp32_reorder")
    pytest.importorskip("onnxruntime")
    from rissole_trt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    assert_close(OnnxRuntimeBackend(model).denoiser(cond)(x, 20), expected, "onnx_fp32")


def test_engine_generates_with_an_xattn_model(model, database):
    engine = Engine(model, database, device="cpu")
    a = engine.generate(3, seed=2, sampler="ddim", steps=4, batch_size=2, progress=False)
    b = engine.generate(3, seed=2, sampler="ddim", steps=4, batch_size=3, progress=False)
    assert a.shape == (3, 32, 32, 3) and a.std() > 0
    assert_close(a, b, "images_uint8")


def test_cli_trains_saves_and_generates_an_xattn_model(tmp_path):
    images = smooth_images(8, size=32)
    npz = cli_train_tiny(images, tmp_path, 2, "--conditioning", "xattn", "--k", "2", "--xattn-heads", "2",
                         "--xattn-head-dim", "8")
    model_dir = tmp_path / "run" / "model"
    config = RissoleModel.load(model_dir).config.unet
    assert (config.conditioning, config.xattn_levels, config.xattn_heads) == ("xattn", (1, 2), 2)
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "--no-progress",
                     "-o", str(tmp_path / "db")]) == 0
    grid = tmp_path / "grid.png"
    assert cli.main(["generate", "--model", str(model_dir), "--db", str(tmp_path / "db"), "-n", "2",
                     "--sampler", "ddim", "--steps", "2", "--no-progress", "-o", str(grid)]) == 0
    assert grid.stat().st_size > 0
    assert cli.main(["train", "--images", str(npz), "--autoencoder", str(tmp_path / "ae"), "--steps", "1",
                     "--retrieval", "none", "--conditioning", "xattn", "-o", str(tmp_path / "bad")]) == 2


def test_build_engine_tunes_an_xattn_model_and_its_engine_generates(model, database, tmp_path):
    from rissole_trt.runtime.engine_build import build_engine

    manifest = build_engine(model, tmp_path / "engine", batch_sizes=(1, 2), budget_s=2.0,
                            candidates=("tuned", "torch", "eager", "onnxruntime"), log=lambda _: None)
    assert all(b["candidates"][b["chosen"]]["within_tolerance"] for b in manifest["buckets"])
    built = Engine(model, database, device="cpu", engine=tmp_path / "engine")
    eager = Engine(model, database, device="cpu", backend="eager")
    settings = dict(seed=4, sampler="ddim", steps=3, progress=False)
    assert_close(built.generate(3, **settings), eager.generate(3, **settings), "images_uint8")

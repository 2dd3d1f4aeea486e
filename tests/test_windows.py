"""Half-block shifted windows (``overlap="half"``): the window algebra, the mixed position bias, and
the Engine and CLI through them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rissole_trt import cli, ops
from rissole_trt.builder import build_database
from rissole_trt.engine import Engine
from rissole_trt.errors import InvalidArgumentError
from rissole_trt.evaluation.report import evaluate
from rissole_trt.models import RissoleModel
from rissole_trt.windows import ShiftedWindows

from reference_fixtures import paths
from synthetic import smooth_images
from tolerances import assert_close


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    return RissoleModel.from_reference(**paths("ref_addpos_")).eval()  # 2x2 blocks of 8x8 latent pixels


@pytest.fixture(scope="module")
def engine(model, tmp_path_factory) -> Engine:
    path = tmp_path_factory.mktemp("db") / "db"
    build_database(model, smooth_images(16), path, progress=False)
    return Engine(model, path, device="cpu")


def test_windows_tile_the_latent_and_blend_back_to_it():
    windows = ShiftedWindows(2, 8)
    assert windows.offsets == [(y, x) for y in (0, 4, 8) for x in (0, 4, 8)]
    z = torch.randn(3, 5, 16, 16)
    crops = windows.crop(z)
    assert crops.shape == (27, 5, 8, 8)
    assert_close(crops[1], z[0, :, 0:8, 4:12], "bitwise")  # image-major rows: image 0, window (0, 4)
    assert_close(crops[9 + 4], z[1, :, 4:12, 4:12], "bitwise")  # image 1, the centre window
    assert_close(windows.blend(crops), z, "fp32_reorder")  # consistent windows blend to the latent itself


def test_position_weights_are_each_windows_share_of_each_block():
    weights = ShiftedWindows(2, 8).position_weights()
    assert_close(weights.sum(1), torch.ones(9), "fp32_reorder")
    aligned = {0: 0, 2: 1, 6: 2, 8: 3}  # the four block-aligned windows are their blocks
    for w, block in aligned.items():
        assert_close(weights[w], torch.eye(4)[block], "bitwise")
    assert_close(weights[4], torch.full((4,), 0.25), "bitwise")  # the centre window covers a quarter of each
    assert_close(weights[1], torch.tensor([0.5, 0.5, 0.0, 0.0]), "bitwise")


def test_a_pointwise_denoiser_gives_the_same_epsilon_through_the_windows():
    """If each window's ε is a function of its own pixels only, blending changes nothing; and the row
    denoiser is made from the neighbours cropped to the windows and the windows' position shares."""
    windows = ShiftedWindows(2, 8)
    cond_blocks = torch.randn(2, 4, 6, 8, 8)
    seen = {}

    def make_rows(cond, positions):
        seen["cond"], seen["positions"] = cond, positions
        return lambda x, t: 2.0 * x + t

    eps_fn = windows.denoiser(make_rows, cond_blocks)
    assert_close(seen["cond"], windows.crop(ops.merge_blocks(cond_blocks, 2)), "bitwise")
    assert_close(seen["positions"], windows.position_weights().repeat(2, 1), "bitwise")
    x = torch.randn(2, 4, 3, 8, 8)
    assert_close(eps_fn(x, 7), 2.0 * x + 7, "fp32_reorder")


@pytest.mark.parametrize("bf,bs", [(2, 8), (3, 4)])
def test_token_sources_name_the_block_and_position_of_every_window_pixel(bf, bs):
    """Looking each window pixel up at (block, in-block position) is cropping the merged blocks."""
    windows = ShiftedWindows(bf, bs)
    labels = torch.arange(bf * bf * bs * bs, dtype=torch.float32).view(1, bf * bf, 1, bs, bs)  # block p, pixel s
    block, pos = windows.token_sources()
    assert block.shape == pos.shape == (len(windows.offsets), bs * bs) and block.dtype == torch.int64
    assert_close(block * bs * bs + pos, windows.crop(ops.merge_blocks(labels, bf)).flatten(1).long(), "bitwise")
    aligned = [i for i, (y, x) in enumerate(windows.offsets) if y % bs == 0 and x % bs == 0]
    assert_close(block[aligned], torch.arange(bf * bf)[:, None].expand(-1, bs * bs), "bitwise")  # blocks themselves
    assert_close(pos[aligned], torch.arange(bs * bs).expand(bf * bf, -1), "bitwise")


def test_one_hot_position_weights_are_the_integer_positions(model):
    rows = 8
    cond = torch.randn(rows, model.config.unet.cond_channels, 8, 8)
    x = torch.randn(rows, model.config.unet.latent_channels, 8, 8)
    pos = torch.arange(rows) % 4
    by_index = model.denoiser(cond, pos)(x, 500)
    by_weights = model.denoiser(cond, torch.eye(4)[pos])(x, 500)
    assert_close(by_weights, by_index, "fp32_reorder")
    with pytest.raises(InvalidArgumentError, match="position weights must be"):
        model.denoiser(cond, torch.ones(rows, 3))


def test_models_without_blocks_or_with_odd_blocks_are_refused():
    with pytest.raises(InvalidArgumentError, match="several blocks"):
        ShiftedWindows(1, 16)
    with pytest.raises(InvalidArgumentError, match="even block size"):
        ShiftedWindows(2, 7)


def test_engine_denoises_every_window_and_its_images_do_not_depend_on_the_batch_size(engine, monkeypatch):
    kwargs = dict(seed=3, sampler="ddim", steps=4, progress=False)
    rows = []
    make = engine._denoiser
    monkeypatch.setattr(engine, "_denoiser", lambda cond, pos=None: rows.append(len(cond)) or make(cond, pos))
    half = engine.generate(3, overlap="half", batch_size=3, **kwargs)
    assert rows == [3 * 9]  # 9 windows (4 aligned, 5 shifted) per image, one denoiser per batch
    assert half.shape == (3, 64, 64, 3) and half.dtype == np.uint8
    assert_close(engine.generate(3, overlap="half", batch_size=2, **kwargs), half, "images_uint8")
    assert engine.plan(2, overlap="half").overlap == "half"
    with pytest.raises(InvalidArgumentError, match="unknown overlap"):
        engine.plan(2, overlap="full")


def test_cli_generate_with_overlap(engine, model, tmp_path):
    model_dir = model.save(tmp_path / "model")
    out = tmp_path / "grid.png"
    assert cli.main(["generate", "--model", str(model_dir), "--db", str(engine.database.path), "-n", "2",
                     "--sampler", "ddim", "--steps", "3", "--overlap", "half", "--no-progress", "-o", str(out)]) == 0
    assert out.stat().st_size > 0


def test_a_model_saves_and_loads_its_default_overlap_and_the_engine_uses_it(engine, model, tmp_path):
    assert model.default_overlap == "none"  # imported checkpoints sample as the reference does
    saved = RissoleModel.load(model.save(tmp_path / "plain"))
    assert saved.default_overlap == "none" and Engine(saved, engine.database.path).plan(2).overlap == "none"
    saved.default_overlap = "half"
    loaded = RissoleModel.load(saved.save(tmp_path / "half"))
    assert loaded.default_overlap == "half"
    with_default = Engine(loaded, engine.database.path, device="cpu")
    assert with_default.plan(2).overlap == "half" and with_default.plan(2, overlap="none").overlap == "none"
    kwargs = dict(seed=1, sampler="ddim", steps=3, progress=False)
    assert_close(with_default.generate(2, **kwargs), engine.generate(2, overlap="half", **kwargs), "images_uint8")
    report, _ = evaluate(with_default, smooth_images(8), None, n=2, sampler="ddim", steps=2, progress=False)
    assert report["settings"]["overlap"] == "half"  # the report names the sampling it measured
    with pytest.raises(InvalidArgumentError, match="unknown overlap"):
        saved.default_overlap = "full"


@pytest.mark.parametrize("sampling, message", [
    ({"overlap": "full"}, "unknown overlap"),
    ({"overlap": "half", "steps": 20}, "at most an \"overlap\" entry"),
    ("half", "must be an object"),
])
def test_a_bad_sampling_entry_is_refused_at_load(model, tmp_path, sampling, message):
    import json

    from rissole_trt.errors import RissoleModelError

    path = model.save(tmp_path / "model")
    doc = json.loads((path / "config.json").read_text())
    doc["sampling"] = sampling
    (path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(RissoleModelError, match=message):
        RissoleModel.load(path)
    del doc["sampling"]  # models saved before the entry existed load with the reference's sampling
    (path / "config.json").write_text(json.dumps(doc))
    assert RissoleModel.load(path).default_overlap == "none"


def test_a_single_block_model_cannot_default_to_overlap():
    from dataclasses import replace

    from rissole_trt.presets import preset_config

    config = preset_config("tiny")
    whole = RissoleModel(replace(config, unet=replace(config.unet, block_factor=1)))
    with pytest.raises(InvalidArgumentError, match="several blocks"):
        whole.default_overlap = "half"
    assert whole.default_overlap == "none"

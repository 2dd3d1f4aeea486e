"""The no-retrieval model kind (``conditioning="none"``), the ablation of issue 5.

It must be exactly the retrieval model fed all-zero neighbours (which is how such a model is
usually improvised), need no database, and run on every backend.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from rissole_trt import cli
from rissole_trt.builder import build_database
from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from rissole_trt.engine import Engine
from rissole_trt.errors import RissoleError
from rissole_trt.evaluation.metrics import block_seam_ratio
from rissole_trt.models import RissoleModel
from rissole_trt.runtime.torch_backend import TorchBackend

from synthetic import cli_train_tiny, smooth_images
from tolerances import assert_close

AE = AutoencoderConfig(channels=(8, 16), latent_dim=4, n_embeddings=32, n_heads=2, dim_keys=8, n_groups=4)
WITH = ModelConfig(
    autoencoder=AE,
    unet=UNetConfig(latent_channels=4, channels=(16, 32), n_groups=8, n_heads=2, dim_keys=4, k=2,
                    position_embedding=True, time_emb_dim=32, pos_emb_dim=16),
    diffusion=DiffusionConfig(n_steps=50), image_size=32)
WITHOUT = dataclasses.replace(WITH, unet=dataclasses.replace(WITH.unet, conditioning="none"))


@pytest.fixture(scope="module")
def models() -> tuple[RissoleModel, RissoleModel]:
    """(with retrieval, without): the same weights, the constant set to the neighbour conv's bias."""
    torch.manual_seed(0)
    with_retrieval = RissoleModel(WITH).eval()
    without = RissoleModel(WITHOUT).eval()
    state = {k: v for k, v in with_retrieval.state_dict().items() if not k.startswith("unet.cond_conv.")}
    state["unet.cond_bias"] = with_retrieval.unet.cond_conv.bias.detach().clone()
    without.load_state_dict(state)
    return with_retrieval, without


def test_config_has_no_neighbour_channels_and_round_trips():
    assert WITHOUT.unet.cond_channels == 0 and not WITHOUT.unet.uses_retrieval
    assert WITH.unet.cond_channels == 8 and WITH.unet.uses_retrieval
    assert ModelConfig.from_json(WITHOUT.to_json()) == WITHOUT
    with pytest.raises(ValueError, match="unknown conditioning 'concat'"):
        UNetConfig(conditioning="concat")


def test_equals_the_retrieval_model_with_zero_neighbours(models):
    with_retrieval, without = models
    assert not hasattr(without.unet, "cond_conv")
    x = torch.randn(2, 4, 4, 4, 4)  # [B, P, C, bs, bs]
    zeros = torch.zeros(2, 4, WITH.unet.cond_channels, 4, 4)
    none = torch.empty(2, 4, 0, 4, 4)
    for t in (0, 25, 49):
        expected = with_retrieval.denoiser(zeros)(x, t)
        assert_close(without.denoiser(none)(x, t), expected, "fp32_reorder")
        assert_close(TorchBackend(without).denoiser(none)(x, t), expected, "fp32_reorder")
    with pytest.raises(ValueError, match="this model uses no retrieval"):
        without.denoiser(zeros)


def test_onnx_export_of_a_model_without_retrieval(models, tmp_path):
    pytest.importorskip("onnxruntime")
    from rissole_trt.runtime.onnxruntime_backend import OnnxRuntimeBackend

    _, without = models
    x, none = torch.randn(3, 4, 4, 4, 4), torch.empty(3, 4, 0, 4, 4)
    ours = OnnxRuntimeBackend(without).denoiser(none)(x, 10)
    assert_close(ours, without.denoiser(none)(x, 10), "onnx_fp32")


def test_engine_needs_no_database_and_refuses_retrieval_arguments(models, tmp_path):
    with_retrieval, without = models
    engine = Engine(without, device="cpu")
    assert engine.database is None
    a = engine.generate(3, seed=5, sampler="ddim", steps=5, eta=1.0, batch_size=2, progress=False)
    b = engine.generate(3, seed=5, sampler="ddim", steps=5, eta=1.0, batch_size=3, progress=False)
    assert a.shape == (3, 32, 32, 3) and a.std() > 0
    assert_close(a, b, "images_uint8")  # other batch shapes round differently on some ISAs
    with pytest.raises(RissoleError, match="uses none"):
        engine.generate(1, k=2, sampler="ddim", steps=2, progress=False)
    with pytest.raises(RissoleError, match="uses none"):
        engine.retrieve(engine.plan(1))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        engine.generate(0, sampler="ddim", steps=2, progress=False)

    db = build_database(with_retrieval, smooth_images(6, size=32), tmp_path / "db", progress=False)
    with pytest.raises(RissoleError, match="give it no database"):
        Engine(without, db, device="cpu")
    with pytest.raises(RissoleError, match="needs a database"):
        Engine(with_retrieval, device="cpu")


def test_cli_trains_generates_and_evaluates_without_retrieval(tmp_path):
    images = smooth_images(8, size=32)
    npz = cli_train_tiny(images, tmp_path, 1, "--retrieval", "none", "--channels-last")
    model_dir = tmp_path / "run" / "model"
    assert RissoleModel.load(model_dir).config.unet.conditioning == "none"
    grid = tmp_path / "grid.png"
    assert cli.main(["generate", "--model", str(model_dir), "-n", "2", "--sampler", "ddim", "--steps", "2",
                     "--no-progress", "-o", str(grid)]) == 0
    assert grid.stat().st_size > 0

    report_path = tmp_path / "eval" / "report.json"
    assert cli.main(["eval", "--model", str(model_dir), "--real", str(npz), "--train", str(npz), "--train-split",
                     "train_idx", "--n", "4", "--sampler", "ddim", "--steps", "2", "--no-progress",
                     "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["settings"]["retrieval"] == "none" and report["settings"]["db"] is None
    assert report["seam_ratio"]["real"] == pytest.approx(block_seam_ratio(images, 2))
    assert 0.0 <= report["memorisation"]["rate"] <= 1.0
    assert report["swd"]["mean"] > 0 and report["swd_training_images"]["mean"] >= 0
    # The autoencoder's floor: the same training images decoded by the model's autoencoder.
    floor = report["autoencoder_floor"]
    assert floor["swd"]["mean"] > 0 and floor["domain_fid"] >= 0 and floor["seam_ratio"] > 0
    assert (tmp_path / "eval" / "report.png").stat().st_size > 0

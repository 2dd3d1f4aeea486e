"""Training: exact resume, divergence handling, the CLI, on tiny models."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from rissole_trt import cli
from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from rissole_trt.models import RissoleModel
from rissole_trt.train import (
    AutoencoderTrainConfig,
    DenoiserTrainConfig,
    load_autoencoder,
    save_autoencoder,
    train_autoencoder,
    train_denoiser,
)
from rissole_trt.train.loop import TrainingDiverged

from synthetic import cli_train_tiny, smooth_images

AE = AutoencoderConfig(channels=(8, 16), latent_dim=4, n_embeddings=32, n_heads=2, dim_keys=8, n_groups=4)
MODEL = ModelConfig(
    autoencoder=AE,
    unet=UNetConfig(latent_channels=4, channels=(16, 32), n_groups=8, n_heads=2, dim_keys=4, k=2,
                    position_embedding=True, time_emb_dim=32, pos_emb_dim=16, dropout=0.1),
    diffusion=DiffusionConfig(n_steps=100), image_size=32)
NO_RETRIEVAL = dataclasses.replace(MODEL, unet=dataclasses.replace(MODEL.unet, conditioning="none"))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return smooth_images(12, size=32)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_autoencoder_resume_is_bitwise_exact(images, tmp_path):
    # Dead-code restarts (every 2 steps) and the data generator are part of what must resume exactly.
    cfg = dict(batch_size=4, checkpoint_every=100, restart_dead_codes_every=2)
    once = train_autoencoder(images, AE, AutoencoderTrainConfig(steps=6, **cfg), tmp_path / "once", progress=False)
    train_autoencoder(images, AE, AutoencoderTrainConfig(steps=3, **cfg), tmp_path / "twice", progress=False)
    twice = train_autoencoder(images, AE, AutoencoderTrainConfig(steps=6, **cfg), tmp_path / "twice", progress=False)
    _assert_bitwise_equal(_state(once), _state(twice))


def test_autoencoder_learns_and_round_trips(tmp_path):
    # One flat random colour per image: learnable in a few dozen steps.
    rng = np.random.default_rng(0)
    images = np.broadcast_to(rng.integers(0, 256, (12, 1, 1, 3), dtype=np.uint8), (12, 32, 32, 3)).copy()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1

    def error(model) -> float:
        with torch.no_grad():
            return (model.decoder(model.encode(x)) - x).abs().mean().item()

    short = train_autoencoder(images, AE, AutoencoderTrainConfig(steps=2, batch_size=6, lr=3e-3), tmp_path / "a",
                              progress=False)
    first = error(short)
    model = train_autoencoder(images, AE, AutoencoderTrainConfig(steps=40, batch_size=6, lr=3e-3), tmp_path / "b",
                              progress=False)
    assert error(model) < 0.95 * first
    save_autoencoder(model, tmp_path / "out")
    _assert_bitwise_equal(_state(model), _state(load_autoencoder(tmp_path / "out")))
    with pytest.raises(FileNotFoundError, match="no trained autoencoder"):
        load_autoencoder(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("retrieval", ["exclude-self", "include-self", "none"])
def test_denoiser_resume_is_bitwise_exact(images, tmp_path, retrieval):
    def run(steps: int, directory) -> dict:
        torch.manual_seed(123)
        model = RissoleModel(MODEL if retrieval != "none" else NO_RETRIEVAL)
        cfg = DenoiserTrainConfig(steps=steps, batch_size=3, checkpoint_every=100, retrieval=retrieval)
        return _state(train_denoiser(images, model, cfg, directory, progress=False).unet)

    once = run(4, tmp_path / "once")
    run(2, tmp_path / "twice")
    _assert_bitwise_equal(once, run(4, tmp_path / "twice"))


@pytest.mark.parametrize("config,retrieval", [(MODEL, "none"), (NO_RETRIEVAL, "exclude-self"),
                                              (NO_RETRIEVAL, "include-self")])
def test_retrieval_mode_must_match_the_model(images, tmp_path, config, retrieval):
    with pytest.raises(ValueError, match="needs a model with"):
        train_denoiser(images, RissoleModel(config), DenoiserTrainConfig(steps=1, batch_size=2, retrieval=retrieval),
                       tmp_path, progress=False)


def test_denoiser_checkpoint_of_another_setup_is_refused(images, tmp_path):
    train_denoiser(images, RissoleModel(MODEL), DenoiserTrainConfig(steps=1, batch_size=2), tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(train.batch_size: 2 -> 3\)"):
        train_denoiser(images, RissoleModel(MODEL), DenoiserTrainConfig(steps=2, batch_size=3), tmp_path, progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(images, tmp_path):
    model = RissoleModel(MODEL)
    calls = []

    def poison_fourth_call(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) == 4 else output

    model.unet.out_conv.register_forward_hook(poison_fourth_call)
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        train_denoiser(images, model, DenoiserTrainConfig(steps=6, batch_size=2, checkpoint_every=1), tmp_path,
                       progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["modules"]["unet"].values())


def test_cli_trains_both_stages_and_writes_a_loadable_model(images, tmp_path):
    npz = cli_train_tiny(images[:10], tmp_path, 2, "--k", "3")
    common = ["--images", str(npz), "--split", "train_idx", "--image-size", "32", "--batch-size", "2", "--no-progress"]
    model = RissoleModel.load(tmp_path / "run" / "model")
    assert model.config.unet.k == 3 and model.config.image_size == 32
    _assert_bitwise_equal(_state(model.autoencoder), _state(load_autoencoder(tmp_path / "ae")))
    # Asking for more neighbours than the training set has (minus the image itself) is refused.
    assert cli.main(["train", *common, "--steps", "2", "--autoencoder", str(tmp_path / "ae"), "--channels", "16", "32",
                     "--k", "10", "-o", str(tmp_path / "run2")]) == 2


@pytest.mark.slow
def test_channels_last_training_resumes_exactly_and_the_layout_may_change_on_resume(images, tmp_path):
    def run(steps: int, directory, channels_last: bool) -> dict:
        torch.manual_seed(123)
        cfg = DenoiserTrainConfig(steps=steps, batch_size=3, checkpoint_every=100, channels_last=channels_last)
        unet = train_denoiser(images, RissoleModel(MODEL), cfg, directory, progress=False).unet
        assert all(p.is_contiguous() for p in unet.parameters())  # handed back in the default layout
        return _state(unet)

    once = run(4, tmp_path / "once", True)
    run(2, tmp_path / "twice", True)
    _assert_bitwise_equal(once, run(4, tmp_path / "twice", True))
    run(2, tmp_path / "switched", False)  # a contiguous checkpoint continues in channels-last
    switched = run(4, tmp_path / "switched", True)
    assert all(torch.isfinite(v).all() for v in switched.values())

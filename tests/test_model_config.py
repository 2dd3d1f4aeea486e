"""Model configs: JSON round trip and validation errors that name the problem."""

from __future__ import annotations

import dataclasses

import pytest

from rissole_trt.config import AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig


def test_json_round_trip_of_a_non_default_config():
    cfg = ModelConfig(
        autoencoder=AutoencoderConfig(channels=(32, 64), latent_dim=4, n_embeddings=512),
        unet=UNetConfig(latent_channels=4, channels=(32, 64, 128), k=10, block_factor=2, position_embedding=True),
        diffusion=DiffusionConfig(schedule="cosine", n_steps=500),
        image_size=128,
    )
    again = ModelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.unet.channels, tuple) and isinstance(again.unet, UNetConfig)
    assert (cfg.latent_size, cfg.block_size, cfg.n_blocks) == (32, 16, 4)
    assert cfg.unet.cond_channels == 40


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        UNetConfig().k = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UNetConfig(channels=(20, 32)), r"channels \[20, 32\] must all be divisible by n_groups=8"),
        (lambda: AutoencoderConfig(channels=(16, 30)), r"divisible by n_groups=8 \(GroupNorm\), 30 is not"),
        (lambda: UNetConfig(conditioning="cross_attention"), "unknown conditioning 'cross_attention'"),
        (lambda: UNetConfig(k=0), r"UNetConfig\.k must be a positive integer"),
        (lambda: UNetConfig(channels=()), "must not be empty"),
        (lambda: UNetConfig(pos_emb_dim=63), "pos_emb_dim=63 must be even"),
        (lambda: UNetConfig(dropout=1.0), r"dropout must be a number in \[0, 1\)"),
        (lambda: UNetConfig(position_embedding="yes"), "position_embedding must be true or false"),
        (lambda: DiffusionConfig(schedule="exotic"), "unknown schedule 'exotic'"),
        (lambda: DiffusionConfig(beta_1=0.1, beta_2=0.01), "need 0 < beta_1 < beta_2 < 1"),
        (lambda: DiffusionConfig(n_steps=10000), "exceeds the time embedding table"),
        (lambda: ModelConfig(image_size=62), "image_size=62 must be divisible by 2\\*\\*len\\(autoencoder.channels\\)=4"),
        (lambda: ModelConfig(unet=UNetConfig(latent_channels=4)), "latent_channels=4 differs from autoencoder.latent_dim=10"),
        (lambda: ModelConfig(unet=UNetConfig(block_factor=3)), "latent size 16 is not divisible by block_factor=3"),
        (lambda: ModelConfig(unet=UNetConfig(channels=(16, 32, 64, 128))), "multiple of 2\\*\\*len\\(channels\\)=16"),
        (lambda: ModelConfig(unet=UNetConfig(final_kernel_size=3)), "gives 6x6 blocks, not 8x8"),
    ],
)
def test_validation_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_block_factor_three_geometry_of_the_authors_f3_config():
    """rissole_alt's unet_f_3.yaml: 60px images -> 15x15 latents -> 5x5 blocks, padded to 8x8 inside."""
    unet = UNetConfig(block_factor=3, input_kernel_size=2, input_padding=2, final_kernel_size=4, final_padding=0)
    cfg = ModelConfig(unet=unet, image_size=60)
    assert (cfg.block_size, unet.inner_size(cfg.block_size), unet.output_size(cfg.block_size)) == (5, 8, 5)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"image_size": 64, "extra": 1}, r"ModelConfig: unknown keys \['extra'\]"),
        ({"image_size": 64}, r"ModelConfig: missing keys \['autoencoder', 'diffusion', 'unet'\]"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_from_dict_is_strict(data, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_from_dict_names_the_nested_config():
    data = ModelConfig().to_dict()
    data["unet"]["n_heads"] = -1
    with pytest.raises(ValueError, match=r"UNetConfig\.n_heads must be a positive integer"):
        ModelConfig.from_dict(data)
    with pytest.raises(ValueError, match="invalid JSON"):
        ModelConfig.from_json("{")

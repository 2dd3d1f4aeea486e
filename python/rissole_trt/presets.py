"""Model presets for benchmarking with random weights (``rissole-trt bench --preset NAME``).

* ``celeba64``: the paper's CelebA-64 setting (the authors' ``configs/unet.yaml`` with their CelebA
  VQ-GAN): VQ-GAN channels [16, 32], latent 10, codebook 1024 -> latents 10x16x16; UNet channels
  [256, 512], k = 10, 2x2 blocks of 10x8x8. About 49 M UNet parameters and 1.78 GFLOP per block
  (the full forward; the per-step part alone is 1.77 GFLOP).
* ``tiny``: the size of the model shipped as the package default: the same autoencoder, UNet
  channels [48, 96], k = 10, block-position embedding on, dropout 0.1 (docs/default-model.md).

Weights are random (torch's default initialisation under a fixed seed), which is all a speed
measurement needs: the cost of every layer does not depend on the values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import AutoencoderConfig, ModelConfig, UNetConfig
from .errors import InvalidArgumentError

__all__ = ["Preset", "PRESETS", "preset_config", "make_preset_model"]


@dataclass(frozen=True)
class Preset:
    """A named model geometry."""

    name: str
    description: str
    config: ModelConfig


_AUTOENCODER = AutoencoderConfig(channels=(16, 32), latent_dim=10, n_embeddings=1024)

PRESETS: dict[str, Preset] = {
    "celeba64": Preset(
        "celeba64",
        "paper CelebA-64: VQ-GAN [16,32] latent 10 codebook 1024; UNet [256,512], k=10, 2x2 blocks of 10x8x8",
        ModelConfig(
            autoencoder=_AUTOENCODER,
            unet=UNetConfig(latent_channels=10, channels=(256, 512), k=10, block_factor=2),
            image_size=64,
        ),
    ),
    "tiny": Preset(
        "tiny",
        "default-model size: VQ-GAN [16,32] latent 10 codebook 1024; UNet [48,96], k=10, position embedding",
        ModelConfig(
            autoencoder=_AUTOENCODER,
            unet=UNetConfig(latent_channels=10, channels=(48, 96), k=10, block_factor=2,
                            position_embedding=True, dropout=0.1),
            image_size=64,
        ),
    ),
}


def preset_config(name: str) -> ModelConfig:
    """The :class:`ModelConfig` of preset ``name`` (ValueError naming the presets otherwise)."""
    if name not in PRESETS:
        raise InvalidArgumentError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name].config


def make_preset_model(name: str, seed: int = 0):
    """A :class:`rissole_trt.models.RissoleModel` of preset ``name`` with random weights (eval mode).

    The weights depend only on ``seed``; torch's global random state is left untouched.
    """
    from .models.rissole import RissoleModel

    config = preset_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = RissoleModel(config)
    return model.eval()

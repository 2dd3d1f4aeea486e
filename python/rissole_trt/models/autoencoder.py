"""The light VQ-GAN autoencoder of RISSOLE (encode, quantise, decode).

Architecture as in the reference's VQGANLight: the encoder has, per level, a stride-2 4x4 conv,
LeakyReLU(0.2) and a residual block, then self-attention, a residual block and a 3x3 conv to
``latent_dim``; the quantiser maps every latent vector to its nearest codebook row (L2); the
decoder mirrors the encoder with transposed convs and ends in tanh. ``decode`` quantises its
input first, as the reference does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import AutoencoderConfig
from ..errors import InvalidArgumentError
from .layers import Attention, ResBlock

__all__ = ["VQAutoencoder", "Encoder", "Decoder", "VectorQuantizer"]


class _DownLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)
        self.res = ResBlock(out_channels, out_channels, n_groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res(F.leaky_relu(self.conv(x), 0.2))


class _UpLevel(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, n_groups: int) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, n_groups)
        self.upsample = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=4, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.upsample(self.res(x)), 0.2)


class Encoder(nn.Module):
    """Image [B, in_channels, S, S] -> un-quantised latent [B, latent_dim, S/2**L, S/2**L]."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        chans = config.channels
        self.down = nn.ModuleList(
            _DownLevel(c_in, c_out, config.n_groups)
            for c_in, c_out in zip((config.in_channels,) + chans[:-1], chans)
        )
        self.mid_attn = Attention(chans[-1], config.n_heads, config.dim_keys)
        self.mid_res = ResBlock(chans[-1], chans[-1], config.n_groups)
        self.out_conv = nn.Conv2d(chans[-1], config.latent_dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for level in self.down:
            x = level(x)
        # The reference's attention has no residual connection here.
        x = self.mid_res(self.mid_attn(x))
        return self.out_conv(x)


class Decoder(nn.Module):
    """Quantised latent [B, latent_dim, s, s] -> image in [-1, 1] [B, in_channels, s*2**L, s*2**L]."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        chans = config.channels
        self.in_conv = nn.Conv2d(config.latent_dim, chans[-1], kernel_size=3, padding=1)
        self.mid_res = ResBlock(chans[-1], chans[-1], config.n_groups)
        self.mid_attn = Attention(chans[-1], config.n_heads, config.dim_keys)
        rev = tuple(reversed(chans))
        self.up = nn.ModuleList(
            _UpLevel(c_in, c_out, config.n_groups) for c_in, c_out in zip((chans[-1],) + rev[:-1], rev)
        )
        self.out_conv = nn.Conv2d(chans[0], config.in_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.in_conv(z))
        x = self.mid_attn(self.mid_res(x))
        for level in self.up:
            x = level(x)
        return torch.tanh(self.out_conv(x))


class VectorQuantizer(nn.Module):
    """Nearest-codebook-row quantiser. ``codebook`` is [n_embeddings, latent_dim]."""

    def __init__(self, n_embeddings: int, latent_dim: int) -> None:
        super().__init__()
        self.codebook = nn.Parameter(torch.empty(n_embeddings, latent_dim))
        nn.init.uniform_(self.codebook, -1.0 / latent_dim, 1.0 / latent_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, H, W] -> index of the nearest codebook row per position, [B, H, W] int64."""
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        # |z - e|^2 expanded as z^2 + e^2 - 2 z.e, the reference's formula, so that near-ties
        # resolve to the same row.
        distances = (
            flat.pow(2).sum(dim=1, keepdim=True)
            + self.codebook.pow(2).sum(dim=1)
            - 2 * flat @ self.codebook.t()
        )
        return distances.argmin(dim=1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices [B, H, W] -> latent [B, C, H, W]."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Quantise: latent [B, C, H, W] -> nearest codebook rows, same shape."""
        return self.lookup(self.indices(z))


class VQAutoencoder(nn.Module):
    """The light VQ-GAN: ``encode`` (quantised), ``encode_indices``, ``quantize``, ``decode``."""

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quantizer = VectorQuantizer(config.n_embeddings, config.latent_dim)
        self.decoder = Decoder(config)

    @property
    def codebook(self) -> torch.Tensor:
        """The codebook, [n_embeddings, latent_dim]."""
        return self.quantizer.codebook

    def _check_images(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise InvalidArgumentError(
                f"images must be [B, {self.config.in_channels}, H, W], got {list(images.shape)}"
            )
        down = self.config.downsampling
        if images.shape[2] % down or images.shape[3] % down:
            raise InvalidArgumentError(f"image height and width must be multiples of {down}, got {list(images.shape[2:])}")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.config.latent_dim:
            raise InvalidArgumentError(f"latents must be [B, {self.config.latent_dim}, h, w], got {list(z.shape)}")

    def encode_continuous(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> un-quantised latents."""
        self._check_images(images)
        return self.encoder(images)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> quantised latents [B, latent_dim, H/2**L, W/2**L]."""
        return self.quantizer(self.encode_continuous(images))

    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> codebook indices [B, H/2**L, W/2**L] (int64)."""
        return self.quantizer.indices(self.encode_continuous(images))

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Replace every latent vector by its nearest codebook row."""
        self._check_latent(z)
        return self.quantizer(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (quantised first, as the reference does) -> images in [-1, 1]."""
        return self.decoder(self.quantize(z))

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Codebook indices [B, h, w] -> images in [-1, 1]."""
        return self.decoder(self.quantizer.lookup(indices))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction: decode(encode(images))."""
        return self.decoder(self.encode(images))

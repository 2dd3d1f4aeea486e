"""The block denoiser of RISSOLE: a small UNet conditioned on k retrieved neighbour blocks.

Computation (the reference's UNetLight with activate_cond_layer=True, use_addition=True):

1. "add" conditioning: neighbours [N, k*C, h, w] -> 3x3 conv to ch0/2 (``cond_conv``); noisy
   block -> conv to ch0/2 (``x_conv``); sum; parameter-free layer norm over (C, H, W), eps 1e-5;
   3x3 conv to ch0 (``in_conv``). "none" conditioning (the no-retrieval ablation) adds a learned
   per-channel constant (``cond_bias``) instead of the neighbour features: exactly what the neighbour
   conv gives for all-zero neighbours.
2. Down levels: two residual blocks, GroupNorm(1), stride-2 conv; middle: residual block,
   self-attention, residual block; up levels: transposed conv, concat skip, two residual blocks,
   GroupNorm(1); output conv.
3. Every residual block adds a projection of the time embedding (sinusoid -> MLP) after its first
   conv, and, with ``position_embedding``, a projection of the block-position embedding after it
   (the paper-era ``rissole_alt`` variant).

The middle self-attention is built the way the reference builds it: the YAML's ``n_heads`` and
``dim_keys`` land swapped in its constructor, so it has ``dim_keys`` heads of ``n_heads`` dims
each, scaled by ``n_heads**-0.5`` (64 heads of 4 dims for the default config).

Hoisting: the forward is split so that work constant across timesteps runs once.
``condition(cond)`` (the neighbour conv), ``embed_time(t)`` and ``embed_pos(pos)`` (all per-block
projections of the embeddings, concatenated) are computed once per generation; the per-step
``forward_hoisted`` takes their results. ``forward`` is the composition of the four.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import SINUSOID_ROWS, UNetConfig
from .layers import Attention, SinusoidEmbedding, UNetResBlock
from ..errors import InvalidArgumentError

__all__ = ["BlockUNet"]


class _DownLevel(nn.Module):
    def __init__(self, in_channels: int, channels: int, make_res) -> None:
        super().__init__()
        self.res1 = make_res(in_channels, channels)
        self.res2 = make_res(channels, channels)
        self.norm = nn.GroupNorm(1, channels)
        self.downsample = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class _UpLevel(nn.Module):
    def __init__(self, in_channels: int, channels: int, make_res) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1)
        self.res1 = make_res(in_channels + channels, channels)
        self.res2 = make_res(channels, channels)
        self.norm = nn.GroupNorm(1, channels)


class BlockUNet(nn.Module):
    """Predicts the noise ε of a latent block given its k retrieved neighbour blocks."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        chans = config.channels
        emb = config.time_emb_dim

        def make_res(c_in: int, c_out: int) -> UNetResBlock:
            return UNetResBlock(c_in, c_out, emb, config.n_groups, config.dropout, config.position_embedding)

        self.time_embed = SinusoidEmbedding(SINUSOID_ROWS, config.pos_emb_dim, emb)
        self.pos_embed = SinusoidEmbedding(SINUSOID_ROWS, config.pos_emb_dim, emb) if config.position_embedding else None

        half = chans[0] // 2
        kernel, pad = config.input_kernel_size, config.input_padding
        self.x_conv = nn.Conv2d(config.latent_channels, half, kernel_size=kernel, padding=pad)
        if config.uses_retrieval:
            self.cond_conv = nn.Conv2d(config.cond_channels, half, kernel_size=kernel, padding=pad)
        else:
            self.cond_bias = nn.Parameter(torch.zeros(half))
        self.in_conv = nn.Conv2d(half, chans[0], kernel_size=3, padding=config.init_padding)

        self.down = nn.ModuleList(
            _DownLevel(c_in, c, make_res) for c_in, c in zip((chans[0],) + chans[:-1], chans)
        )
        self.mid_res1 = make_res(chans[-1], chans[-1])
        # Swapped on purpose, as in the reference: dim_keys heads of n_heads dims.
        self.mid_attn = Attention(chans[-1], n_heads=config.dim_keys, head_dim=config.n_heads)
        self.mid_res2 = make_res(chans[-1], chans[-1])
        rev = tuple(reversed(chans))
        self.up = nn.ModuleList(
            _UpLevel(c_in, c, make_res) for c_in, c in zip((chans[-1],) + rev[:-1], rev)
        )
        self.out_conv = nn.Conv2d(
            chans[0], config.latent_channels,
            kernel_size=config.final_kernel_size, padding=config.final_padding,
        )

        # Column range of every residual block inside the concatenated embedding biases, in
        # forward order (module registration order is forward order here).
        self._res_blocks = [m for m in self.modules() if isinstance(m, UNetResBlock)]
        start = 0
        for block in self._res_blocks:
            block.bias_slice = (start, start + block.out_channels)
            start += block.out_channels
        self.embedding_width = start

    # ----------------------------------------------------------------- hoisted parts

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        """Neighbour conv: stacked neighbour blocks [N, k*C, h, w] -> [N, ch0/2, h', w'].

        Constant across timesteps: compute once per generation. A model without retrieval takes
        [N, 0, h, w] (no neighbours) and returns its learned constant at that shape.
        """
        expected = self.config.cond_channels
        if cond.ndim != 4 or cond.shape[1] != expected:
            what = (f"k={self.config.k} neighbours of {self.config.latent_channels} channels"
                    if self.config.uses_retrieval else "this model uses no retrieval")
            raise InvalidArgumentError(f"cond must be [N, k*C={expected}, h, w] ({what}), got {list(cond.shape)}")
        if self.config.uses_retrieval:
            return self.cond_conv(cond)
        kernel, pad = self.config.input_kernel_size, self.config.input_padding
        n, _, h, w = cond.shape
        size = (h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1)
        return self.cond_bias.view(1, -1, 1, 1).expand(n, -1, *size)

    def embed_time(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps [T] -> every residual block's time bias, concatenated: [T, embedding_width].

        For a sampler: ``table = embed_time(torch.arange(n_steps))`` once, then per step pass
        ``table[t:t+1]`` (all rows at the same t) or ``table[t_rows]`` to :meth:`forward_hoisted`.
        """
        emb = self.time_embed(t)
        return torch.cat([block.time_proj(emb) for block in self._res_blocks], dim=1)

    def embed_pos(self, pos: torch.Tensor | None) -> torch.Tensor | None:
        """Block positions [N] -> every residual block's position bias, concatenated: [N, embedding_width].

        None when the model has no position embedding (``pos`` is then ignored).
        """
        if self.pos_embed is None:
            return None
        if pos is None:
            raise InvalidArgumentError("this model uses the block-position embedding: pos (block positions) is required")
        emb = self.pos_embed(pos)
        return torch.cat([block.pos_proj(emb) for block in self._res_blocks], dim=1)

    # ----------------------------------------------------------------- per-step part

    def forward_hoisted(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                        pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """One denoiser evaluation from precomputed parts.

        Args:
            x: noisy blocks [N, C, h, w].
            cond_feat: :meth:`condition` of the neighbours, [N, ch0/2, h', w'].
            time_bias: rows of :meth:`embed_time`, [N or 1, embedding_width].
            pos_bias: :meth:`embed_pos` of the block positions, [N or 1, embedding_width], or
                None for a model without position embedding.
        Returns:
            ε prediction [N, C, h, w].
        """
        if (pos_bias is None) != (self.pos_embed is None):
            raise InvalidArgumentError(
                "pos_bias is required for a model with position embedding and must be None without one"
            )
        h = self.x_conv(x) + cond_feat
        # The reference builds a fresh, never-trained LayerNorm over (C, H, W) here: weight 1,
        # bias 0, eps 1e-5. A one-group group norm is the same normalisation and, unlike
        # layer_norm, needs no shape argument, so it traces and exports with a dynamic batch.
        h = F.group_norm(h, 1, eps=1e-5)
        h = self.in_conv(h)

        skips = []
        for level in self.down:
            h = self._res(level.res2, self._res(level.res1, h, time_bias, pos_bias), time_bias, pos_bias)
            h = level.norm(h)
            skips.append(h)
            h = level.downsample(h)
        h = self._res(self.mid_res1, h, time_bias, pos_bias)
        h = self.mid_attn(h)
        h = self._res(self.mid_res2, h, time_bias, pos_bias)
        for level in self.up:
            h = torch.cat((level.upsample(h), skips.pop()), dim=1)
            h = self._res(level.res2, self._res(level.res1, h, time_bias, pos_bias), time_bias, pos_bias)
            h = level.norm(h)
        return self.out_conv(h)

    @staticmethod
    def _res(block: UNetResBlock, h: torch.Tensor, time_bias: torch.Tensor,
             pos_bias: torch.Tensor | None) -> torch.Tensor:
        a, b = block.bias_slice
        return block(h, time_bias[:, a:b], None if pos_bias is None else pos_bias[:, a:b])

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                pos: torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction for noisy blocks x [N, C, h, w], neighbours cond [N, k*C, h, w],
        timesteps t [N] and block positions pos [N] (ignored without position embedding)."""
        return self.forward_hoisted(x, self.condition(cond), self.embed_time(t), self.embed_pos(pos))

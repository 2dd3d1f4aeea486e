"""The block denoiser of RISSOLE: a small UNet conditioned on k retrieved neighbour blocks.

Computation (the reference's UNetLight with activate_cond_layer=True, use_addition=True):

1. "add" conditioning: neighbours [N, k*C, h, w] -> 3x3 conv to ch0/2 (``cond_conv``); noisy
   block -> conv to ch0/2 (``x_conv``); sum; parameter-free layer norm over (C, H, W), eps 1e-5;
   3x3 conv to ch0 (``in_conv``). "none" conditioning (the no-retrieval ablation) adds a learned
   per-channel constant (``cond_bias``) instead of the neighbour features: exactly what the neighbour
   conv gives for all-zero neighbours. "xattn" conditioning keeps that input path and lets the
   neighbours in through cross-attention layers (below).
2. Down levels: two residual blocks, GroupNorm(1), stride-2 conv; middle: residual block,
   self-attention, residual block; up levels: transposed conv, concat skip, two residual blocks,
   GroupNorm(1); output conv.
3. Every residual block adds a projection of the time embedding (sinusoid -> MLP) after its first
   conv, and, with ``position_embedding``, a projection of the block-position embedding after it
   (the paper-era ``rissole_alt`` variant).

Cross-attention ("xattn"): the context of a block is its k neighbours' blocks as k·bs² tokens,
neighbour-major (token j·bs² + s is position s of neighbour j); ``context_embed`` embeds a token
linearly plus a learned in-block position embedding. A :class:`CrossAttention` layer sits after the
second residual block of the down and up levels that ``xattn_levels`` names and after the middle
self-attention when it names ``len(channels)``. Keys and values are linear in the context, so
``condition`` computes all layers' keys and values once per generation, and ``xattn_tables`` turns
them into per-layer tables over the codebook and the in-block positions for the fused Triton kernel.

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
from torch import nn

from ..config import SINUSOID_ROWS, UNetConfig
from ..errors import InvalidArgumentError
from .layers import Attention, ContextEmbedding, CrossAttention, SinusoidEmbedding, UNetResBlock

__all__ = ["BlockUNet"]


class _DownLevel(nn.Module):
    def __init__(self, in_channels: int, channels: int, make_res, xattn: CrossAttention | None) -> None:
        super().__init__()
        self.res1 = make_res(in_channels, channels)
        self.res2 = make_res(channels, channels)
        self.xattn = xattn
        self.norm = nn.GroupNorm(1, channels)
        self.downsample = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)


class _UpLevel(nn.Module):
    def __init__(self, in_channels: int, channels: int, make_res, xattn: CrossAttention | None) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, kernel_size=4, stride=2, padding=1)
        self.res1 = make_res(in_channels + channels, channels)
        self.res2 = make_res(channels, channels)
        self.xattn = xattn
        self.norm = nn.GroupNorm(1, channels)


class BlockUNet(nn.Module):
    """Predicts the noise ε of a latent block given its k retrieved neighbour blocks."""

    def __init__(self, config: UNetConfig, block_size: int | None = None) -> None:
        """``block_size`` (the latent block's side) is needed by the "xattn" mode only: it sizes the
        in-block position embedding of the context tokens."""
        super().__init__()
        self.config = config
        chans = config.channels
        emb = config.time_emb_dim
        xattn = config.conditioning == "xattn"
        if xattn and block_size is None:
            raise InvalidArgumentError("an xattn BlockUNet needs block_size (it sizes the in-block position embedding)")
        self.block_size = block_size

        def make_res(c_in: int, c_out: int) -> UNetResBlock:
            return UNetResBlock(c_in, c_out, emb, config.n_groups, config.dropout, config.position_embedding)

        def make_xattn(level: int, channels: int) -> CrossAttention | None:
            if level not in config.xattn_levels:
                return None
            return CrossAttention(channels, config.xattn_context_dim, config.xattn_heads, config.xattn_head_dim,
                                  config.n_groups)

        self.time_embed = SinusoidEmbedding(SINUSOID_ROWS, config.pos_emb_dim, emb)
        self.pos_embed = SinusoidEmbedding(SINUSOID_ROWS, config.pos_emb_dim, emb) if config.position_embedding else None

        half = chans[0] // 2
        kernel, pad = config.input_kernel_size, config.input_padding
        self.x_conv = nn.Conv2d(config.latent_channels, half, kernel_size=kernel, padding=pad)
        if config.conditioning == "add":
            self.cond_conv = nn.Conv2d(config.cond_channels, half, kernel_size=kernel, padding=pad)
        else:
            self.cond_bias = nn.Parameter(torch.zeros(half))
        if xattn:
            self.context_embed = ContextEmbedding(config.latent_channels, config.xattn_context_dim, block_size ** 2)
        # The reference builds a fresh, never-trained LayerNorm over (C, H, W) before in_conv: weight 1,
        # bias 0, eps 1e-5. A one-group group norm without affine parameters is the same normalisation
        # and, unlike layer_norm, needs no shape argument, so it traces and exports with a dynamic batch.
        self.in_norm = nn.GroupNorm(1, half, eps=1e-5, affine=False)
        self.in_conv = nn.Conv2d(half, chans[0], kernel_size=3, padding=config.init_padding)

        self.down = nn.ModuleList(
            _DownLevel(c_in, c, make_res, make_xattn(i, c))
            for i, (c_in, c) in enumerate(zip((chans[0],) + chans[:-1], chans))
        )
        self.mid_res1 = make_res(chans[-1], chans[-1])
        # Swapped on purpose, as in the reference: dim_keys heads of n_heads dims.
        self.mid_attn = Attention(chans[-1], n_heads=config.dim_keys, head_dim=config.n_heads)
        self.mid_xattn = make_xattn(len(chans), chans[-1])
        self.mid_res2 = make_res(chans[-1], chans[-1])
        rev = tuple(reversed(chans))
        self.up = nn.ModuleList(
            _UpLevel(c_in, c, make_res, make_xattn(len(chans) - 1 - i, c))
            for i, (c_in, c) in enumerate(zip((chans[-1],) + rev[:-1], rev))
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
        # The same for the cross-attention layers' keys and values inside the hoisted context.
        self._xattn_layers = [m for m in self.modules() if isinstance(m, CrossAttention)]
        start = 0
        for index, layer in enumerate(self._xattn_layers):
            layer.index = index
            layer.kv_slice = (start, start + 2 * layer.hidden)
            start += 2 * layer.hidden
        self.context_width = start

    # ----------------------------------------------------------------- hoisted parts

    def condition(self, cond: torch.Tensor) -> torch.Tensor:
        """The neighbours' contribution, constant across timesteps: compute once per generation.

        Stacked neighbour blocks [N, k*C, h, w] -> "add": the neighbour conv, [N, ch0/2, h', w'];
        "xattn": every cross-attention layer's keys and values of the k*h*w context tokens,
        concatenated, [N, k*h*w, context_width]; "none": the model takes [N, 0, h, w] (no
        neighbours) and returns its learned constant at the "add" shape.
        """
        expected = self.config.cond_channels
        if cond.ndim != 4 or cond.shape[1] != expected:
            what = (f"k={self.config.k} neighbours of {self.config.latent_channels} channels"
                    if self.config.uses_retrieval else "this model uses no retrieval")
            raise InvalidArgumentError(f"cond must be [N, k*C={expected}, h, w] ({what}), got {list(cond.shape)}")
        mode = self.config.conditioning
        if mode == "add":
            return self.cond_conv(cond)
        if mode == "xattn":
            context = self.context_embed(self.context_tokens(cond))
            return torch.cat([layer.to_kv(context) for layer in self._xattn_layers], dim=-1)
        kernel, pad = self.config.input_kernel_size, self.config.input_padding
        n, _, h, w = cond.shape
        size = (h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1)
        return self.cond_bias.view(1, -1, 1, 1).expand(n, -1, *size)

    def context_tokens(self, cond: torch.Tensor) -> torch.Tensor:
        """Stacked neighbour blocks [N, k*C, bs, bs] -> tokens [N, k*bs², C], neighbour-major."""
        n, _, h, w = cond.shape
        if (h, w) != (self.block_size, self.block_size):
            raise InvalidArgumentError(f"this xattn model takes {self.block_size}x{self.block_size} blocks, got {h}x{w}")
        c = self.config.latent_channels
        return cond.reshape(n, -1, c, h * w).transpose(2, 3).reshape(n, -1, c)

    def cond_feat_shape(self, block_size: int) -> tuple[int, ...]:
        """Shape of one row of :meth:`condition`'s output for ``block_size`` blocks."""
        config = self.config
        if config.conditioning == "xattn":
            return (config.k * block_size ** 2, self.context_width)
        side = block_size + 2 * config.input_padding - config.input_kernel_size + 1
        return (config.channels[0] // 2, side, side)

    @torch.no_grad()
    def xattn_tables(self, codebook: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per cross-attention layer (forward order), its keys and values of every possible token.

        A token's embedding is linear in its codebook row, so a layer's key of code c at in-block
        position s is ``k_codes[c] + k_pos[s]`` (the same for values), with ``k_codes`` /
        ``v_codes`` [n_codes, heads, head_dim] and ``k_pos`` / ``v_pos`` [bs², heads, head_dim]:
        computed once per model, the tables :func:`rissole_trt.kernels.gather_xattn` reads through
        the database's codes.
        """
        if self.config.conditioning != "xattn":
            raise InvalidArgumentError(f"only an xattn model has cross-attention tables (this one is "
                                       f"{self.config.conditioning!r})")
        if codebook.ndim != 2 or codebook.shape[1] != self.config.latent_channels:
            raise InvalidArgumentError(f"codebook must be [n_codes, {self.config.latent_channels}], got {list(codebook.shape)}")
        embed = self.context_embed
        code_emb = codebook.to(embed.linear.weight) @ embed.linear.weight.t()  # [n_codes, D]
        pos_emb = embed.position + embed.linear.bias  # [bs², D]
        tables = []
        for layer in self._xattn_layers:
            heads = (layer.n_heads, layer.head_dim)
            k_codes, v_codes = layer.to_kv(code_emb).unflatten(1, (2,) + heads).unbind(1)
            k_pos, v_pos = layer.to_kv(pos_emb).unflatten(1, (2,) + heads).unbind(1)
            tables.append({"k_codes": k_codes.contiguous(), "v_codes": v_codes.contiguous(),
                           "k_pos": k_pos.contiguous(), "v_pos": v_pos.contiguous()})
        return tables

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
            cond_feat: :meth:`condition` of the neighbours ([N, ch0/2, h', w'], or the
                cross-attention keys and values [N, T, context_width] in "xattn" mode).
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
        xattn = self.config.conditioning == "xattn"
        h = self.x_conv(x) + (self.cond_bias.view(1, -1, 1, 1) if xattn else cond_feat)
        h = self.in_conv(self.in_norm(h))

        skips = []
        for level in self.down:
            h = self._res(level.res2, self._res(level.res1, h, time_bias, pos_bias), time_bias, pos_bias)
            h = self._xattn(level.xattn, h, cond_feat)
            h = level.norm(h)
            skips.append(h)
            h = level.downsample(h)
        h = self._res(self.mid_res1, h, time_bias, pos_bias)
        h = self._xattn(self.mid_xattn, self.mid_attn(h), cond_feat)
        h = self._res(self.mid_res2, h, time_bias, pos_bias)
        for level in self.up:
            h = torch.cat((level.upsample(h), skips.pop()), dim=1)
            h = self._res(level.res2, self._res(level.res1, h, time_bias, pos_bias), time_bias, pos_bias)
            h = self._xattn(level.xattn, h, cond_feat)
            h = level.norm(h)
        return self.out_conv(h)

    @staticmethod
    def _xattn(layer: CrossAttention | None, h: torch.Tensor, context) -> torch.Tensor:
        if layer is None:
            return h
        if isinstance(context, torch.Tensor):  # the hoisted keys and values of condition()
            a, b = layer.kv_slice
            return layer(h, context[:, :, a:b])
        # A context that attends itself, e.g. the Triton backend's fused kernel over the database's codes.
        return layer(h, attend=context.attention(layer.index))

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

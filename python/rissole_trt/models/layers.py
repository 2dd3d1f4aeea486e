"""Building blocks shared by the autoencoder and the block UNet.

Numerics follow the authors' reference (rissole_main/model/layers): GroupNorm with torch's
default eps (1e-5), attention scaled by head_dim**-0.5, sinusoid tables computed in float32 with
sin in even and cos in odd columns.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError

__all__ = ["sinusoid_table", "SinusoidEmbedding", "Attention", "ContextEmbedding", "CrossAttention", "ResBlock",
           "UNetResBlock"]


def sinusoid_table(n_rows: int, dim: int) -> torch.Tensor:
    """Fixed float32 sinusoid table [n_rows, dim]: row r, columns 2i / 2i+1 = sin / cos(r / 10000**(2i/dim))."""
    if dim % 2:
        raise InvalidArgumentError(f"sinusoid dim must be even, got {dim}")
    rows = torch.arange(0, n_rows, dtype=torch.float32).unsqueeze(1)
    two_i = torch.arange(0, dim, 2, dtype=torch.float32)
    # Same expression and dtype as the reference so that the table matches it bit for bit.
    denom = 10000 ** (two_i / dim)
    table = torch.zeros(n_rows, dim)
    table[:, 0::2] = torch.sin(rows / denom)
    table[:, 1::2] = torch.cos(rows / denom)
    return table


class SinusoidEmbedding(nn.Module):
    """Integer index -> fixed sinusoid row -> Linear -> SiLU -> Linear.

    Used for the diffusion timestep and for the block position. The table is a non-persistent
    buffer: it is a pure function of its size, so it is not stored with the weights.
    """

    def __init__(self, n_rows: int, sinusoid_dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("table", sinusoid_table(n_rows, sinusoid_dim), persistent=False)
        self.linear_1 = nn.Linear(sinusoid_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """index: integer tensor [N] -> [N, out_dim]."""
        rows = torch.index_select(self.table, 0, index.reshape(-1).long())
        return self.linear_2(F.silu(self.linear_1(rows)))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (1x1 conv projections)."""

    def __init__(self, channels: int, n_heads: int, head_dim: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        hidden = n_heads * head_dim
        self.qkv = nn.Conv2d(channels, 3 * hidden, kernel_size=1, bias=False)
        self.out = nn.Conv2d(hidden, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        # qkv channels are [q | k | v], each head-major: channel = head * head_dim + d.
        qkv = self.qkv(x).reshape(-1, 3, self.n_heads, self.head_dim, h * w)
        q, k, v = qkv.unbind(1)  # [B, heads, d, n]
        sim = torch.matmul((q * self.scale).transpose(-2, -1), k)  # [B, heads, n_q, n_k]
        attn = sim.softmax(dim=-1)
        res = torch.matmul(attn, v.transpose(-2, -1))  # [B, heads, n, d]
        res = res.transpose(-2, -1).reshape(-1, self.n_heads * self.head_dim, h, w)
        return self.out(res)


class ContextEmbedding(nn.Module):
    """Context tokens of the ``xattn`` mode: a linear map of the token's latent vector plus a learned
    embedding of its position inside the block.

    Linear in the latent vector on purpose: every token is a codebook row, so its embedding (and any
    linear projection of it, such as a layer's keys and values) is a row of a table over the codebook
    plus a row of a table over in-block positions (:meth:`BlockUNet.xattn_tables`).
    """

    def __init__(self, latent_channels: int, context_dim: int, positions: int) -> None:
        super().__init__()
        self.linear = nn.Linear(latent_channels, context_dim)
        self.position = nn.Parameter(torch.randn(positions, context_dim) * 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [N, k*positions, C], neighbour-major (token j*positions + s) -> [N, k*positions, D]."""
        n, t, _ = tokens.shape
        positions = self.position.shape[0]
        emb = self.linear(tokens).reshape(n, t // positions, positions, -1) + self.position
        return emb.reshape(n, t, -1)


class CrossAttention(nn.Module):
    """Residual multi-head attention of a feature map's pixels over context tokens.

    Queries come from the (group-normalised) features, keys and values from the context through one
    bias-free linear map (``to_kv``), so :meth:`BlockUNet.condition` computes them once per
    generation and the per-step forward takes them ready. The output projection starts at zero: a
    freshly made layer is the identity.
    """

    def __init__(self, channels: int, context_dim: int, n_heads: int, head_dim: int, n_groups: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = head_dim
        self.hidden = n_heads * head_dim
        self.scale = head_dim ** -0.5
        self.norm = nn.GroupNorm(n_groups, channels)
        self.to_q = nn.Conv2d(channels, self.hidden, kernel_size=1, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * self.hidden, bias=False)  # columns [keys | values], head-major
        self.out = nn.Conv2d(self.hidden, channels, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        # This layer's place among the UNet's cross-attention layers (forward order) and the columns of
        # its keys and values inside the hoisted context (set by the UNet).
        self.index = 0
        self.kv_slice = (0, 2 * self.hidden)

    def queries(self, x: torch.Tensor) -> torch.Tensor:
        """Features [N, channels, h, w] -> queries [N, h*w, heads, head_dim]."""
        n, _, h, w = x.shape
        return self.to_q(self.norm(x)).reshape(n, self.n_heads, self.head_dim, h * w).permute(0, 3, 1, 2)

    def attend(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """Queries [N, Lq, H, dh] over this layer's keys/values kv [N, T, 2*H*dh] -> [N, Lq, H, dh]."""
        n, t, _ = kv.shape
        keys, values = kv.unflatten(2, (2, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)  # [N, H, T, dh] views
        # Fused attention reads the strided views of the hoisted keys and values in place; the two
        # matmuls of Attention would copy all of them every step.
        return F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, scale=self.scale).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor | None = None, attend=None) -> torch.Tensor:
        """x + attention of x's pixels over the context: given as this layer's keys and values ``kv``,
        or as ``attend(q) -> [N, Lq, H, dh]`` (a fused kernel reading the neighbours' codes)."""
        n, _, h, w = x.shape
        q = self.queries(x)
        res = self.attend(q, kv) if attend is None else attend(q)  # [N, Lq, H, dh]
        return x + self.out(res.permute(0, 2, 3, 1).reshape(n, self.hidden, h, w))


class ResBlock(nn.Module):
    """Autoencoder residual block: (conv3x3, GroupNorm, SiLU) x 2 plus a (1x1 conv) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, n_groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(n_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(n_groups, out_channels)
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.norm1(self.conv1(x)))
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class UNetResBlock(nn.Module):
    """UNet residual block: conv, GroupNorm, Dropout, SiLU, + time bias (+ position bias), again, + shortcut.

    The per-block projections of the time and position embeddings (``time_proj``, ``pos_proj``)
    live here but are applied by the UNet's ``embed_time`` / ``embed_pos``, so that the forward
    takes ready biases and nothing timestep-dependent is recomputed per step.
    """

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, n_groups: int,
                 dropout: float, position_embedding: bool) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm1 = nn.GroupNorm(n_groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = nn.GroupNorm(n_groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        self.time_proj = nn.Linear(emb_dim, out_channels)
        self.pos_proj = nn.Linear(emb_dim, out_channels) if position_embedding else None
        # Columns of this block's bias inside the UNet's concatenated embedding (set by the UNet).
        self.bias_slice = (0, out_channels)

    def forward(self, x: torch.Tensor, time_bias: torch.Tensor, pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [N, Cin, H, W]; time_bias / pos_bias [N or 1, Cout] (already projected)."""
        h = F.silu(self.dropout(self.norm1(self.conv1(x))))
        h = h + time_bias[:, :, None, None]
        if pos_bias is not None:
            h = h + pos_bias[:, :, None, None]
        h = F.silu(self.dropout(self.norm2(self.conv2(h))))
        return h + self.skip(x)

"""What the attention kernels share: the masked attention of their torch references and the
online-softmax update of their Triton loops (flash-attention's running max and running sum)."""
from __future__ import annotations

import torch


def masked_attention_reference(q, keys, values, mask, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """``q [R, Lq, H, dh]`` over ``keys``/``values [R, T, H, dh]`` with ``mask [R, T]`` (True = attend, or
    None) in ``dtype`` arithmetic, softmax in fp32; a row with nothing to attend to gives zeros."""
    scores = torch.einsum("rqhd,rthd->rhqt", q.to(dtype), keys.to(dtype)) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores.float(), dim=-1), nan=0.0).to(dtype)  # all -inf -> NaN -> 0
    return torch.einsum("rhqt,rthd->rqhd", weights, values.to(dtype)).to(q.dtype)


try:  # the kernels import Triton from here; without it their torch references still work
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None

if triton is not None:

    @triton.jit
    def load_query_tile(q_ptr, Lq, H, DH, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        """This program's (row, head, block of queries) of ``q [R, Lq, H, DH]``: the tile, its int64
        offsets (the output's too) and mask, and fresh online-softmax state."""
        row = tl.program_id(0).to(tl.int64)
        head = tl.program_id(1).to(tl.int64)
        offs_q = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_d = tl.arange(0, BLOCK_D)
        q_mask = (offs_q[:, None] < Lq) & (offs_d[None, :] < DH)
        q_offs = ((row * Lq + offs_q[:, None].to(tl.int64)) * H + head) * DH + offs_d[None, :]
        q = tl.load(q_ptr + q_offs, mask=q_mask, other=0.0)
        m_i = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_Q,), tl.float32)
        acc = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
        return row, head, offs_d, q, q_offs, q_mask, m_i, l_i, acc

    @triton.jit
    def online_softmax_update(q, keys, values, valid, m_i, l_i, acc, scale, PRECISION: tl.constexpr):
        """One tile of tokens: keys/values ``[BLOCK_T, BLOCK_D]`` in q's dtype, ``valid [BLOCK_T]``;
        returns the new (running max, running sum, fp32 accumulator)."""
        scores = tl.dot(q, tl.trans(keys), input_precision=PRECISION) * scale  # [BLOCK_Q, BLOCK_T] fp32
        scores = tl.where(valid[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        # Rows with nothing valid yet keep m = -inf: use 0 as the reference so exp() stays finite.
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_ref)
        p = tl.exp(scores - m_ref[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), values, input_precision=PRECISION)
        return m_new, l_i, acc

    @triton.jit
    def online_softmax_result(acc, l_i):
        """The normalised output; zeros for a row that attended to nothing."""
        return tl.where(l_i[:, None] > 0, acc / tl.where(l_i[:, None] > 0, l_i[:, None], 1.0), 0.0)

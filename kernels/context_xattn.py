"""Cross-attention over a gathered context with the key/value projection fused in.

Where the codebook-table trick of :mod:`.gather_xattn` does not apply (a context embedding that is
not linear in a codebook row, or a context that is not made of database codes), the context tokens
``ctx [R, T, D]`` are given, and each program projects a tile of them to its head's keys and values
(``ctx_tile @ w_k[:, head]``, ``ctx_tile @ w_v[:, head]``) right before the online-softmax update:
the keys and values of the whole context ``[R, T, H, dh]`` never exist in memory, so the kernel
reads D values per token instead of 2·H·dh.

Conventions (checked before launch): ``q [R, Lq, H, dh]``; ``ctx [R, T, D]``; ``w_k`` and ``w_v``
``[D, H·dh]`` (column = head·dh + d, as ``nn.Linear(D, H·dh).weight.t()``), all in one dtype
(fp16/bf16/fp32) with fp32 accumulation; an optional ``mask [R, T]`` (True = attend); a row with
nothing to attend to returns zeros, never NaN; ``scale`` defaults to dh^-1/2.

:func:`context_xattn_reference` is the specification in plain torch.
"""
from __future__ import annotations

import torch

from ._attention import masked_attention_reference, tl, triton

if triton is not None:
    from ._attention import load_query_tile, online_softmax_result, online_softmax_update

__all__ = ["context_xattn", "context_xattn_reference", "check_context_inputs"]


def check_context_inputs(q, ctx, w_k, w_v, mask=None) -> None:
    """Shapes and dtypes; raises ValueError before any launch."""
    if q.ndim != 4:
        raise ValueError(f"q must be [rows, Lq, heads, head_dim], got {list(q.shape)}")
    rows, _, heads, dh = q.shape
    if ctx.ndim != 3 or ctx.shape[0] != rows:
        raise ValueError(f"ctx must be [{rows}, tokens, D], got {list(ctx.shape)}")
    for name, w in (("w_k", w_k), ("w_v", w_v)):
        if w.shape != (ctx.shape[2], heads * dh):
            raise ValueError(f"{name} must be [D={ctx.shape[2]}, heads*head_dim={heads * dh}], got {list(w.shape)}")
    for name, t in (("ctx", ctx), ("w_k", w_k), ("w_v", w_v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} is {t.dtype}, q is {q.dtype}: give them one dtype")
    if mask is not None and (mask.dtype != torch.bool or mask.shape != ctx.shape[:2]):
        raise ValueError(f"mask must be bool [{rows}, {ctx.shape[1]}], got {mask.dtype} {list(mask.shape)}")


def context_xattn_reference(q, ctx, w_k, w_v, mask=None, scale: float | None = None,
                            compute_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Project -> scaled dot-product attention in plain torch; ``compute_dtype`` (default q's) is the arithmetic dtype."""
    check_context_inputs(q, ctx, w_k, w_v, mask)
    dtype = compute_dtype or q.dtype
    rows, _, heads, dh = q.shape
    keys = (ctx.to(dtype) @ w_k.to(dtype)).reshape(rows, -1, heads, dh)
    values = (ctx.to(dtype) @ w_v.to(dtype)).reshape(rows, -1, heads, dh)
    return masked_attention_reference(q, keys, values, mask, dh ** -0.5 if scale is None else scale, dtype)


if triton is not None:

    @triton.jit
    def _context_xattn_kernel(q_ptr, ctx_ptr, wk_ptr, wv_ptr, mask_ptr, out_ptr, scale, Lq, H, DH, T, D,
                              HAS_MASK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr,
                              BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
        row, head, offs_d, q, q_offs, q_mask, m_i, l_i, acc = load_query_tile(q_ptr, Lq, H, DH, BLOCK_Q, BLOCK_D)
        dtype = q_ptr.dtype.element_ty
        offs_c = tl.arange(0, BLOCK_C)
        hd = H * DH
        for t0 in range(0, T, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            valid = offs_t < T
            if HAS_MASK:
                valid = valid & (tl.load(mask_ptr + row * T + offs_t, mask=offs_t < T, other=0) != 0)
            keys = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
            values = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
            for c0 in range(0, D, BLOCK_C):  # keys/values of this tile: ctx_tile @ w[:, head], chunk by chunk of D
                cols = c0 + offs_c
                ctx = tl.load(ctx_ptr + (row * T + offs_t[:, None].to(tl.int64)) * D + cols[None, :],
                              mask=valid[:, None] & (cols[None, :] < D), other=0.0)
                w_offs = cols[:, None].to(tl.int64) * hd + head * DH + offs_d[None, :]
                w_mask = (cols[:, None] < D) & (offs_d[None, :] < DH)
                keys += tl.dot(ctx, tl.load(wk_ptr + w_offs, mask=w_mask, other=0.0), input_precision=PRECISION)
                values += tl.dot(ctx, tl.load(wv_ptr + w_offs, mask=w_mask, other=0.0), input_precision=PRECISION)
            m_i, l_i, acc = online_softmax_update(q, keys.to(dtype), values.to(dtype), valid, m_i, l_i, acc, scale,
                                                  PRECISION)
        out = online_softmax_result(acc, l_i)
        tl.store(out_ptr + q_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def context_xattn(q, ctx, w_k, w_v, mask=None, scale: float | None = None, block_q: int = 16, block_t: int = 32,
                  block_c: int = 32) -> torch.Tensor:
    """The fused kernel: :func:`context_xattn_reference`'s result without materialising the keys and
    values. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    if triton is None:
        raise RuntimeError("context_xattn needs Triton (pip install triton); context_xattn_reference runs without it")
    check_context_inputs(q, ctx, w_k, w_v, mask)
    rows, lq, heads, dh = q.shape
    out = torch.empty_like(q)
    if rows == 0 or lq == 0:
        return out
    grid = (rows, heads, triton.cdiv(lq, block_q))
    mask_arg = ctx if mask is None else mask.to(torch.int8).contiguous()
    _context_xattn_kernel[grid](
        q.contiguous(), ctx.contiguous(), w_k.contiguous(), w_v.contiguous(), mask_arg, out,
        dh ** -0.5 if scale is None else scale, lq, heads, dh, ctx.shape[1], ctx.shape[2],
        HAS_MASK=mask is not None, BLOCK_Q=block_q, BLOCK_T=block_t, BLOCK_D=max(16, triton.next_power_of_2(dh)),
        BLOCK_C=block_c, PRECISION="ieee" if q.dtype == torch.float32 else "tf32")
    return out

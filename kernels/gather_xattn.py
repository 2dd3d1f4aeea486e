"""Neighbour gathering fused with cross-attention, reading the database's uint16 codes directly.

The context of block row r (image b = ``row_image[r]``, block position p = ``row_block[r]``) is
the block p of its k retrieved neighbours: k·bs² tokens, token (j, s) being the codebook row
``codes[p, ids[b, j], s]`` at in-block position s. Because the token embedding is linear in the
codebook row, every layer's key and value of a token is a row of a per-layer table over the
codebook plus a row of a table over in-block positions::

    K[token] = k_codes[code] + k_pos[s]          (k_codes: [n_codes, H, dh], k_pos: [bs², H, dh])
    V[token] = v_codes[code] + v_pos[s]

so the kernel reads 2 bytes of code per context token instead of 2·H·dh·2 bytes of keys and values
— the way paged attention reads its keys and values through a block table. One program handles
one (row, head, block of queries): it streams the context in tiles of tokens, looks up their keys
and values in the tables and keeps an online softmax (running max, running sum) in float32, so
neither the gathered context nor its keys/values ever exist in memory.

Conventions (checked before launch by :func:`gather_xattn`):

* ``q`` ``[R, Lq, H, dh]`` float16/bfloat16/float32; tables in the same dtype; accumulation fp32;
* ``ids`` ``[B, k]`` integer database ids, ``-1`` = no neighbour (its tokens are masked out); any
  other id outside ``[0, N)`` is refused; ids are widened to int64 before address arithmetic;
* a row whose whole context is masked returns zeros, never NaN;
* ``scale`` defaults to dh^-1/2;
* ``sources`` (optional, for windows that straddle blocks, :meth:`ShiftedWindows.token_sources`):
  ``(block, pos)`` int64 ``[W, bs²]``; ``row_block`` then names a window w, and its token (j, s) is
  ``codes[block[w, s], ids[b, j], pos[w, s]]``. Without it, window p is block p itself.

:func:`gather_xattn_reference` is the specification: gather -> embed (table lookups) -> scaled
dot-product attention, in plain torch.
"""
from __future__ import annotations

import torch

from ..ops import code_indices
from ._attention import masked_attention_reference, tl, triton

if triton is not None:
    from ._attention import load_query_tile, online_softmax_result, online_softmax_update

__all__ = ["gather_xattn", "gather_xattn_reference", "check_inputs"]


def check_inputs(q, ids, row_image, row_block, codes, k_codes, v_codes, k_pos, v_pos, sources=None) -> None:
    """Shapes, dtypes and id ranges; raises ValueError / IndexError before any launch."""
    if q.ndim != 4:
        raise ValueError(f"q must be [rows, Lq, heads, head_dim], got {list(q.shape)}")
    rows, _, heads, dh = q.shape
    if codes.dtype != torch.uint16:
        raise ValueError(f"codes must be the database's uint16 codes, got {codes.dtype}")
    if codes.ndim != 4 or codes.shape[2] != codes.shape[3]:
        raise ValueError(f"codes must be [P, N, bs, bs], got {list(codes.shape)}")
    positions = codes.shape[2] * codes.shape[3]
    for name, table, first in (("k_codes", k_codes, None), ("v_codes", v_codes, None),
                               ("k_pos", k_pos, positions), ("v_pos", v_pos, positions)):
        if table.ndim != 3 or tuple(table.shape[1:]) != (heads, dh) or (first is not None and table.shape[0] != first):
            raise ValueError(f"{name} must be [{first or 'n_codes'}, {heads}, {dh}], got {list(table.shape)}")
        if table.dtype != q.dtype:
            raise ValueError(f"{name} is {table.dtype}, q is {q.dtype}: give them one dtype")
    if k_codes.shape[0] != v_codes.shape[0]:
        raise ValueError("k_codes and v_codes must have one row per codebook entry each")
    if ids.ndim != 2 or ids.dtype.is_floating_point:
        raise ValueError(f"ids must be integer [images, k], got {ids.dtype} {list(ids.shape)}")
    if row_image.shape != (rows,) or row_block.shape != (rows,):
        raise ValueError(f"row_image and row_block must be [{rows}]")
    if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= codes.shape[1]):
        raise IndexError(f"neighbour ids must lie in [0, {codes.shape[1]}) (or -1 for none), "
                         f"got {int(ids.min())}..{int(ids.max())}")
    if rows and (int(row_image.min()) < 0 or int(row_image.max()) >= ids.shape[0]):
        raise IndexError(f"row_image must lie in [0, {ids.shape[0]})")
    windows = codes.shape[0] if sources is None else _check_sources(sources, codes.shape[0], positions)
    if rows and (int(row_block.min()) < 0 or int(row_block.max()) >= windows):
        raise IndexError(f"row_block must lie in [0, {windows})")
    # Codes index the tables; the database guarantees they are below its codebook size (checked when
    # the tables are made from that codebook), so they are not scanned on every call.


def _check_sources(sources, blocks: int, positions: int) -> int:
    """The number of windows of ``sources`` (block, pos); ValueError / IndexError for a bad one."""
    block, pos = sources
    if block.shape != pos.shape or block.ndim != 2 or block.shape[1] != positions or block.dtype.is_floating_point:
        raise ValueError(f"sources must be two integer [windows, {positions}] tensors, got {list(block.shape)} "
                         f"and {list(pos.shape)}")
    if int(block.min()) < 0 or int(block.max()) >= blocks or int(pos.min()) < 0 or int(pos.max()) >= positions:
        raise IndexError(f"sources must name blocks in [0, {blocks}) and positions in [0, {positions})")
    return block.shape[0]


def gather_xattn_reference(q, ids, row_image, row_block, codes, k_codes, v_codes, k_pos, v_pos,
                           scale: float | None = None, compute_dtype: torch.dtype | None = None,
                           sources=None) -> torch.Tensor:
    """Gather -> embed -> attention in plain torch; ``compute_dtype`` (default q's) is the arithmetic dtype."""
    check_inputs(q, ids, row_image, row_block, codes, k_codes, v_codes, k_pos, v_pos, sources)
    dtype = compute_dtype or q.dtype
    rows, lq, heads, dh = q.shape
    positions = codes.shape[2] * codes.shape[3]
    neighbours = ids.long()[row_image.long()]  # [R, k]
    valid = neighbours >= 0
    if sources is None:
        tokens = code_indices(codes, row_block.long()[:, None], neighbours.clamp(min=0))  # [R, k, bs, bs]
    else:  # window w's token (j, s): position pos[w, s] of block block[w, s] of neighbour j
        block, at = (t.long()[row_block.long()][:, None, :] for t in sources)  # [R, 1, bs²]
        tokens = code_indices(codes.flatten(2), block, neighbours.clamp(min=0)[:, :, None], at)  # [R, k, bs²]
    tokens = tokens.reshape(rows, -1)  # [R, k*bs²], neighbour-major
    pos = torch.arange(positions, device=q.device).repeat(neighbours.shape[1])  # in-block position of each token
    keys = k_codes.to(dtype)[tokens] + k_pos.to(dtype)[pos]  # [R, T, H, dh]
    values = v_codes.to(dtype)[tokens] + v_pos.to(dtype)[pos]
    mask = valid.repeat_interleave(positions, dim=1)  # [R, T]
    return masked_attention_reference(q, keys, values, mask, dh ** -0.5 if scale is None else scale, dtype)


if triton is not None:

    @triton.jit
    def _gather_xattn_kernel(q_ptr, ids_ptr, row_image_ptr, row_block_ptr, codes_ptr, kc_ptr, vc_ptr, kp_ptr, vp_ptr,
                             src_block_ptr, src_pos_ptr, out_ptr, scale, Lq, H, DH, K_NB, N_DB, POS,
                             BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                             PRECISION: tl.constexpr, WINDOWED: tl.constexpr):
        row, head, offs_d, q, q_offs, q_mask, m_i, l_i, acc = load_query_tile(q_ptr, Lq, H, DH, BLOCK_Q, BLOCK_D)
        dtype = q_ptr.dtype.element_ty
        image = tl.load(row_image_ptr + row).to(tl.int64)
        block = tl.load(row_block_ptr + row).to(tl.int64)
        n_tokens = K_NB * POS
        for t0 in range(0, n_tokens, BLOCK_T):
            offs_t = t0 + tl.arange(0, BLOCK_T)
            in_range = offs_t < n_tokens
            j = offs_t // POS  # neighbour rank
            s = offs_t % POS  # in-block position
            nid = tl.load(ids_ptr + image * K_NB + j, mask=in_range, other=-1).to(tl.int64)
            valid = in_range & (nid >= 0)
            if WINDOWED:  # the window's pixel s lies at position src_pos of block src_block
                src_block = tl.load(src_block_ptr + block * POS + s, mask=in_range, other=0)
                src_pos = tl.load(src_pos_ptr + block * POS + s, mask=in_range, other=0)
                code = tl.load(codes_ptr + (src_block * N_DB + nid) * POS + src_pos, mask=valid, other=0).to(tl.int64)
            else:
                code = tl.load(codes_ptr + (block * N_DB + nid) * POS + s, mask=valid, other=0).to(tl.int64)
            kv_mask = valid[:, None] & (offs_d[None, :] < DH)
            code_offs = (code[:, None] * H + head) * DH + offs_d[None, :]
            pos_offs = (s[:, None].to(tl.int64) * H + head) * DH + offs_d[None, :]
            # Table rows are summed in fp32, then the products run in the input dtype with fp32
            # accumulation (ieee for fp32 inputs: no silent TF32).
            keys = (tl.load(kc_ptr + code_offs, mask=kv_mask, other=0.0).to(tl.float32)
                    + tl.load(kp_ptr + pos_offs, mask=kv_mask, other=0.0).to(tl.float32)).to(dtype)
            values = (tl.load(vc_ptr + code_offs, mask=kv_mask, other=0.0).to(tl.float32)
                      + tl.load(vp_ptr + pos_offs, mask=kv_mask, other=0.0).to(tl.float32)).to(dtype)
            m_i, l_i, acc = online_softmax_update(q, keys, values, valid, m_i, l_i, acc, scale, PRECISION)
        out = online_softmax_result(acc, l_i)
        tl.store(out_ptr + q_offs, out.to(out_ptr.dtype.element_ty), mask=q_mask)


def gather_xattn(q, ids, row_image, row_block, codes, k_codes, v_codes, k_pos, v_pos, scale: float | None = None,
                 block_q: int = 16, block_t: int = 32, sources=None) -> torch.Tensor:
    """The fused kernel: the same result as :func:`gather_xattn_reference`, without materialising the
    gathered context or its keys and values. CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``."""
    if triton is None:
        raise RuntimeError("gather_xattn needs Triton (pip install triton); gather_xattn_reference runs without it")
    check_inputs(q, ids, row_image, row_block, codes, k_codes, v_codes, k_pos, v_pos, sources)
    rows, lq, heads, dh = q.shape
    positions = codes.shape[2] * codes.shape[3]
    # Without sources the kernel reads no source table: row_block stands in for both pointers.
    src_block, src_pos = (row_block, row_block) if sources is None else (t.to(torch.int64).contiguous()
                                                                         for t in sources)
    out = torch.empty_like(q)
    if rows == 0 or lq == 0:
        return out
    grid = (rows, heads, triton.cdiv(lq, block_q))
    _gather_xattn_kernel[grid](
        q.contiguous(), ids.to(torch.int64).contiguous(), row_image.to(torch.int64).contiguous(),
        row_block.to(torch.int64).contiguous(), codes.contiguous(), k_codes.contiguous(), v_codes.contiguous(),
        k_pos.contiguous(), v_pos.contiguous(), src_block, src_pos, out, dh ** -0.5 if scale is None else scale,
        lq, heads, dh, ids.shape[1], codes.shape[1], positions,
        BLOCK_Q=block_q, BLOCK_T=block_t, BLOCK_D=max(16, triton.next_power_of_2(dh)),
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # tf32 is ignored for 16-bit inputs
        WINDOWED=sources is not None)
    return out

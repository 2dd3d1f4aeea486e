"""FLOPs of the model's parts, counted once with ``torch.utils.flop_counter.FlopCounterMode``.

The counter counts matrix products (convolutions, transposed convolutions, matmuls, linear
layers) as 2 FLOPs per multiply-add and ignores element-wise work (norms, activations, adds),
which is under 1% of the UNet's FLOPs here. Costs are linear in the number of block rows, so they
are counted on one image's P rows and reported per row / per image.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "model_flops"]


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` (run once, without gradients)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def model_flops(model) -> dict[str, int]:
    """FLOPs of a :class:`rissole_trt.models.RissoleModel`:

    * ``denoiser_per_row``: one per-step denoiser evaluation of one block (``forward_hoisted``);
    * ``full_forward_per_row``: the UNet's full forward of one block (what the reference runs at
      every step: the neighbour conv and the embeddings included);
    * ``hoisted_per_row``: the step-invariant part of the full forward (their difference);
    * ``time_table``: the time embedding for all T timesteps (once per batch in our pipeline);
    * ``decode_per_image``: the autoencoder's decoder for one latent.
    """
    config = model.config
    device = next(model.parameters()).device
    p, c, bs, k = config.n_blocks, config.autoencoder.latent_dim, config.block_size, config.unet.k
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(p, c, bs, bs, generator=gen).to(device)
    cond = torch.randn(p, k * c, bs, bs, generator=gen).to(device)
    t = torch.full((p,), config.diffusion.n_steps // 2, dtype=torch.long, device=device)
    pos = torch.arange(p, device=device)
    unet = model.unet
    with torch.inference_mode():
        cond_feat = unet.condition(cond)
        time_bias = unet.embed_time(t[:1])
        pos_bias = unet.embed_pos(pos)
    per_step = count_flops(unet.forward_hoisted, x, cond_feat, time_bias, pos_bias)
    full = count_flops(unet, x, cond, t, pos)
    table = count_flops(unet.embed_time, torch.arange(config.diffusion.n_steps, device=device))
    latent = torch.randn(1, c, config.latent_size, config.latent_size, generator=gen).to(device)
    decode = count_flops(model.decode, latent)
    return {
        "denoiser_per_row": per_step // p,
        "full_forward_per_row": full // p,
        "hoisted_per_row": (full - per_step) // p,
        "time_table": table,
        "decode_per_image": decode,
    }

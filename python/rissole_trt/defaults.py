"""Defaults and the names they choose from, in one light module (no torch) so that ``--help`` can
show them cheaply."""

#: Every precision a denoiser may run in (which backend serves which: ``rissole-trt info``).
PRECISIONS = ("fp32", "bf16", "fp16")
#: A built engine's buckets, in images, when none are given (build-engine, TensorRT's own plans).
DEFAULT_BATCH_SIZES = (1, 16, 64)

AUTOENCODER_BATCH_SIZE = 32
AUTOENCODER_LR = 2e-4
DENOISER_BATCH_SIZE = 16  # images per step; the denoiser sees batch_size * P block rows
DENOISER_LR = 2e-4
XATTN_HEADS = 4  # cross-attention layers of the "xattn" conditioning (UNetConfig's defaults too)
XATTN_HEAD_DIM = 16
XATTN_CONTEXT_DIM = 64

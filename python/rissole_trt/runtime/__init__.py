"""Denoiser backends (``torch_backend``: prepacked, channels-last PyTorch in fp32 or bf16)."""

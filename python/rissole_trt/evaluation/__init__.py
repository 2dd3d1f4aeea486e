"""Evaluation of generated images: metrics and the ``rissole-trt eval`` report."""
from .metrics import block_seam_ratio, memorisation_rate, psnr, sliced_wasserstein

__all__ = ["block_seam_ratio", "memorisation_rate", "psnr", "sliced_wasserstein"]

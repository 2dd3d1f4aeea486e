"""Evaluation of generated images: metrics and the ``rissole-trt eval`` report."""
from .fid import domain_fid, frechet_distance
from .metrics import block_seam_ratio, memorisation_rate, psnr, sliced_wasserstein

__all__ = ["block_seam_ratio", "memorisation_rate", "psnr", "sliced_wasserstein", "domain_fid", "frechet_distance"]

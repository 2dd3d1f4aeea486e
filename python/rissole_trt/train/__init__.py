"""Training: the VQ autoencoder (:mod:`.autoencoder`) and the block denoiser (:mod:`.denoiser`).

Both resume exactly from their checkpoint directory and stop within a time budget.
"""
from .autoencoder import AutoencoderTrainConfig, load_autoencoder, save_autoencoder, train_autoencoder
from .denoiser import RETRIEVAL_MODES, DenoiserTrainConfig, train_denoiser

__all__ = [
    "AutoencoderTrainConfig", "train_autoencoder", "save_autoencoder", "load_autoencoder",
    "DenoiserTrainConfig", "train_denoiser", "RETRIEVAL_MODES",
]

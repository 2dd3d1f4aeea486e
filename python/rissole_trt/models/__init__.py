"""The RISSOLE model in PyTorch: VQ autoencoder, block UNet, and the bundle with import/save/load."""

from ..errors import RissoleModelError
from .autoencoder import VQAutoencoder
from .reference import ReferenceImport
from .rissole import BlockDenoiser, RissoleModel
from .unet import BlockUNet

__all__ = ["RissoleModel", "BlockDenoiser", "VQAutoencoder", "BlockUNet", "RissoleModelError", "ReferenceImport"]

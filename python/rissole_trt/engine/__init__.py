"""The Engine and its plans: :mod:`.plan` fixes what a run's images will be (settings, seeds),
:mod:`.pipeline` runs a plan (retrieval, neighbour gather, batch denoiser, sampling loop, decode)."""
from .pipeline import Engine, ProgressCallback, Retrieval, default_asset_paths
from .plan import CLIPS, DEFAULT_SAMPLER, DEFAULT_STEPS, GenerationPlan

__all__ = ["Engine", "GenerationPlan", "Retrieval", "ProgressCallback", "default_asset_paths", "CLIPS",
           "DEFAULT_SAMPLER", "DEFAULT_STEPS"]

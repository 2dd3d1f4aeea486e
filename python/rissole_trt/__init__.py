"""rissole_trt: inference engine for RISSOLE block-wise retrieval-guided latent diffusion models.

Importing the package is cheap: submodules (and the compiled core ``rissole_trt._C``) load on
first use, so ``import rissole_trt`` works even where optional backends are missing.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version as _dist_version
from typing import Any

try:
    __version__ = _dist_version("rissole-trt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# rissole_trt.info is a light module (torch and _C load inside info()). Importing it here, then
# binding the function, keeps `rissole_trt.info` the function even after `import rissole_trt.info`.
from rissole_trt.info import info  # noqa: E402

_LAZY_SUBMODULES = {"ops", "cli", "kernels"}


def __getattr__(name: str) -> Any:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"rissole_trt.{name}")
    raise AttributeError(f"module 'rissole_trt' has no attribute {name!r}")


__all__ = ["__version__", "info", "ops"]

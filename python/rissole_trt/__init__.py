"""rissole_trt: inference engine for RISSOLE block-wise retrieval-guided latent diffusion models.

    import rissole_trt
    engine = rissole_trt.Engine()                      # the built-in model and database
    images = engine.generate(16, seed=0)               # uint8 [16, 64, 64, 3]

Importing the package is cheap: the public classes, submodules and the compiled core
``rissole_trt._C`` load on first use (no torch at import), so ``import rissole_trt`` works even
where optional backends are missing.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from typing import TYPE_CHECKING, Any

try:
    __version__ = _dist_version("rissole-trt")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# rissole_trt.info is a light module (torch and _C load inside info()). Importing it here, then
# binding the function, keeps `rissole_trt.info` the function even after `import rissole_trt.info`.
from rissole_trt.errors import *  # noqa: E402,F401,F403  (light: no imports of its own)
from rissole_trt.errors import __all__ as _ERRORS  # noqa: E402
from rissole_trt.info import info  # noqa: E402

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these load on first use
    from rissole_trt.builder import build_database
    from rissole_trt.engine import Engine, GenerationPlan
    from rissole_trt.models.rissole import RissoleModel
    from rissole_trt.retrieval.database import Database

_LAZY_SUBMODULES = {"ops", "cli", "kernels", "runtime"}
#: public name -> the module defining it
_LAZY_ATTRIBUTES = {
    "Engine": "rissole_trt.engine",
    "GenerationPlan": "rissole_trt.engine",
    "RissoleModel": "rissole_trt.models.rissole",
    "Database": "rissole_trt.retrieval.database",
    "build_database": "rissole_trt.builder",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(_LAZY_ATTRIBUTES[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"rissole_trt.{name}")
    raise AttributeError(f"module 'rissole_trt' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_ATTRIBUTES) | _LAZY_SUBMODULES)


__all__ = ["__version__", "info", "ops", *_LAZY_ATTRIBUTES, *_ERRORS]

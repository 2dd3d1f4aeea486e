"""The old import point of built engines, kept for the modules that still import it (the engine,
the commands, the benchmarks): everything lives in :mod:`rissole_trt.runtime.engine_build`."""
from .engine_build import *  # noqa: F403 - the same public names
from .engine_build import __all__  # noqa: F401

"""The error raised for unusable model files (checkpoints, configs, saved model directories)."""

from __future__ import annotations

from ..errors import RissoleError

__all__ = ["RissoleModelError"]


class RissoleModelError(RissoleError, ValueError):
    """A model file or checkpoint cannot be used; the message names the file and the problem."""

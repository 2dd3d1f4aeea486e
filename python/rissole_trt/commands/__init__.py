"""Subcommands of the ``rissole-trt`` CLI: one module per command, each defining ``register(subparsers)``."""
from __future__ import annotations

from ..errors import InvalidArgumentError


def set_threads(threads: int | None) -> None:
    """Apply a command's ``--threads`` (None: torch's choice); the one check every command uses."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise InvalidArgumentError(f"--threads must be a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(threads)

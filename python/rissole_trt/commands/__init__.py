"""Subcommands of the ``rissole-trt`` CLI: one module per command, each defining ``register(subparsers)``."""
from __future__ import annotations


def set_threads(threads: int | None) -> None:
    """Apply a command's ``--threads`` (None: torch's choice); the one check every command uses."""
    if threads is None:
        return
    import torch

    from ..engine.plan import positive_int

    torch.set_num_threads(positive_int(threads, "--threads"))

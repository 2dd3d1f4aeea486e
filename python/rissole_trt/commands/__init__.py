"""Subcommands of the ``rissole-trt`` CLI: one module per command, each defining ``register(subparsers)``."""

"""Every error a user can cause, in one place.

All derive from :class:`RissoleError`, which the CLI prints as one line (exit code 2); each also
derives from the built-in exception that Python convention expects (``except ValueError`` still
works). Anything else that escapes is a bug in rissole_trt and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["RissoleError", "InvalidArgumentError", "InvalidTypeError", "OutOfRangeError", "MissingFileError",
           "OutputExistsError", "DatabaseError", "FingerprintMismatchError", "BackendUnavailableError",
           "NonFiniteError", "TrainingDiverged", "OutOfMemoryError", "OutOfSpaceError", "RissoleModelError",
           "EngineMismatchError"]


class RissoleError(Exception):
    """A problem with the user's input or environment, reported without a traceback by the CLI."""


class InvalidArgumentError(RissoleError, ValueError):
    """An argument, option or file content has a value this operation cannot use."""


class InvalidTypeError(RissoleError, TypeError):
    """An argument of the wrong type."""


class OutOfRangeError(RissoleError, IndexError):
    """An index (image id, database id, timestep) outside its range."""


class MissingFileError(RissoleError, FileNotFoundError):
    """A file or directory the operation needs does not exist."""


class OutputExistsError(RissoleError, FileExistsError):
    """An output location is taken and may not be replaced."""


class DatabaseError(RissoleError, ValueError):
    """A retrieval database is missing, incomplete, corrupt or does not fit the model."""


class FingerprintMismatchError(DatabaseError):
    """The database was built with another autoencoder than the model's."""


class BackendUnavailableError(RissoleError, RuntimeError):
    """A requested denoiser backend cannot run here (missing package, device or precision)."""


class NonFiniteError(RissoleError, FloatingPointError):
    """Generation produced NaN or infinite values (the model's weights are broken)."""


class TrainingDiverged(RissoleError, RuntimeError):
    """A training loss became NaN or infinite; the last good checkpoint is kept."""


class OutOfMemoryError(RissoleError, MemoryError):
    """The requested output cannot fit in this machine's memory."""


class OutOfSpaceError(RissoleError, OSError):
    """A disk filled while writing; the message names the path and, where known, the bytes needed."""


class RissoleModelError(RissoleError, ValueError):
    """A model file or checkpoint cannot be used; the message names the file and the problem."""


class EngineMismatchError(RissoleError, ValueError):
    """A built engine was made for another model, device or runtime version than the one at hand."""

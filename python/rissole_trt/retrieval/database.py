"""The retrieval database's public import point (the format is described in :mod:`.format`).

By job: :mod:`.format` (:class:`DatabaseManifest`, the geometry and the keys), :mod:`.writer`
(:class:`DatabaseWriter`), :mod:`.reader` (:meth:`Database.open` and what it checks).
"""
from ..errors import DatabaseError, FingerprintMismatchError
from .format import (
    FORMAT_VERSION,
    KEY_KINDS,
    DatabaseManifest,
    block_geometry,
    compute_keys,
    key_dim,
    keys_from_codes,
    merge_code_blocks,
    split_code_blocks,
)
from .reader import Database
from .writer import DatabaseWriter

__all__ = [
    "FORMAT_VERSION",
    "KEY_KINDS",
    "DatabaseError",
    "FingerprintMismatchError",
    "Database",
    "DatabaseManifest",
    "DatabaseWriter",
    "block_geometry",
    "key_dim",
    "split_code_blocks",
    "merge_code_blocks",
    "compute_keys",
    "keys_from_codes",
]

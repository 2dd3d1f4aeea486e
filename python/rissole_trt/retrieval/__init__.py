"""Retrieval: the on-disk database of quantised latents and the nearest-neighbour indexes over its keys.

FAISS (and cuVS, for the GPU indexes) is imported only when an index is built or searched.
"""

from rissole_trt.retrieval.database import (
    FORMAT_VERSION,
    KEY_KINDS,
    Database,
    DatabaseError,
    DatabaseWriter,
    FingerprintMismatchError,
    block_geometry,
    compute_keys,
    key_dim,
    keys_from_codes,
    merge_code_blocks,
    split_code_blocks,
)
from rissole_trt.retrieval.index import (
    AUTO_HNSW_MIN_COUNT,
    INDEX_KINDS,
    CuvsBruteForceIndex,
    CuvsCagraIndex,
    FlatIPIndex,
    HNSWIndex,
    SearchIndex,
    TorchIndex,
    check_keys,
    make_index,
    normalize_queries,
    resolve_index_kind,
)

__all__ = [
    "FORMAT_VERSION",
    "KEY_KINDS",
    "Database",
    "DatabaseError",
    "DatabaseWriter",
    "FingerprintMismatchError",
    "block_geometry",
    "compute_keys",
    "key_dim",
    "keys_from_codes",
    "merge_code_blocks",
    "split_code_blocks",
    "AUTO_HNSW_MIN_COUNT",
    "INDEX_KINDS",
    "CuvsBruteForceIndex",
    "CuvsCagraIndex",
    "FlatIPIndex",
    "HNSWIndex",
    "SearchIndex",
    "TorchIndex",
    "check_keys",
    "make_index",
    "normalize_queries",
    "resolve_index_kind",
]

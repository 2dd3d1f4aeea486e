"""The on-disk retrieval database: quantised latents as codebook indices, retrieval keys, a manifest.

A database is a directory::

    manifest.json   format version, autoencoder fingerprint, geometry, key kind, count, checksums
    codes.npy       uint16 [P, N, bh, bw]   codebook index of every latent position, block-major
    codebook.npy    float32 [K, C]          the autoencoder's codebook the codes index into
    keys.npy        float32 [N, D]          L2-normalised retrieval keys (optional, see below)
    labels.npy      int64 [N]               optional class label per entry (names in the manifest)

Blocks: a latent ``[C, H, W]`` is cut into ``bf x bf`` blocks of ``bh x bw = H/bf x W/bf``, numbered
``p = 0 .. P-1`` row-major (block p covers rows ``(p // bf) * bh ..`` and columns ``(p % bf) * bw ..``),
as ``rissole_trt.ops.split_blocks`` does. Storing codes block-major keeps the blocks of one position
together, which is what conditioning reads (block p of k neighbours), and the codes are 10x smaller
than float16 latents for a 10-channel latent while being exact (the model only sees quantised latents).

Keys: ``first-block`` (the reference's: block 0 of the quantised latent, flattened in ``(C, bh, bw)``
order) or ``whole-latent`` (the whole quantised latent flattened ``(C, H, W)``), then L2-normalised.
Keys computed from the codes need not be stored: a database written with ``store_keys=False`` has no
keys.npy and recomputes them from codes and codebook when opened (a pass over the codes and N x D
floats of memory, instead of D x 4 bytes per entry on disk: right for a small shipped database,
wrong for a million entries, whose keys are memory-mapped).

Arrays are opened memory-mapped, so a database of a million images opens instantly and only the rows a
query touches are read. :class:`DatabaseWriter` builds a database in a temporary sibling directory
and renames it into place when complete, so an interrupted build leaves nothing at the final path.
"""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from ..errors import DatabaseError, InvalidArgumentError
from ..formats import Manifest
from ..outputs import DATABASE

__all__ = ["FORMAT_VERSION", "KEY_KINDS", "MANIFEST", "CODES", "CODEBOOK", "KEYS", "LABELS", "MAX_CODEBOOK_SIZE",
           "DatabaseManifest", "block_geometry", "key_dim", "split_code_blocks", "merge_code_blocks", "compute_keys",
           "keys_from_codes"]

FORMAT_VERSION = 1
KEY_KINDS = ("first-block", "whole-latent")
MANIFEST = "manifest.json"
CODES, CODEBOOK, KEYS, LABELS = "codes.npy", "codebook.npy", "keys.npy", "labels.npy"
MAX_CODEBOOK_SIZE = 1 << 16  # codes are uint16






def block_geometry(latent_shape: Sequence[int], block_factor: int) -> tuple[int, int, int]:
    """``(P, bh, bw)`` for a latent ``[C, H, W]`` cut into ``bf x bf`` blocks; ValueError if it does not divide."""
    if len(latent_shape) != 3 or any(not isinstance(v, (int, np.integer)) or v < 1 for v in latent_shape):
        raise InvalidArgumentError(f"latent_shape must be three positive integers [C, H, W], got {list(latent_shape)}")
    if isinstance(block_factor, bool) or not isinstance(block_factor, (int, np.integer)) or block_factor < 1:
        raise InvalidArgumentError(f"block_factor must be a positive integer, got {block_factor!r}")
    _, h, w = (int(v) for v in latent_shape)
    if h % block_factor or w % block_factor:
        raise InvalidArgumentError(f"latent height {h} and width {w} must be divisible by the block factor {block_factor}")
    return block_factor * block_factor, h // block_factor, w // block_factor


def key_dim(latent_shape: Sequence[int], block_factor: int, key_kind: str) -> int:
    """Length D of a retrieval key of the given kind."""
    _check_key_kind(key_kind)
    _, bh, bw = block_geometry(latent_shape, block_factor)
    c, h, w = (int(v) for v in latent_shape)
    return c * bh * bw if key_kind == "first-block" else c * h * w


def _check_key_kind(key_kind: str) -> None:
    if key_kind not in KEY_KINDS:
        raise InvalidArgumentError(f"unknown key kind {key_kind!r}; choose one of {', '.join(KEY_KINDS)}")


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def split_code_blocks(codes: np.ndarray, block_factor: int) -> np.ndarray:
    """Code maps ``[B, H, W]`` -> block-major ``[P, B, bh, bw]`` (row-major block order)."""
    b, h, w = codes.shape
    bf = block_factor
    return codes.reshape(b, bf, h // bf, bf, w // bf).transpose(1, 3, 0, 2, 4).reshape(bf * bf, b, h // bf, w // bf)


def merge_code_blocks(blocks: np.ndarray, block_factor: int) -> np.ndarray:
    """Inverse of :func:`split_code_blocks`: ``[P, B, bh, bw]`` -> ``[B, H, W]``."""
    _, b, bh, bw = blocks.shape
    bf = block_factor
    return blocks.reshape(bf, bf, b, bh, bw).transpose(2, 0, 3, 1, 4).reshape(b, bf * bh, bf * bw)


def _normalise_rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise InvalidArgumentError(f"{what} contain NaN or infinity")
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
    if (norms == 0).any():
        raise InvalidArgumentError(f"{what} row {int(np.nonzero(norms == 0)[0][0])} is all zeros and cannot be normalised")
    return x * (1.0 / norms).astype(np.float32)[:, None]


def compute_keys(latents: Any, key_kind: str, block_factor: int) -> np.ndarray:
    """Retrieval keys from quantised latents ``[B, C, H, W]`` (numpy or torch) -> float32 ``[B, D]``.

    ``first-block``: block 0 (the top-left ``H/bf x W/bf`` corner) flattened ``(C, bh, bw)``;
    ``whole-latent``: the latent flattened ``(C, H, W)``; then each row is L2-normalised.
    Raises ValueError for a bad shape or kind, non-finite values or an all-zero key.
    """
    _check_key_kind(key_kind)
    z = _to_numpy(latents)
    if z.ndim != 4:
        raise InvalidArgumentError(f"latents must have shape [B, C, H, W], got {z.shape}")
    _, bh, bw = block_geometry(z.shape[1:], block_factor)
    if key_kind == "first-block":
        z = z[:, :, :bh, :bw]
    return _normalise_rows(z.reshape(z.shape[0], int(np.prod(z.shape[1:]))), "keys")


def keys_from_codes(codes: Any, codebook: Any, key_kind: str, block_factor: int) -> np.ndarray:
    """Retrieval keys from code maps ``[B, H, W]`` and the codebook ``[K, C]`` (same as :func:`compute_keys`
    on the quantised latents ``codebook[codes]``)."""
    _check_key_kind(key_kind)
    codes = _to_numpy(codes)
    codebook = _to_numpy(codebook)
    if codes.ndim != 3:
        raise InvalidArgumentError(f"codes must have shape [B, H, W], got {codes.shape}")
    _, bh, bw = block_geometry((codebook.shape[1], *codes.shape[1:]), block_factor)
    if key_kind == "first-block":  # look up only the codes the key uses
        codes = codes[:, :bh, :bw]
    region = codebook[codes.astype(np.int64)].transpose(0, 3, 1, 2)  # [B, C, h, w]
    return _normalise_rows(region.reshape(region.shape[0], int(np.prod(region.shape[1:]))), "keys")




# --------------------------------------------------------------------------- file helpers


def _field(doc: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``doc[key]``, which must be of ``kind`` (a bool is no int here)."""
    if key not in doc:
        raise DatabaseError(f"{MANIFEST} lacks the field {key!r}")
    value = doc[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DatabaseError(f"{MANIFEST} field {key!r} has an invalid value {value!r}")
    return value


#: The fields every version has, with their JSON types, in the order they are checked.
_REQUIRED = (("autoencoder_fingerprint", str), ("latent_shape", list), ("block_factor", int), ("key_kind", str),
             ("count", int), ("codebook_size", int), ("files", dict))


@dataclass(frozen=True, kw_only=True)
class DatabaseManifest(Manifest):
    """``manifest.json`` of a database: its geometry, key kind, count and every file's size and sha256.
    ``kind`` was added without a version change (older databases have only ``format``)."""

    KIND: ClassVar[str] = DATABASE
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    ERROR: ClassVar[type[Exception]] = DatabaseError
    INDENT: ClassVar[int] = 2
    UNREADABLE: ClassVar[str] = "{where}/" + MANIFEST + " is corrupt: {error}"

    kind: str = DATABASE
    format: str = "rissole-trt-database"
    format_version: int = FORMAT_VERSION
    autoencoder_fingerprint: str
    latent_shape: list
    block_factor: int
    key_kind: str
    count: int
    codebook_size: int
    files: dict  # file name -> {"bytes", "sha256"}
    label_names: list | None = None
    metadata: dict = field(default_factory=dict)
    written_by: str | None = None

    @classmethod
    def refusal(cls, where: object, version: object) -> Exception:
        hint = " (written by a newer rissole_trt; upgrade it)" if version > FORMAT_VERSION else ""
        return DatabaseError(f"{where}: database format version {version} is unknown; this rissole_trt reads "
                             f"version {FORMAT_VERSION}{hint}")

    @classmethod
    def from_dict(cls, doc: dict, where: object = "the database") -> "DatabaseManifest":
        """``where``: the database folder."""
        if isinstance(doc, dict):
            _field(doc, "format_version", int)
            doc = cls.migrate(doc, where)
            for key, kind in _REQUIRED:
                _field(doc, key, kind)
        return super().from_dict(doc, where)

    def to_json(self) -> str:
        return super().to_json() + "\n"

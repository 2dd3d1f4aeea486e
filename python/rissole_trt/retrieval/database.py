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

import hashlib
import json
import mmap
import os
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rissole_trt.retrieval.index import HNSWIndex, SearchIndex, check_keys, make_index, resolve_index_kind

from ..atomic import AtomicDirectory
from ..disk import check_free_space, translate_disk_full
from ..errors import (
    DatabaseError,
    FingerprintMismatchError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingFileError,
    OutOfRangeError,
)
from ..outputs import DATABASE, check_output

__all__ = [
    "FORMAT_VERSION",
    "KEY_KINDS",
    "DatabaseError",
    "FingerprintMismatchError",
    "Database",
    "DatabaseWriter",
    "block_geometry",
    "key_dim",
    "split_code_blocks",
    "merge_code_blocks",
    "compute_keys",
    "keys_from_codes",
]

FORMAT_VERSION = 1
KEY_KINDS = ("first-block", "whole-latent")
MANIFEST = "manifest.json"
CODES, CODEBOOK, KEYS, LABELS = "codes.npy", "codebook.npy", "keys.npy", "labels.npy"
MAX_CODEBOOK_SIZE = 1 << 16  # codes are uint16

_HASH_CHUNK = 8 << 20
_CODE_CHECK_ROWS = 65536


# --------------------------------------------------------------------------- geometry and keys


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


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def _map_npy(path: Path, random_access: bool) -> np.ndarray:
    """Memory-map a C-order ``.npy`` file read-only, without reading its data.

    ``random_access`` tells the kernel (madvise MADV_RANDOM) not to read ahead around each page fault:
    a gather touches a few hundred bytes per entry, scattered over the file, and read-ahead would
    pull in far more than that from a database that is not in the page cache.
    """
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InvalidArgumentError(f"unsupported .npy format version {version}")
        if fortran or dtype.hasobject:
            raise InvalidArgumentError("expected a C-order array of plain numbers")
        offset = f.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > os.fstat(f.fileno()).st_size:
            raise InvalidArgumentError(f"the file is shorter than its header's {list(shape)} {dtype} array")
        if nbytes == 0:
            return np.zeros(shape, dtype)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if random_access and hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)
    return np.ndarray(shape, dtype, buffer=mm, offset=offset)  # read-only: the buffer is


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is then ENOSPC here, not a SIGBUS at
    the first write into a hole of the map."""
    if path.is_file() and hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, path.stat().st_size)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- writer


class DatabaseWriter:
    """Write a database of a known number of entries, batch by batch.

    Use as a context manager (an exception inside the block discards everything)::

        with DatabaseWriter(path, count=N, codebook=cb, latent_shape=(10, 16, 16), block_factor=2,
                            key_kind="first-block", fingerprint=model_sha256) as w:
            for codes in batches:          # int [B, H, W] codebook indices
                w.add(codes)               # keys computed from codes + codebook, or pass keys=
        db = Database.open(path)

    Arrays are preallocated memory-maps in a temporary directory beside ``path``
    (:class:`rissole_trt.atomic.AtomicDirectory`); :meth:`close` checks that exactly ``count`` entries
    were added, writes checksums and the manifest, syncs to disk and renames the directory to ``path``.
    If the writer is abandoned, the temporary directory is removed; if its process is killed, the
    next write beside ``path`` removes it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        count: int,
        codebook: Any,
        latent_shape: Sequence[int],
        block_factor: int,
        fingerprint: str,
        key_kind: str = "first-block",
        with_labels: bool = False,
        label_names: Sequence[str] | None = None,
        metadata: dict[str, Any] | None = None,
        overwrite: bool = False,
        store_keys: bool = True,
    ) -> None:
        self.path = Path(path)
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise InvalidArgumentError(f"count must be a positive integer, got {count!r}")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise InvalidArgumentError("fingerprint must be a non-empty string identifying the autoencoder")
        _check_key_kind(key_kind)
        p, bh, bw = block_geometry(latent_shape, block_factor)
        latent_shape = tuple(int(v) for v in latent_shape)
        cb = np.ascontiguousarray(_to_numpy(codebook), dtype=np.float32)
        if cb.ndim != 2 or cb.shape[1] != latent_shape[0]:
            raise InvalidArgumentError(f"codebook must have shape [K, C] with C = {latent_shape[0]}, got {cb.shape}")
        if not 1 <= cb.shape[0] <= MAX_CODEBOOK_SIZE:
            raise InvalidArgumentError(f"codebook size {cb.shape[0]} is outside [1, {MAX_CODEBOOK_SIZE}] (codes are uint16)")
        if not np.isfinite(cb).all():
            raise InvalidArgumentError("codebook contains NaN or infinity")
        if label_names is not None:
            label_names = [str(s) for s in label_names]
            with_labels = True
        if metadata is not None:
            json.dumps(metadata)  # fail now, not at close, if it cannot be stored
        check_output(self.path, overwrite=overwrite, kind=DATABASE, flag="overwrite=True")
        sizes = {CODES: 2 * p * count * bh * bw, KEYS: 4 * count * key_dim(latent_shape, block_factor, key_kind) * store_keys,
                 LABELS: 8 * count * with_labels, CODEBOOK: cb.nbytes + 128}
        self._needed = sum(sizes.values())
        check_free_space(self.path, self._needed, "the database")

        self.count = int(count)
        self.codebook = cb
        self.latent_shape = latent_shape
        self.block_factor = int(block_factor)
        self.key_kind = key_kind
        self.key_dim = key_dim(latent_shape, block_factor, key_kind)
        self.fingerprint = fingerprint
        self.label_names = label_names
        self.metadata = metadata
        self._n = 0
        self._done = False

        self._target = AtomicDirectory(self.path, replace=overwrite)
        self._tmp = self._target.tmp
        # Removes the temporary directory if the writer is dropped or the interpreter exits first.
        self._cleanup = weakref.finalize(self, self._target.discard)
        try:
            fmt = np.lib.format
            with translate_disk_full(self.path, self._needed):
                self._codes = fmt.open_memmap(self._tmp / CODES, "w+", np.uint16, (p, self.count, bh, bw))
                self._keys = (fmt.open_memmap(self._tmp / KEYS, "w+", np.float32, (self.count, self.key_dim))
                              if store_keys else None)
                self._labels = fmt.open_memmap(self._tmp / LABELS, "w+", np.int64, (self.count,)) if with_labels else None
                for name in (CODES, KEYS, LABELS):
                    _reserve(self._tmp / name)
                np.save(self._tmp / CODEBOOK, cb)
        except BaseException:
            self.abort()
            raise

    @property
    def written(self) -> int:
        """Entries added so far."""
        return self._n

    def add(self, codes: Any, keys: Any = None, labels: Any = None) -> None:
        """Append a batch: ``codes`` int ``[B, H, W]`` codebook indices, optional ``keys`` float ``[B, D]``
        (normalised here; computed from the codes and codebook when omitted), ``labels`` int ``[B]``
        (required exactly when the writer was created with labels)."""
        if self._done:
            raise InvalidArgumentError("this DatabaseWriter is already closed")
        codes = _to_numpy(codes)
        _, h, w = self.latent_shape
        if codes.ndim != 3 or codes.shape[1:] != (h, w):
            raise InvalidArgumentError(f"codes must have shape [B, {h}, {w}], got {codes.shape}")
        if not np.issubdtype(codes.dtype, np.integer):
            raise InvalidArgumentError(f"codes must be integer codebook indices, got {codes.dtype}")
        b = codes.shape[0]
        if self._n + b > self.count:
            raise InvalidArgumentError(f"adding {b} entries to {self._n} exceeds the declared count {self.count}")
        if b and (codes.min() < 0 or codes.max() >= len(self.codebook)):
            raise InvalidArgumentError(
                f"codes must be in [0, {len(self.codebook)}), got values in [{codes.min()}, {codes.max()}]"
            )
        if keys is None:
            if self._keys is not None:
                keys = keys_from_codes(codes, self.codebook, self.key_kind, self.block_factor)
        elif self._keys is None:
            raise InvalidArgumentError("keys were given to a writer with store_keys=False, whose keys are computed from the codes")
        else:
            keys = _to_numpy(keys)
            if keys.shape != (b, self.key_dim):
                raise InvalidArgumentError(f"keys must have shape [{b}, {self.key_dim}] ({self.key_kind}), got {keys.shape}")
            keys = _normalise_rows(keys, "keys")
        if (labels is None) != (self._labels is None):
            raise InvalidArgumentError("labels must be given with every batch exactly when the writer was created with labels")
        if labels is not None:
            labels = _to_numpy(labels)
            if labels.shape != (b,) or (b and not np.issubdtype(labels.dtype, np.integer)):
                raise InvalidArgumentError(f"labels must be integers of shape [{b}], got {labels.dtype} {labels.shape}")
            if self.label_names is not None and b and (labels.min() < 0 or labels.max() >= len(self.label_names)):
                raise InvalidArgumentError(f"labels must be in [0, {len(self.label_names)}) to index label_names")
        s = slice(self._n, self._n + b)
        self._codes[:, s] = split_code_blocks(codes.astype(np.uint16), self.block_factor)
        if self._keys is not None:
            self._keys[s] = keys
        if labels is not None:
            self._labels[s] = labels
        self._n += b

    def _release_arrays(self) -> None:
        for name in ("_codes", "_keys", "_labels"):
            arr = getattr(self, name, None)
            if arr is not None:
                arr.flush()
                setattr(self, name, None)

    def abort(self) -> None:
        """Discard the partial database (nothing is left at ``path`` or in the temporary directory)."""
        self._done = True
        self._release_arrays()
        self._cleanup()

    def close(self) -> Path:
        """Finish: verify the count, write checksums and manifest, sync and rename into place.

        Raises ValueError (after discarding the partial database) if fewer than ``count`` entries were
        added. Returns the database path.
        """
        if self._done:
            raise InvalidArgumentError("this DatabaseWriter is already closed")
        if self._n != self.count:
            n = self._n
            self.abort()
            raise InvalidArgumentError(f"only {n} of the declared {self.count} entries were added; nothing was written")
        with translate_disk_full(self.path, self._needed):
            return self._finish()

    def _finish(self) -> Path:
        try:
            self._release_arrays()
            files = [name for name in (CODES, CODEBOOK, KEYS, LABELS) if (self._tmp / name).exists()]
            checks = {}
            for name in files:
                f = self._tmp / name
                checks[name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
            from rissole_trt import __version__

            manifest = {
                "kind": DATABASE,
                "format": "rissole-trt-database",
                "format_version": FORMAT_VERSION,
                "autoencoder_fingerprint": self.fingerprint,
                "latent_shape": list(self.latent_shape),
                "block_factor": self.block_factor,
                "key_kind": self.key_kind,
                "count": self.count,
                "codebook_size": int(len(self.codebook)),
                "files": checks,
                "label_names": self.label_names,
                "metadata": self.metadata or {},
                "written_by": f"rissole_trt {__version__}",
            }
            (self._tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            self._target.commit()  # syncs every file and the folder, renames, syncs the parent
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._cleanup.detach()
        return self.path

    def __enter__(self) -> DatabaseWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._done:
            self.close()


# --------------------------------------------------------------------------- reader


def _check_codes(path: Path, codes: np.ndarray, codebook_size: int) -> None:
    for start in range(0, codes.shape[1], _CODE_CHECK_ROWS):
        if int(codes[:, start : start + _CODE_CHECK_ROWS].max()) >= codebook_size:
            raise DatabaseError(f"{path}: {CODES} holds codes >= the codebook size {codebook_size}")


def _keys_from_code_blocks(blocks: np.ndarray, codebook: np.ndarray, key_kind: str, block_factor: int,
                           dim: int) -> np.ndarray:
    """Keys ``[N, dim]`` of a database stored without them, from its block-major codes ``[P, N, bh, bw]``."""
    keys = np.empty((blocks.shape[1], dim), np.float32)
    for start in range(0, blocks.shape[1], _CODE_CHECK_ROWS):
        chunk = merge_code_blocks(np.asarray(blocks[:, start : start + _CODE_CHECK_ROWS]), block_factor)
        keys[start : start + len(chunk)] = keys_from_codes(chunk, codebook, key_kind, block_factor)
    keys.flags.writeable = False
    return keys


def _check_inside(path: Path, file: Path) -> None:
    """A database is one folder: a file that is a link to somewhere else could change under it unseen."""
    if not file.resolve().is_relative_to(path.resolve()):
        raise DatabaseError(f"{path}: {file.name} is a symbolic link to {file.resolve()}, outside the database "
                            "folder; copy the file into the folder or rebuild the database")


def _require(manifest: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in manifest:
        raise DatabaseError(f"manifest.json lacks the field {key!r}")
    value = manifest[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DatabaseError(f"manifest.json field {key!r} has an invalid value {value!r}")
    return value


class Database:
    """A retrieval database opened read-only; arrays are memory-mapped. Create with :meth:`open`."""

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        codes: np.ndarray,
        codebook: np.ndarray,
        keys: np.ndarray,
        labels: np.ndarray | None,
    ) -> None:
        self.path = path
        self._manifest = manifest
        self._codes = codes
        self._codebook = codebook
        self._keys = keys
        self._labels = labels
        self._device_tensors: dict[tuple[str, Any], Any] = {}
        self._indexes: dict[tuple[Any, ...], SearchIndex] = {}

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        expected_fingerprint: str | None = None,
        verify: str = "size",
    ) -> Database:
        """Open and check a database directory.

        ``expected_fingerprint``: the autoencoder fingerprint the caller's model has; a different one in
        the manifest raises :class:`FingerprintMismatchError`. ``verify``: ``"size"`` checks every file's
        size, array dtype and shape against the manifest (instant); ``"full"`` also checks the sha256
        of every file, that every code is below the codebook size and that the keys are finite and
        normalised (reads everything: seconds per GB).

        Raises FileNotFoundError when ``path`` is not a directory, :class:`DatabaseError` (a ValueError)
        for an unknown format version, a corrupt manifest, a missing, truncated or corrupt file.
        """
        if verify not in ("size", "full"):
            raise InvalidArgumentError(f"verify must be 'size' or 'full', got {verify!r}")
        path = Path(path)
        if not path.is_dir():
            raise MissingFileError(f"database directory {path} does not exist")
        mpath = path / MANIFEST
        if not mpath.is_file():
            raise DatabaseError(f"{path} is not a rissole_trt database: {MANIFEST} is missing")
        _check_inside(path, mpath)
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatabaseError(f"{mpath} is corrupt: {e}") from e
        if not isinstance(manifest, dict):
            raise DatabaseError(f"{mpath} is corrupt: expected a JSON object")

        version = _require(manifest, "format_version", int)
        if version != FORMAT_VERSION:
            hint = " (written by a newer rissole_trt; upgrade it)" if version > FORMAT_VERSION else ""
            raise DatabaseError(
                f"{path}: database format version {version} is unknown; this rissole_trt reads version "
                f"{FORMAT_VERSION}{hint}"
            )
        fingerprint = _require(manifest, "autoencoder_fingerprint", str)
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"{path} was built with another autoencoder (fingerprint {fingerprint[:16]}..., "
                f"the model's is {expected_fingerprint[:16]}...); rebuild the database with this model"
            )
        latent_shape = _require(manifest, "latent_shape", list)
        bf = _require(manifest, "block_factor", int)
        key_kind = _require(manifest, "key_kind", str)
        count = _require(manifest, "count", int)
        k_size = _require(manifest, "codebook_size", int)
        files = _require(manifest, "files", dict)
        label_names = manifest.get("label_names")
        try:
            p, bh, bw = block_geometry(latent_shape, bf)
            d = key_dim(latent_shape, bf, key_kind)
        except ValueError as e:
            raise DatabaseError(f"{mpath} is inconsistent: {e}") from e
        if count < 1 or not 1 <= k_size <= MAX_CODEBOOK_SIZE:
            raise DatabaseError(f"{mpath} is inconsistent: count {count}, codebook size {k_size}")
        if label_names is not None and not (
            isinstance(label_names, list) and all(isinstance(s, str) for s in label_names)
        ):
            raise DatabaseError(f"{mpath} field 'label_names' must be a list of strings")

        expected = {
            CODES: (np.uint16, (p, count, bh, bw)),
            CODEBOOK: (np.float32, (k_size, int(latent_shape[0]))),
        }
        if KEYS in files:
            expected[KEYS] = (np.float32, (count, d))
        if LABELS in files:
            expected[LABELS] = (np.int64, (count,))
        for name, entry in files.items():
            if name not in expected:
                raise DatabaseError(f"{mpath} lists an unknown file {name!r}")
        arrays = {}
        for name, (dtype, shape) in expected.items():
            entry = files.get(name)
            if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or not isinstance(
                entry.get("sha256"), str
            ):
                raise DatabaseError(f"{mpath} has no valid size and checksum for {name}")
            f = path / name
            if not f.is_file():
                raise DatabaseError(f"{path}: {name} is missing")
            _check_inside(path, f)
            size = f.stat().st_size
            if size != entry["bytes"]:
                raise DatabaseError(
                    f"{path}: {name} is truncated or was modified ({size} bytes, the manifest says {entry['bytes']})"
                )
            if verify == "full" and _sha256(f) != entry["sha256"]:
                raise DatabaseError(f"{path}: {name} is corrupt (its sha256 differs from the manifest's)")
            try:
                if name == CODEBOOK:
                    arr = np.load(f, allow_pickle=False)
                else:
                    arr = _map_npy(f, random_access=name == CODES)
            except (ValueError, OSError, EOFError) as e:
                raise DatabaseError(f"{path}: {name} is not a readable .npy array: {e}") from e
            if arr.dtype != dtype or arr.shape != shape:
                raise DatabaseError(
                    f"{path}: {name} is {arr.dtype} {list(arr.shape)}, the manifest implies "
                    f"{np.dtype(dtype)} {list(shape)}"
                )
            arrays[name] = arr

        if verify == "full" or KEYS not in arrays:  # the codes are read in full either way
            _check_codes(path, arrays[CODES], k_size)
        if KEYS not in arrays:  # not stored: computed from the codes
            arrays[KEYS] = _keys_from_code_blocks(arrays[CODES], arrays[CODEBOOK], key_kind, bf, d)
        if verify == "full":
            if not np.isfinite(arrays[CODEBOOK]).all():
                raise DatabaseError(f"{path}: {CODEBOOK} contains NaN or infinity")
            try:
                check_keys(arrays[KEYS])
            except ValueError as e:
                raise DatabaseError(f"{path}: {KEYS}: {e}") from e
            if label_names is not None and LABELS in arrays:
                labels = arrays[LABELS]
                if labels.min() < 0 or labels.max() >= len(label_names):
                    raise DatabaseError(f"{path}: {LABELS} holds labels outside [0, {len(label_names)})")
        return cls(path, manifest, arrays[CODES], arrays[CODEBOOK], arrays[KEYS], arrays.get(LABELS))

    # ------------------------------------------------------------------ properties

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the parsed manifest."""
        return json.loads(json.dumps(self._manifest))

    @property
    def fingerprint(self) -> str:
        """The autoencoder fingerprint the database was built with."""
        return self._manifest["autoencoder_fingerprint"]

    @property
    def count(self) -> int:
        """Number of entries N."""
        return int(self._manifest["count"])

    def __len__(self) -> int:
        return self.count

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent shape ``(C, H, W)``."""
        c, h, w = self._manifest["latent_shape"]
        return int(c), int(h), int(w)

    @property
    def block_factor(self) -> int:
        """Blocks per side bf."""
        return int(self._manifest["block_factor"])

    @property
    def P(self) -> int:  # noqa: N802 - the paper's symbol
        """Blocks per latent, bf²."""
        return self.block_factor**2

    @property
    def block_shape(self) -> tuple[int, int]:
        """Block height and width ``(bh, bw)``."""
        return int(self._codes.shape[2]), int(self._codes.shape[3])

    @property
    def bs(self) -> int:
        """Block side for square blocks (ValueError for a non-square latent)."""
        bh, bw = self.block_shape
        if bh != bw:
            raise InvalidArgumentError(f"blocks are {bh} x {bw}, not square; use block_shape")
        return bh

    @property
    def key_kind(self) -> str:
        """``"first-block"`` or ``"whole-latent"``."""
        return self._manifest["key_kind"]

    @property
    def key_dim(self) -> int:
        """Key length D."""
        return int(self._keys.shape[1])

    @property
    def codebook_size(self) -> int:
        """Codebook entries K."""
        return int(self._codebook.shape[0])

    @property
    def codes(self) -> np.ndarray:
        """uint16 ``[P, N, bh, bw]`` codes (read-only, memory-mapped)."""
        return self._codes

    @property
    def codebook(self) -> np.ndarray:
        """float32 ``[K, C]`` codebook (in memory)."""
        return self._codebook

    @property
    def keys(self) -> np.ndarray:
        """float32 ``[N, D]`` L2-normalised keys (read-only, memory-mapped)."""
        return self._keys

    @property
    def labels(self) -> np.ndarray | None:
        """int64 ``[N]`` labels (read-only, memory-mapped), or None when the database has none."""
        return self._labels

    @property
    def label_names(self) -> list[str] | None:
        """Names of the label values, when the builder gave them."""
        names = self._manifest.get("label_names")
        return list(names) if names is not None else None

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form information the builder stored (e.g. image size, source)."""
        return dict(self._manifest.get("metadata") or {})

    # ------------------------------------------------------------------ data access

    def _check_ids(self, ids: Any) -> np.ndarray:
        ids = _to_numpy(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise InvalidArgumentError(f"ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        ids = ids.astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.count):
            bad = ids[(ids < 0) | (ids >= self.count)][0]
            raise OutOfRangeError(f"id {int(bad)} is outside the database [0, {self.count})")
        return ids

    def entry_codes(self, ids: Any) -> np.ndarray:
        """Code maps of entries ``ids [B]`` -> int64 ``[B, H, W]``."""
        ids = self._check_ids(ids)
        return merge_code_blocks(self._codes[:, ids].astype(np.int64), self.block_factor)

    def entry_latents(self, ids: Any) -> np.ndarray:
        """Quantised latents of entries ``ids [B]`` -> float32 ``[B, C, H, W]`` (``codebook[codes]``)."""
        return self._codebook[self.entry_codes(ids)].transpose(0, 3, 1, 2).copy()

    def codebook_tensor(self, device: Any = "cpu", dtype: Any = None) -> Any:
        """The codebook as a torch tensor on ``device`` (float32 unless ``dtype``), cached."""
        import torch

        dtype = dtype or torch.float32
        key = (str(torch.device(device)), dtype)
        if key not in self._device_tensors:
            self._device_tensors[key] = torch.from_numpy(self._codebook).to(device=device, dtype=dtype)
        return self._device_tensors[key]

    def codes_tensor(self, device: Any = "cpu") -> Any:
        """All codes ``[P, N, bh, bw]`` as one torch uint16 tensor on ``device``, cached: what a kernel
        that reads neighbours through their codes (``rissole_trt.kernels.gather_xattn``) indexes."""
        import torch

        key = ("codes", str(torch.device(device)))
        if key not in self._device_tensors:
            codes = np.array(self._codes)  # a copy: the map is read-only
            _check_codes(self.path, codes, len(self._codebook))  # a kernel reading them checks no bounds
            self._device_tensors[key] = torch.from_numpy(codes).to(device)
        return self._device_tensors[key]

    def neighbour_blocks(self, ids: Any, device: Any = "cpu", dtype: Any = None) -> Any:
        """Conditioning blocks of neighbours ``ids [B, k]`` -> ``[B, P, k*C, bh, bw]`` torch tensor.

        Channel ``n*C + c`` of block p is channel c of block p of entry ``ids[b, n]``. Reads only the
        requested entries' codes from the memory map (``rissole_trt.ops.gather_code_blocks``).
        Raises IndexError for an id outside ``[0, N)``, :class:`DatabaseError` for a stored code outside
        the codebook (a corrupt ``codes.npy``: checked here, where the gather meets it, not by reading
        every code at open).
        """
        from rissole_trt import ops

        try:
            return ops.gather_code_blocks(self._codes, self.codebook_tensor(device, dtype), ids)
        except IndexError as error:
            ids = _to_numpy(ids)
            if ids.size and 0 <= ids.min() and ids.max() < self.count:  # the ids are fine: a stored code is not
                raise DatabaseError(f"{self.path / CODES} is corrupt ({error}); rebuild the database") from None
            raise

    # ------------------------------------------------------------------ search

    def index(self, kind: str = "auto", *, device: str = "cpu", persist: bool = False, **params: Any) -> SearchIndex:
        """The search index over the keys (built on first use, then cached on this object).

        ``kind`` and ``params`` as for :func:`rissole_trt.retrieval.make_index`. ``persist=True``
        keeps HNSW indexes in ``<db>/indexes/`` (named after their parameters and the keys' checksum)
        and reads them back instead of rebuilding; flat and cuVS indexes are always rebuilt, which is
        quick. The directory must then be writable.
        """
        cache_key = (kind, str(device), persist, tuple(sorted(params.items())))
        if cache_key in self._indexes:
            return self._indexes[cache_key]
        kind = resolve_index_kind(kind, self.count, device)
        if persist and kind == "hnsw":
            index: SearchIndex = self._persistent_hnsw(**params)
        else:
            index = make_index(kind, self._keys, device=device, **params)
        self._indexes[cache_key] = index
        return index

    def _persistent_hnsw(self, **params: Any) -> HNSWIndex:
        unknown = set(params) - {"m", "ef_construction", "ef_search"}
        if unknown:
            raise InvalidTypeError(f"unknown HNSW parameters: {', '.join(sorted(unknown))}")
        m = params.get("m", HNSWIndex.DEFAULT_M)
        efc = params.get("ef_construction", HNSWIndex.DEFAULT_EF_CONSTRUCTION)
        # The keys' identity (files are immutable): their own checksum, or what they are computed from.
        files = self._manifest["files"]
        sha = (files[KEYS]["sha256"] if KEYS in files else
               hashlib.sha256((files[CODES]["sha256"] + files[CODEBOOK]["sha256"]).encode()).hexdigest())[:16]
        fpath = self.path / "indexes" / f"hnsw-M{m}-efc{efc}-{sha}.faiss"
        if fpath.is_file():
            return HNSWIndex.load(fpath, self._keys, ef_search=params.get("ef_search", HNSWIndex.DEFAULT_EF_SEARCH))
        index = HNSWIndex(self._keys, **params)
        fpath.parent.mkdir(exist_ok=True)
        index.save(fpath)
        return index

    def __repr__(self) -> str:
        c, h, w = self.latent_shape
        return (
            f"Database({str(self.path)!r}, count={self.count}, latent={c}x{h}x{w}, bf={self.block_factor}, "
            f"key={self.key_kind}, K={self.codebook_size})"
        )


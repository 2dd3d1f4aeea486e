"""Writing a retrieval database (:class:`DatabaseWriter`): preallocated memory-maps in a temporary
directory beside the target, the manifest (:class:`~.format.DatabaseManifest`) last, then renamed
into place. The format is described in :mod:`rissole_trt.retrieval.format`."""
from __future__ import annotations

import json
import os
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..atomic import AtomicDirectory
from ..disk import check_free_space, translate_disk_full
from ..errors import InvalidArgumentError
from ..formats import file_record
from ..outputs import DATABASE, check_output
from .format import (
    CODEBOOK,
    CODES,
    KEYS,
    LABELS,
    MANIFEST,
    MAX_CODEBOOK_SIZE,
    DatabaseManifest,
    _check_key_kind,
    _normalise_rows,
    _to_numpy,
    block_geometry,
    key_dim,
    keys_from_codes,
    split_code_blocks,
)

__all__ = ["DatabaseWriter"]


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk is then ENOSPC here, not a SIGBUS at
    the first write into a hole of the map."""
    if path.is_file() and hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, path.stat().st_size)
        finally:
            os.close(fd)


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
            checks = {name: file_record(self._tmp / name) for name in files}
            from rissole_trt import __version__

            manifest = DatabaseManifest(
                autoencoder_fingerprint=self.fingerprint, latent_shape=list(self.latent_shape),
                block_factor=self.block_factor, key_kind=self.key_kind, count=self.count,
                codebook_size=int(len(self.codebook)), files=checks, label_names=self.label_names,
                metadata=self.metadata or {}, written_by=f"rissole_trt {__version__}")
            (self._tmp / MANIFEST).write_text(manifest.to_json())  # synced with the folder at commit
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



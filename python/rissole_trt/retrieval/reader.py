"""Opening a retrieval database (:meth:`Database.open`): the manifest, then every file checked
against it (size, dtype and shape; with ``verify="full"`` also sha256, codes and keys), arrays
memory-mapped. The format is described in :mod:`rissole_trt.retrieval.format`."""
from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from rissole_trt.retrieval.index import HNSWIndex, SearchIndex, check_keys, make_index, resolve_index_kind

from ..errors import (
    DatabaseError,
    FingerprintMismatchError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingFileError,
    OutOfRangeError,
)
from ..formats import file_sha256
from .format import (
    CODEBOOK,
    CODES,
    KEYS,
    LABELS,
    MANIFEST,
    MAX_CODEBOOK_SIZE,
    DatabaseManifest,
    _to_numpy,
    block_geometry,
    key_dim,
    keys_from_codes,
    merge_code_blocks,
)

__all__ = ["Database"]

_CODE_CHECK_ROWS = 65536


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


def _read_manifest(path: Path) -> DatabaseManifest:
    """The manifest of the database folder ``path``, its fields' types checked."""
    if not path.is_dir():
        raise MissingFileError(f"database directory {path} does not exist")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DatabaseError(f"{path} is not a rissole_trt database: {MANIFEST} is missing")
    _check_inside(path, mpath)
    try:
        text = mpath.read_text()
    except UnicodeDecodeError as e:
        raise DatabaseError(DatabaseManifest.UNREADABLE.format(where=path, error=e)) from e
    return DatabaseManifest.from_json(text, path)


def _expected_arrays(path: Path, manifest: DatabaseManifest) -> dict[str, tuple[type, tuple]]:
    """The dtype and shape of each file the manifest lists, after checking the geometry it gives."""
    mpath, count, k_size, label_names = path / MANIFEST, manifest.count, manifest.codebook_size, manifest.label_names
    try:
        p, bh, bw = block_geometry(manifest.latent_shape, manifest.block_factor)
        d = key_dim(manifest.latent_shape, manifest.block_factor, manifest.key_kind)
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
        CODEBOOK: (np.float32, (k_size, int(manifest.latent_shape[0]))),
    }
    if KEYS in manifest.files:
        expected[KEYS] = (np.float32, (count, d))
    if LABELS in manifest.files:
        expected[LABELS] = (np.int64, (count,))
    for name in manifest.files:
        if name not in expected:
            raise DatabaseError(f"{mpath} lists an unknown file {name!r}")
    return expected


def _open_array(path: Path, name: str, entry: Any, dtype: type, shape: tuple, verify: str) -> np.ndarray:
    """The file ``name`` of the database, checked against its manifest entry, loaded or memory-mapped."""
    if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int) or not isinstance(
        entry.get("sha256"), str
    ):
        raise DatabaseError(f"{path / MANIFEST} has no valid size and checksum for {name}")
    f = path / name
    if not f.is_file():
        raise DatabaseError(f"{path}: {name} is missing")
    _check_inside(path, f)
    size = f.stat().st_size
    if size != entry["bytes"]:
        raise DatabaseError(
            f"{path}: {name} is truncated or was modified ({size} bytes, the manifest says {entry['bytes']})"
        )
    if verify == "full" and file_sha256(f) != entry["sha256"]:
        raise DatabaseError(f"{path}: {name} is corrupt (its sha256 differs from the manifest's)")
    try:
        arr = np.load(f, allow_pickle=False) if name == CODEBOOK else _map_npy(f, random_access=name == CODES)
    except (ValueError, OSError, EOFError) as e:
        raise DatabaseError(f"{path}: {name} is not a readable .npy array: {e}") from e
    if arr.dtype != dtype or arr.shape != shape:
        raise DatabaseError(
            f"{path}: {name} is {arr.dtype} {list(arr.shape)}, the manifest implies "
            f"{np.dtype(dtype)} {list(shape)}"
        )
    return arr


def _check_contents(path: Path, manifest: DatabaseManifest, arrays: dict[str, np.ndarray]) -> None:
    """``verify="full"``: the codebook finite, the keys finite and normalised, the labels named."""
    if not np.isfinite(arrays[CODEBOOK]).all():
        raise DatabaseError(f"{path}: {CODEBOOK} contains NaN or infinity")
    try:
        check_keys(arrays[KEYS])
    except ValueError as e:
        raise DatabaseError(f"{path}: {KEYS}: {e}") from e
    names = manifest.label_names
    if names is not None and LABELS in arrays:
        labels = arrays[LABELS]
        if labels.min() < 0 or labels.max() >= len(names):
            raise DatabaseError(f"{path}: {LABELS} holds labels outside [0, {len(names)})")


class Database:
    """A retrieval database opened read-only; arrays are memory-mapped. Create with :meth:`open`."""

    def __init__(
        self,
        path: Path,
        manifest: DatabaseManifest,
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
        manifest = _read_manifest(path)
        fingerprint = manifest.autoencoder_fingerprint
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"{path} was built with another autoencoder (fingerprint {fingerprint[:16]}..., "
                f"the model's is {expected_fingerprint[:16]}...); rebuild the database with this model"
            )
        arrays = {name: _open_array(path, name, manifest.files.get(name), dtype, shape, verify)
                  for name, (dtype, shape) in _expected_arrays(path, manifest).items()}
        if verify == "full" or KEYS not in arrays:  # the codes are read in full either way
            _check_codes(path, arrays[CODES], manifest.codebook_size)
        if KEYS not in arrays:  # not stored: computed from the codes
            d = key_dim(manifest.latent_shape, manifest.block_factor, manifest.key_kind)
            arrays[KEYS] = _keys_from_code_blocks(arrays[CODES], arrays[CODEBOOK], manifest.key_kind,
                                                  manifest.block_factor, d)
        if verify == "full":
            _check_contents(path, manifest, arrays)
        return cls(path, manifest, arrays[CODES], arrays[CODEBOOK], arrays[KEYS], arrays.get(LABELS))

    # ------------------------------------------------------------------ properties

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as written."""
        return json.loads(self._manifest.to_json())

    @property
    def on_disk(self) -> DatabaseManifest:
        """The manifest as read (frozen)."""
        return self._manifest

    @property
    def fingerprint(self) -> str:
        """The autoencoder fingerprint the database was built with."""
        return self._manifest.autoencoder_fingerprint

    @property
    def count(self) -> int:
        """Number of entries N."""
        return int(self._manifest.count)

    def __len__(self) -> int:
        return self.count

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent shape ``(C, H, W)``."""
        c, h, w = self._manifest.latent_shape
        return int(c), int(h), int(w)

    @property
    def block_factor(self) -> int:
        """Blocks per side bf."""
        return int(self._manifest.block_factor)

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
        return self._manifest.key_kind

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
        names = self._manifest.label_names
        return list(names) if names is not None else None

    @property
    def metadata(self) -> dict[str, Any]:
        """Free-form information the builder stored (e.g. image size, source)."""
        return dict(self._manifest.metadata or {})

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
        files = self._manifest.files
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


"""Top-k inner-product search over L2-normalised retrieval keys (inner product = cosine similarity).

Every index has one interface::

    scores, ids = index.search(queries, k, exclude=None)

``queries`` ``[Q, D]`` (normalised here), ``scores`` float32 ``[Q, k]`` in descending order and ``ids``
int64 ``[Q, k]``. ``exclude`` (int64 ``[Q]`` or ``[Q, m]``, ``-1`` = nothing) removes ids from each
query's results, e.g. the query's own database entry; the result still has exactly ``k`` ids.

Implementations:

- :class:`FlatIPIndex` — exact, FAISS on the CPU (the default). It runs FAISS's exhaustive
  inner-product kernel (``faiss.knn``, the one ``IndexFlatIP`` uses) directly on the caller's key
  array, so a memory-mapped key file is searched without an anonymous in-memory copy.
- :class:`HNSWIndex` — approximate, ``faiss.IndexHNSWFlat`` (inner product), for large databases.
- :class:`CuvsBruteForceIndex`, :class:`CuvsCagraIndex` — exact / approximate on an NVIDIA GPU
  through cuVS, imported only when asked for.
- :class:`TorchIndex` — exact, a GEMM and a top-k per chunk of keys with torch on the keys' device:
  GPU search where cuVS is not installed (and FAISS may not be either), without a copy of the
  queries to the host and back.

Persistence: flat and cuVS indexes are rebuilt from the keys (flat needs no build; the GPU builds are
quick). HNSW indexes can be written with :meth:`HNSWIndex.save` (atomic) and read back with
:meth:`HNSWIndex.load`, which checks that the file belongs to the given keys.
"""

from __future__ import annotations

import functools
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_file
from ..errors import BackendUnavailableError, InvalidArgumentError, MissingFileError

__all__ = [
    "INDEX_KINDS",
    "AUTO_HNSW_MIN_COUNT",
    "SearchIndex",
    "FlatIPIndex",
    "HNSWIndex",
    "CuvsBruteForceIndex",
    "CuvsCagraIndex",
    "TorchIndex",
    "make_index",
    "resolve_index_kind",
    "check_keys",
    "normalize_queries",
]

INDEX_KINDS = ("auto", "flat", "hnsw", "cuvs", "cagra", "torch")

# "auto" switches from exact to approximate search at this many keys. Exact search over 1M 640-d keys
# answers ~18 queries/s in batches of 256 on two (busy) CPU cores (benchmarks/bench_retrieval.py):
# a second or less per generated image, whose denoising takes far longer on a CPU, and no build at
# all; an HNSW build took 79 s for 50k keys there, so ~30+ minutes for 1M. Exact search therefore
# stays the default up to and including 1M entries.
AUTO_HNSW_MIN_COUNT = 1_000_001
# On a GPU, cuVS's exact brute force is the default below this many keys and CAGRA from there (a
# CAGRA build over 100k keys takes seconds on a GPU, where an HNSW build on the CPU takes minutes).
AUTO_CAGRA_MIN_COUNT = 100_000

# FAISS computes exact inner products as BLAS products of query blocks with database blocks of this
# many rows (FAISS's default is 1024). Larger database blocks make larger, more efficient GEMMs: 2.7x
# faster for 256 queries over 640-d keys on the 2-core development CPU, for at most
# 4096 x 8192 x 4 B = 128 MiB of scratch (FAISS's query blocks are 4096 rows).
_FAISS_BLAS_DATABASE_BS = 8192

_NORM_TOL = 1e-3  # keys must have unit norm to within this (float32 round-off is ~1e-7)
_CHECK_ROWS = 65536  # rows per chunk when validating (memory-mapped) keys


@functools.lru_cache(maxsize=None)
def _faiss() -> Any:
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - faiss-cpu is a hard dependency
        raise BackendUnavailableError("faiss is not installed; install faiss-cpu") from e
    # A process-wide FAISS setting; only ever raised, so a larger value chosen elsewhere is kept.
    faiss.cvar.distance_compute_blas_database_bs = max(
        faiss.cvar.distance_compute_blas_database_bs, _FAISS_BLAS_DATABASE_BS
    )
    return faiss


# --------------------------------------------------------------------------- validation


def check_keys(keys: Any) -> np.ndarray:
    """Validate database keys: a float32 ``[N, D]`` C-contiguous array of finite, unit-norm rows.

    Returns the array itself (a memmap stays a memmap; nothing is copied). The check reads the keys in
    chunks, so a memory-mapped file is never loaded whole. Raises ValueError naming the problem.
    """
    if not isinstance(keys, np.ndarray):
        raise InvalidArgumentError(f"keys must be a numpy float32 array [N, D], got {type(keys).__name__}")
    if keys.ndim != 2 or keys.shape[0] == 0 or keys.shape[1] == 0:
        raise InvalidArgumentError(f"keys must have shape [N, D] with N, D >= 1, got {keys.shape}")
    if keys.dtype != np.float32:
        raise InvalidArgumentError(f"keys must be float32, got {keys.dtype}")
    if not keys.flags.c_contiguous:
        raise InvalidArgumentError("keys must be C-contiguous")
    for start in range(0, keys.shape[0], _CHECK_ROWS):
        chunk = np.asarray(keys[start : start + _CHECK_ROWS])
        if not np.isfinite(chunk).all():
            row = start + int(np.nonzero(~np.isfinite(chunk).all(axis=1))[0][0])
            raise InvalidArgumentError(f"keys row {row} is not finite")
        norms = np.sqrt(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64))
        bad = np.nonzero(np.abs(norms - 1.0) > _NORM_TOL)[0]
        if bad.size:
            row = start + int(bad[0])
            raise InvalidArgumentError(f"keys must be L2-normalised; row {row} has norm {norms[bad[0]]:.6g}")
    return keys


def normalize_queries(queries: Any, dim: int) -> np.ndarray:
    """Queries ``[Q, D]`` (numpy or CPU torch, any float dtype) -> L2-normalised float32 C-contiguous copy.

    Raises ValueError for a wrong shape, a non-finite value or an all-zero query.
    """
    if hasattr(queries, "detach"):  # torch tensor
        queries = queries.detach().cpu().numpy()
    q = np.asarray(queries)
    if q.ndim != 2 or q.shape[1] != dim:
        raise InvalidArgumentError(f"queries must have shape [Q, {dim}], got {q.shape}")
    if q.shape[0] == 0:
        raise InvalidArgumentError("queries is empty (Q = 0)")
    if not np.issubdtype(q.dtype, np.floating):
        raise InvalidArgumentError(f"queries must be floating point, got {q.dtype}")
    q = np.array(q, dtype=np.float32, order="C", copy=True)
    if not np.isfinite(q).all():
        raise InvalidArgumentError("queries contain NaN or infinity")
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidArgumentError(f"query {int(np.nonzero(norms[:, 0] == 0)[0][0])} is all zeros and has no direction")
    q /= norms
    return q


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")
    return int(k)


def _exclude_array(exclude: Any, n_queries: int, count: int) -> np.ndarray | None:
    """``exclude`` -> int64 ``[Q, m]`` (or None when it excludes nothing)."""
    if exclude is None:
        return None
    if hasattr(exclude, "detach"):
        exclude = exclude.detach().cpu().numpy()
    ex = np.asarray(exclude)
    if ex.size and not np.issubdtype(ex.dtype, np.integer):
        raise InvalidArgumentError(f"exclude must hold integer ids, got {ex.dtype}")
    ex = ex.astype(np.int64, copy=False)
    if ex.ndim == 1:
        ex = ex[:, None]
    if ex.ndim != 2 or ex.shape[0] != n_queries:
        raise InvalidArgumentError(f"exclude must have shape [Q] or [Q, m] with Q = {n_queries}, got {np.shape(exclude)}")
    bad = (ex < -1) | (ex >= count)
    if bad.any():
        raise InvalidArgumentError(f"exclude id {int(ex[bad][0])} is outside [0, {count}) (use -1 for no id)")
    if ex.shape[1] == 0 or (ex == -1).all():
        return None
    return ex


def _excluded(ids: np.ndarray, ex: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask: ``ids[r, j]`` is one of ``ex[r]`` (or -1, "no result")."""
    # Offset each row's ids into its own range so one np.isin (sort-based) handles all rows at once.
    rows = np.arange(len(ids), dtype=np.int64)[:, None] * (count + 1)
    return (ids < 0) | np.isin(ids + 1 + rows, ex + 1 + rows)


def _first_valid(scores: np.ndarray, ids: np.ndarray, invalid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k entries not marked invalid (order kept); rows lacking k get id -1."""
    order = np.argsort(invalid, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(scores, order, axis=1)
    i = np.take_along_axis(ids, order, axis=1)
    short = np.take_along_axis(invalid, order, axis=1)
    s[short] = -np.inf
    i[short] = -1
    return s, i


# --------------------------------------------------------------------------- interface


class SearchIndex(ABC):
    """Common behaviour: query normalisation, argument checks and exclusion on top of ``_search``."""

    kind: str = ""
    exact: bool = True

    def __init__(self, keys: np.ndarray) -> None:
        self._keys = check_keys(keys)

    @property
    def count(self) -> int:
        """Number of database keys N."""
        return int(self._keys.shape[0])

    @property
    def dim(self) -> int:
        """Key dimension D."""
        return int(self._keys.shape[1])

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw top-k of normalised float32 queries, k <= N: float32 scores, int64 ids (-1 = none found)."""

    def _exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        scores, ids = faiss.knn(queries, self._keys, k, metric=faiss.METRIC_INNER_PRODUCT)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def search(self, queries: Any, k: int, exclude: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k keys by inner product for each query; see the module docstring.

        Raises ValueError when a query cannot get k results: k > N, or fewer than k keys remain after
        its exclusions.
        """
        q = normalize_queries(queries, self.dim)
        k = _check_k(k)
        n = self.count
        ex = _exclude_array(exclude, q.shape[0], n)
        if ex is None:
            if k > n:
                raise InvalidArgumentError(f"k = {k} is larger than the database ({n} entries)")
            scores, ids = self._search(q, k)
            invalid = ids < 0
        else:
            # Distinct real ids excluded per row: a query needs N - that >= k keys left.
            srt = np.sort(ex, axis=1)
            distinct = (srt >= 0) & np.concatenate([np.ones((len(srt), 1), bool), srt[:, 1:] != srt[:, :-1]], axis=1)
            n_excl = distinct.sum(axis=1)
            worst = int(np.argmax(n_excl))
            if n - int(n_excl[worst]) < k:
                raise InvalidArgumentError(
                    f"k = {k} is too large: query {worst} excludes {int(n_excl[worst])} of the "
                    f"database's {n} entries, leaving {n - int(n_excl[worst])}"
                )
            # Each row loses at most max(n_excl) of its top k + max(n_excl), so exact search needs no more.
            kk = min(n, k + int(n_excl.max()))
            raw_s, raw_i = self._search(q, kk)
            invalid = _excluded(raw_i, ex, n)
            scores, ids = _first_valid(raw_s, raw_i, invalid, k)
            invalid = ids < 0
        if invalid.any():
            scores, ids = self._complete(q, k, ex, scores, ids, invalid.any(axis=1))
        return scores, ids

    def _complete(
        self, q: np.ndarray, k: int, ex: np.ndarray | None, scores: np.ndarray, ids: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fill rows an approximate index left short (a sparse graph region) with an exact search."""
        rows = np.nonzero(rows)[0]
        m = 0 if ex is None else ex.shape[1]
        kk = min(self.count, k + m)
        raw_s, raw_i = self._exact_search(q[rows], kk)
        invalid = raw_i < 0 if ex is None else _excluded(raw_i, ex[rows], self.count)
        scores[rows], ids[rows] = _first_valid(raw_s, raw_i, invalid, k)
        if (ids[rows] < 0).any():  # cannot happen after the count checks in search(); guard the invariant
            raise RuntimeError("exact search returned fewer results than the database holds")
        return scores, ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(count={self.count}, dim={self.dim})"


# --------------------------------------------------------------------------- CPU (FAISS)


class FlatIPIndex(SearchIndex):
    """Exact inner-product search with FAISS on the CPU, straight on the (memory-mapped) keys."""

    kind = "flat"
    exact = True

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._exact_search(queries, k)


class HNSWIndex(SearchIndex):
    """Approximate inner-product search with ``faiss.IndexHNSWFlat`` (holds its own copy of the keys).

    Defaults (M = 32, efConstruction = 100, efSearch = 256) give recall@10 >= 0.95 on 100k uniformly
    random 64-d unit keys and on 100k 640-d keys of low intrinsic dimension (tests/test_index.py).
    Uniformly random keys of several hundred dimensions have no neighbourhood structure for any graph
    index to exploit; for those, use the exact index.
    """

    kind = "hnsw"
    exact = False
    DEFAULT_M = 32
    DEFAULT_EF_CONSTRUCTION = 100
    DEFAULT_EF_SEARCH = 256

    def __init__(
        self,
        keys: np.ndarray,
        m: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef_search: int = DEFAULT_EF_SEARCH,
        *,
        _index: Any = None,
    ) -> None:
        super().__init__(keys)
        for name, value in (("m", m), ("ef_construction", ef_construction)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 2:
                raise InvalidArgumentError(f"{name} must be an integer >= 2, got {value!r}")
        self.ef_search = ef_search
        faiss = _faiss()
        if _index is None:
            _index = faiss.IndexHNSWFlat(self.dim, int(m), faiss.METRIC_INNER_PRODUCT)
            _index.hnsw.efConstruction = int(ef_construction)
            _index.add(self._keys)
        self._index = _index

    @property
    def ef_search(self) -> int:
        """Search beam width; larger = higher recall, slower. FAISS uses max(ef_search, k)."""
        return self._ef_search

    @ef_search.setter
    def ef_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InvalidArgumentError(f"ef_search must be a positive integer, got {value!r}")
        self._ef_search = int(value)

    @property
    def m(self) -> int:
        """Graph degree parameter M the index was built with."""
        # level 0 holds 2*M neighbours per node in FAISS's HNSW
        return int(self._index.hnsw.nb_neighbors(0)) // 2

    @property
    def ef_construction(self) -> int:
        """Build-time beam width the index was built with."""
        return int(self._index.hnsw.efConstruction)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        params = faiss.SearchParametersHNSW(efSearch=self._ef_search)
        scores, ids = self._index.search(queries, k, params=params)
        return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index with ``faiss.write_index`` atomically (temp file in the same folder + rename)."""
        with atomic_file(path) as tmp:
            _faiss().write_index(self._index, str(tmp))

    @classmethod
    def load(cls, path: str | os.PathLike[str], keys: np.ndarray, ef_search: int = DEFAULT_EF_SEARCH) -> HNSWIndex:
        """Read an index written by :meth:`save` for these ``keys``.

        Raises FileNotFoundError when the file is missing and ValueError when it is not an inner-product
        HNSW index of these keys (count, dimension, or sampled stored vectors differ).
        """
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(f"HNSW index file {path} does not exist")
        keys = check_keys(keys)
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise InvalidArgumentError(f"{path} is not a readable FAISS index: {e}") from e
        if not isinstance(index, faiss.IndexHNSWFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise InvalidArgumentError(f"{path} is not an inner-product IndexHNSWFlat")
        if index.ntotal != keys.shape[0] or index.d != keys.shape[1]:
            raise InvalidArgumentError(
                f"{path} indexes {index.ntotal} keys of dimension {index.d}, "
                f"but the keys are {keys.shape[0]} x {keys.shape[1]}"
            )
        sample = np.unique(np.linspace(0, keys.shape[0] - 1, num=min(16, keys.shape[0])).astype(np.int64))
        stored = np.stack([index.reconstruct(int(i)) for i in sample])
        if not np.array_equal(stored, np.asarray(keys[sample])):
            raise InvalidArgumentError(f"{path} was built from other keys than the ones given")
        return cls(keys, ef_search=ef_search, _index=index)


# --------------------------------------------------------------------------- GPU (cuVS)


def _cuvs_modules() -> tuple[Any, Any]:
    """torch and cuvs.neighbors, or RissoleError saying why the GPU path cannot run."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("cuVS search needs an NVIDIA GPU, but torch sees no CUDA device")
    try:
        from cuvs import neighbors
    except ImportError as e:
        raise BackendUnavailableError(f"cuVS search needs the cuvs package (pip install cuvs-cu13): {e}") from e
    return torch, neighbors


class _DeviceIndex(SearchIndex):
    """Keys held on a torch device (uploaded in chunks); exact search and rescoring there (no FAISS
    needed on a GPU machine, also where CAGRA leaves a row short)."""

    chunk_rows = 65536  # keys per GEMM of the exact search (scratch: queries x chunk scores)

    def __init__(self, keys: np.ndarray, device: Any) -> None:
        super().__init__(keys)
        import torch

        self._torch = torch
        self._device = torch.device(device)
        # Upload in chunks: no host-side copy of a (memory-mapped, read-only) key file.
        self._gpu_keys = self._torch.empty(self._keys.shape, dtype=self._torch.float32, device=self._device)
        for start in range(0, self.count, _CHECK_ROWS):
            chunk = np.array(self._keys[start : start + _CHECK_ROWS])
            self._gpu_keys[start : start + len(chunk)] = self._torch.from_numpy(chunk).to(self._device)

    def _exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Per chunk of keys one GEMM with the queries and a top-k, merged across chunks."""
        torch = self._torch
        q = torch.from_numpy(queries).to(self._device)
        best_scores = q.new_empty((len(q), 0))
        best_ids = torch.empty((len(q), 0), dtype=torch.int64, device=self._device)
        for start in range(0, self.count, self.chunk_rows):
            scores = q @ self._gpu_keys[start:start + self.chunk_rows].T
            top = scores.topk(min(k, scores.shape[1]), dim=1)
            best_scores = torch.cat([best_scores, top.values], dim=1)
            best_ids = torch.cat([best_ids, top.indices + start], dim=1)
            if best_scores.shape[1] > k:
                best_scores, order = best_scores.topk(k, dim=1)
                best_ids = torch.gather(best_ids, 1, order)
        return self._rescore(queries, best_ids)

    def _rescore(self, queries: np.ndarray, raw_ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores for the returned ids, sorted descending.

        Recomputing keeps the scores independent of how a cuVS version signs inner-product "distances".
        """
        torch = self._torch
        ids = torch.as_tensor(raw_ids, device=self._device).to(torch.int64)
        valid = (ids >= 0) & (ids < self.count)
        safe = torch.where(valid, ids, torch.zeros_like(ids))
        q = torch.from_numpy(queries).to(self._device)
        scores = torch.einsum("qkd,qd->qk", self._gpu_keys[safe], q)
        scores = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
        ids = torch.where(valid, ids, torch.full_like(ids, -1))
        scores, order = torch.sort(scores, dim=1, descending=True, stable=True)
        ids = torch.gather(ids, 1, order)
        return scores.cpu().numpy().astype(np.float32), ids.cpu().numpy()


class _CuvsIndex(_DeviceIndex):
    """Shared cuVS plumbing: keys on the GPU as a torch tensor (CUDA array interface for cuVS)."""

    def __init__(self, keys: np.ndarray, device: Any = "cuda") -> None:
        _, self._neighbors = _cuvs_modules()
        import torch

        if torch.device(device).type != "cuda":
            raise InvalidArgumentError(f"cuVS indexes run on a CUDA device, got {device}")
        super().__init__(keys, device)


class CuvsBruteForceIndex(_CuvsIndex):
    """Exact inner-product search on the GPU with ``cuvs.neighbors.brute_force``."""

    kind = "cuvs"
    exact = True

    def __init__(self, keys: np.ndarray, device: Any = "cuda") -> None:
        super().__init__(keys, device)
        with self._torch.cuda.device(self._device):
            self._index = self._neighbors.brute_force.build(self._gpu_keys, metric="inner_product")

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        with self._torch.cuda.device(self._device):
            q = self._torch.from_numpy(queries).to(self._device)
            _, neighbours = self._neighbors.brute_force.search(self._index, q, k)
            return self._rescore(queries, neighbours)


class CuvsCagraIndex(_CuvsIndex):
    """Approximate inner-product search on the GPU with a cuVS CAGRA graph."""

    kind = "cagra"
    exact = False

    def __init__(
        self,
        keys: np.ndarray,
        device: Any = "cuda",
        graph_degree: int = 64,
        intermediate_graph_degree: int = 128,
        itopk_size: int = 64,
    ) -> None:
        super().__init__(keys, device)
        cagra = self._neighbors.cagra
        # The graph cannot have more neighbours per node than there are other nodes.
        graph_degree = max(1, min(graph_degree, self.count - 1))
        intermediate_graph_degree = max(graph_degree, min(intermediate_graph_degree, self.count - 1))
        self.itopk_size = int(itopk_size)
        params = cagra.IndexParams(
            metric="inner_product",
            graph_degree=graph_degree,
            intermediate_graph_degree=intermediate_graph_degree,
        )
        with self._torch.cuda.device(self._device):
            self._index = cagra.build(params, self._gpu_keys)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        cagra = self._neighbors.cagra
        # CAGRA keeps itopk_size candidates; it must hold at least k (rounded up to a multiple of 32).
        itopk = max(self.itopk_size, -(-k // 32) * 32)
        with self._torch.cuda.device(self._device):
            q = self._torch.from_numpy(queries).to(self._device)
            _, neighbours = cagra.search(cagra.SearchParams(itopk_size=itopk), self._index, q, k)
            return self._rescore(queries, neighbours)


class TorchIndex(_DeviceIndex):
    """Exact inner-product search with torch on the keys' device (:meth:`_DeviceIndex._exact_search`)."""

    kind = "torch"
    exact = True

    def __init__(self, keys: np.ndarray, device: Any = "cpu") -> None:
        import torch

        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError) as e:
            raise InvalidArgumentError(f"the torch index got an unknown device {device!r}: {e}") from e
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(f"the torch index on {device} needs a CUDA device, but torch sees none")
        super().__init__(keys, device)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._exact_search(queries, k)


# --------------------------------------------------------------------------- factory

_AUTO_GPU_WARNED = False


def resolve_index_kind(kind: str, count: int, device: str = "cpu") -> str:
    """The concrete kind ``make_index`` builds for ``kind`` over ``count`` keys on ``device``.

    ``"auto"``: on a CUDA ``device``, cuVS when it can run there (exact below
    :data:`AUTO_CAGRA_MIN_COUNT` keys, CAGRA from there), otherwise (warning once, naming why) the
    exact torch search on that device; on the CPU FAISS, exact below :data:`AUTO_HNSW_MIN_COUNT`
    keys and HNSW from there.
    """
    global _AUTO_GPU_WARNED
    if kind not in INDEX_KINDS:
        raise InvalidArgumentError(f"unknown index kind {kind!r}; choose one of {', '.join(INDEX_KINDS)}")
    if kind != "auto":
        return kind
    if str(device).startswith("cuda"):
        try:
            _cuvs_modules()
            return "cagra" if count >= AUTO_CAGRA_MIN_COUNT else "cuvs"
        except BackendUnavailableError as e:
            if not _AUTO_GPU_WARNED:
                warnings.warn(f"retrieval uses torch's exact search on {device} instead of cuVS: {e}", stacklevel=3)
                _AUTO_GPU_WARNED = True
            return "torch"
    return "hnsw" if count >= AUTO_HNSW_MIN_COUNT else "flat"


def make_index(
    kind: str = "auto", keys: np.ndarray | None = None, *, device: str = "cpu", **params: Any
) -> SearchIndex:
    """Build a search index over ``keys`` (float32 ``[N, D]``, L2-normalised).

    ``kind``: ``"flat"`` (exact, CPU), ``"hnsw"`` (approximate, CPU), ``"cuvs"`` (exact, GPU),
    ``"cagra"`` (approximate, GPU), ``"torch"`` (exact, torch on ``device``) or ``"auto"`` (see :func:`resolve_index_kind`). ``params`` go to
    the index class (e.g. ``m``, ``ef_construction``, ``ef_search`` for HNSW). An explicitly requested
    GPU kind that cannot run raises RissoleError with the reason.
    """
    if keys is None:
        raise InvalidArgumentError("make_index needs the keys to index")
    kind = resolve_index_kind(kind, int(np.shape(keys)[0]), device)
    if kind == "flat":
        return FlatIPIndex(keys, **params)
    if kind == "hnsw":
        return HNSWIndex(keys, **params)
    if kind == "torch":
        return TorchIndex(keys, device=device, **params)
    gpu_device = device if str(device).startswith("cuda") else "cuda"
    if kind == "cuvs":
        return CuvsBruteForceIndex(keys, device=gpu_device, **params)
    return CuvsCagraIndex(keys, device=gpu_device, **params)

"""Search indexes against an exact numpy search, with tie-aware comparison (as FAISS's own tests do)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rissole_trt.errors import RissoleError
from rissole_trt.retrieval import (
    CuvsBruteForceIndex,
    CuvsCagraIndex,
    FlatIPIndex,
    HNSWIndex,
    TorchIndex,
    make_index,
    resolve_index_kind,
)
from rissole_trt.retrieval import index as index_mod

TIE_TOL = 1e-5  # float32 inner products of unit vectors agree to ~1e-7; ties are exact duplicates here


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def low_rank_rows(rng: np.random.Generator, n: int, d: int, rank: int = 16) -> np.ndarray:
    """Unit keys of low intrinsic dimension (a rank-16 map plus noise), like real latents' keys."""
    w = np.random.default_rng(1234).standard_normal((rank, d)).astype(np.float32)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ w
    x += 1.2 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_scores(keys: np.ndarray, queries: np.ndarray) -> np.ndarray:
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    return q.astype(np.float64) @ keys.astype(np.float64).T


def assert_knn_matches(full: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int, exclude=None) -> None:
    """Check a top-k result against the exact score matrix ``full [Q, N]``, allowing any order among ties.

    Scores must equal the exact top-k scores; ids are compared as sets within groups of tied scores,
    and at the k-th place an id may be any of the entries tied with the k-th score.
    """
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (full.shape[0], k)
    for r in range(full.shape[0]):
        row = full[r].copy()
        if exclude is not None:
            ex = np.atleast_1d(exclude[r])
            row[ex[ex >= 0]] = -np.inf
        ref_order = np.argsort(-row, kind="stable")
        ref_top = row[ref_order[:k]]
        got = ids[r]
        assert len(set(got.tolist())) == k, f"row {r}: duplicate ids {got}"
        assert np.all(got >= 0)
        np.testing.assert_allclose(scores[r], ref_top, atol=TIE_TOL, err_msg=f"row {r} scores")
        np.testing.assert_allclose(row[got], scores[r], atol=TIE_TOL, err_msg=f"row {r}: scores do not match ids")
        kth = ref_top[-1]
        # Entries strictly better than the k-th score must all be present ...
        must = set(np.nonzero(row > kth + TIE_TOL)[0].tolist())
        assert must <= set(got.tolist()), f"row {r}: missing {must - set(got.tolist())}"
        # ... and the rest must come from the group tied with the k-th score.
        allowed = must | set(np.nonzero(row >= kth - TIE_TOL)[0].tolist())
        assert set(got.tolist()) <= allowed


def recall_at_k(ids: np.ndarray, ref_ids: np.ndarray) -> float:
    k = ref_ids.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids.tolist(), ref_ids.tolist())]))


@pytest.fixture(scope="module")
def keys_with_ties() -> np.ndarray:
    """600 unit keys of dimension 32 where entries 500..599 duplicate entries 0..99 (exact ties)."""
    rng = np.random.default_rng(0)
    base = unit_rows(rng, 500, 32)
    return np.ascontiguousarray(np.concatenate([base, base[:100]]))


# --------------------------------------------------------------------------- exact search


@pytest.mark.parametrize("k", [1, 7, 50])
def test_flat_matches_exact_numpy_search(keys_with_ties: np.ndarray, k: int) -> None:
    rng = np.random.default_rng(1)
    queries = np.concatenate([unit_rows(rng, 20, 32), keys_with_ties[[3, 50, 510]]])
    scores, ids = FlatIPIndex(keys_with_ties).search(queries, k)
    assert_knn_matches(exact_scores(keys_with_ties, queries), scores, ids, k)


def test_flat_queries_are_normalised_and_accept_torch(keys_with_ties: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    q = unit_rows(rng, 5, 32)
    index = FlatIPIndex(keys_with_ties)
    s1, i1 = index.search(q, 5)
    s2, i2 = index.search(torch.from_numpy(q.astype(np.float64) * 7.5), 5)
    np.testing.assert_allclose(s1, s2, atol=1e-6)
    assert (i1 == i2).all()
    assert index.search(q, 5)[0].max() <= 1.0 + 1e-5  # scores are cosines


def test_flat_searches_a_memmap_without_copying(tmp_path, keys_with_ties: np.ndarray) -> None:
    np.save(tmp_path / "keys.npy", keys_with_ties)
    mm = np.load(tmp_path / "keys.npy", mmap_mode="r")
    index = FlatIPIndex(mm)
    assert index._keys is mm
    q = keys_with_ties[:4]
    scores, ids = index.search(q, 3)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 3)


# --------------------------------------------------------------------------- exclusion


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclude_self_removes_the_query_and_keeps_k(keys_with_ties: np.ndarray, kind: str) -> None:
    qids = np.array([0, 3, 99, 250, 505, 599], dtype=np.int64)
    index = make_index(kind, keys_with_ties)
    scores, ids = index.search(keys_with_ties[qids], 10, exclude=qids)
    assert ids.shape == (len(qids), 10)
    assert not (ids == qids[:, None]).any()
    full = exact_scores(keys_with_ties, keys_with_ties[qids])
    if index.exact:
        assert_knn_matches(full, scores, ids, 10, exclude=qids)
    else:
        full[np.arange(len(qids)), qids] = -np.inf
        ref = np.argsort(-full, axis=1, kind="stable")[:, :10]
        assert recall_at_k(ids, ref) >= 0.9


def test_exclude_matrix_with_padding_duplicates_and_whole_top_k(keys_with_ties: np.ndarray) -> None:
    index = FlatIPIndex(keys_with_ties)
    q = keys_with_ties[[7, 8]]
    _, top = index.search(q, 30)
    # Row 0 excludes its whole top 30 (so the answer lies beyond the first k + m of a naive search
    # that ignored duplicates); row 1 excludes nothing but padding and a repeated id.
    ex = np.full((2, 32), -1, dtype=np.int64)
    ex[0, :30] = top[0]
    ex[0, 30:] = top[0, :2]
    ex[1, :3] = [top[1, 0], top[1, 0], -1]
    scores, ids = index.search(q, 5, exclude=ex)
    assert not np.isin(ids[0], top[0]).any()
    assert top[1, 0] not in ids[1]
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 5, exclude=ex)


def test_exclude_down_to_exactly_k_remaining() -> None:
    keys = unit_rows(np.random.default_rng(3), 12, 8)
    ex = np.arange(7, dtype=np.int64)[None, :]
    scores, ids = FlatIPIndex(keys).search(keys[:1], 5, exclude=ex)
    assert sorted(ids[0].tolist()) == [7, 8, 9, 10, 11]
    assert_knn_matches(exact_scores(keys, keys[:1]), scores, ids, 5, exclude=ex)
    with pytest.raises(ValueError, match="too large"):
        FlatIPIndex(keys).search(keys[:1], 6, exclude=ex)


def test_short_approximate_results_are_completed_exactly(keys_with_ties: np.ndarray) -> None:
    """An index whose raw search comes back short (-1 ids, as a sparse HNSW region can) still yields k."""

    class Lossy(FlatIPIndex):
        exact = False

        def _search(self, queries, k):
            s, i = super()._search(queries, k)
            i[::2, k // 2 :] = -1  # every other query loses half its results
            s[::2, k // 2 :] = -np.inf
            return s, i

    q = keys_with_ties[[1, 2, 3, 4]]
    ex = np.array([1, 2, 3, 4], dtype=np.int64)
    scores, ids = Lossy(keys_with_ties).search(q, 8, exclude=ex)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 8, exclude=ex)
    scores, ids = Lossy(keys_with_ties).search(q, 8)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 8)


@pytest.mark.parametrize(
    "exclude, message",
    [
        (np.array([0, 600]), "outside"),
        (np.array([0, -2]), "outside"),
        (np.array([0, 1, 2]), "shape"),
        (np.array([0.0, 1.0]), "integer"),
    ],
)
def test_bad_exclude_is_rejected(keys_with_ties: np.ndarray, exclude, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlatIPIndex(keys_with_ties).search(keys_with_ties[:2], 3, exclude=exclude)


# --------------------------------------------------------------------------- argument checks


def test_bad_queries_and_k_are_rejected(keys_with_ties: np.ndarray) -> None:
    index = FlatIPIndex(keys_with_ties)
    good = keys_with_ties[:2]
    with pytest.raises(ValueError, match=r"\[Q, 32\]"):
        index.search(good[:, :16], 3)
    with pytest.raises(ValueError, match=r"\[Q, 32\]"):
        index.search(good[0], 3)
    with pytest.raises(ValueError, match="NaN"):
        index.search(np.full((1, 32), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="all zeros"):
        index.search(np.zeros((1, 32), np.float32), 3)
    with pytest.raises(ValueError, match="empty"):
        index.search(np.zeros((0, 32), np.float32), 3)
    for k in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="positive integer"):
            index.search(good, k)
    with pytest.raises(ValueError, match="larger than the database"):
        index.search(good, 601)


@pytest.mark.parametrize(
    "keys, message",
    [
        (np.ones((4, 3), np.float64) / np.sqrt(3), "float32"),
        (np.ones((4, 3), np.float32), "normalised"),
        (np.full((4, 3), np.nan, np.float32), "not finite"),
        (np.ones(3, np.float32), r"\[N, D\]"),
        (np.zeros((0, 3), np.float32), r"\[N, D\]"),
        (np.asfortranarray(unit_rows(np.random.default_rng(0), 4, 3)), "C-contiguous"),
    ],
)
def test_bad_keys_are_rejected(keys: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FlatIPIndex(keys)


def test_make_index_kinds(monkeypatch: pytest.MonkeyPatch, keys_with_ties: np.ndarray) -> None:
    assert isinstance(make_index("auto", keys_with_ties), FlatIPIndex)
    monkeypatch.setattr(index_mod, "AUTO_HNSW_MIN_COUNT", 500)
    assert isinstance(make_index("auto", keys_with_ties), HNSWIndex)
    assert resolve_index_kind("auto", 499) == "flat"
    with pytest.raises(ValueError, match="unknown index kind"):
        make_index("ivf", keys_with_ties)
    with pytest.raises(ValueError, match="needs the keys"):
        make_index("flat")


def _cuvs_unusable_reason() -> str | None:
    try:
        index_mod._cuvs_modules()
    except RissoleError as e:
        return str(e)
    return None


@pytest.mark.parametrize("kind", ["cuvs", "cagra"])
def test_gpu_kinds_refuse_clearly_without_gpu_or_cuvs(kind: str, keys_with_ties: np.ndarray) -> None:
    reason = _cuvs_unusable_reason()
    if reason is None:
        pytest.skip("cuVS and a GPU are available here; the refusal path cannot be exercised")
    with pytest.raises(RissoleError, match="GPU|cuvs"):
        make_index(kind, keys_with_ties)


def test_auto_on_cuda_picks_cuvs_brute_force_then_cagra_from_100k(monkeypatch: pytest.MonkeyPatch) -> None:
    # The choice only: as if cuVS and a GPU were usable (their searches are tested on a GPU below).
    monkeypatch.setattr(index_mod, "_cuvs_modules", lambda: (None, None))
    assert resolve_index_kind("auto", 99_999, "cuda") == "cuvs"
    assert resolve_index_kind("auto", 100_000, "cuda:1") == "cagra"
    assert resolve_index_kind("auto", 100_000, "cpu") == "flat"
    assert resolve_index_kind("flat", 100_000, "cuda") == "flat"  # an explicit kind is kept


def test_auto_on_cuda_without_cuvs_uses_torch_on_the_device_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    if _cuvs_unusable_reason() is None:
        pytest.skip("cuVS and a GPU are available here; auto picks them")
    monkeypatch.setattr(index_mod, "_AUTO_GPU_WARNED", False)
    with pytest.warns(UserWarning, match="torch's exact search on cuda instead of cuVS"):
        assert resolve_index_kind("auto", 200_000, "cuda") == "torch"  # exact at every size
    assert resolve_index_kind("auto", 50, "cpu") == "flat"


# --------------------------------------------------------------------------- torch (any device)


def _assert_exact_top10(index, keys: np.ndarray, n_random: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The exact top 10 for random queries and two keys, also with those keys' own ids excluded;
    returns the queries and their exact scores."""
    q = np.concatenate([unit_rows(np.random.default_rng(seed), n_random, 32), keys[[1, 505]]])
    full = exact_scores(keys, q)
    assert_knn_matches(full, *index.search(q, 10), 10)
    ex = np.array([-1] * n_random + [1, 505], dtype=np.int64)
    assert_knn_matches(full, *index.search(q, 10, exclude=ex), 10, exclude=ex)
    return q, full


@pytest.mark.parametrize("chunk_rows", [65536, 128])  # one chunk, and a merge over five
def test_torch_index_is_exact_with_ties_and_exclusions(keys_with_ties: np.ndarray, monkeypatch, chunk_rows) -> None:
    monkeypatch.setattr(TorchIndex, "chunk_rows", chunk_rows)
    index = make_index("torch", keys_with_ties, device="cpu")
    assert isinstance(index, TorchIndex) and index.exact
    q, full = _assert_exact_top10(index, keys_with_ties, 30, seed=14)
    scores, ids = index.search(q[:3], len(keys_with_ties))  # k = N: every key, in order
    assert_knn_matches(full[:3], scores, ids, len(keys_with_ties))
    with pytest.raises(ValueError, match="larger than the database"):
        index.search(q, len(keys_with_ties) + 1)


def test_a_device_index_left_short_is_completed_on_its_device_without_faiss(keys_with_ties, monkeypatch) -> None:
    """CAGRA may return fewer than k ids for a row; the top-up is an exact search on the keys' device
    (the GPU machine has no FAISS)."""
    import sys

    class ShortIndex(TorchIndex):  # an approximate index that finds only 3 ids per even row
        exact = False

        def _search(self, queries, k):
            scores, ids = super()._search(queries, k)
            scores[::2, 3:], ids[::2, 3:] = -np.inf, -1
            return scores, ids

    monkeypatch.setitem(sys.modules, "faiss", None)  # any FAISS call would raise ImportError
    _assert_exact_top10(ShortIndex(keys_with_ties, "cpu"), keys_with_ties, 9, seed=15)


def test_torch_index_refuses_a_device_it_cannot_use(keys_with_ties: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        make_index("torch", keys_with_ties, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RissoleError, match="needs a CUDA device, but torch sees none"):
            make_index("torch", keys_with_ties, device="cuda")


@pytest.mark.gpu
def test_torch_index_on_a_gpu_matches_the_cpu(keys_with_ties: np.ndarray) -> None:
    q = unit_rows(np.random.default_rng(15), 40, 32)
    scores, ids = make_index("torch", keys_with_ties, device="cuda").search(q, 10)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 10)


# --------------------------------------------------------------------------- HNSW


def test_hnsw_parameters_and_validation(keys_with_ties: np.ndarray) -> None:
    index = HNSWIndex(keys_with_ties, m=8, ef_construction=20, ef_search=30)
    assert (index.m, index.ef_construction, index.ef_search) == (8, 20, 30)
    index.ef_search = 64
    assert index.ef_search == 64
    with pytest.raises(ValueError, match="ef_search"):
        index.ef_search = 0
    with pytest.raises(ValueError, match="m must be"):
        HNSWIndex(keys_with_ties, m=1)


def test_hnsw_save_load_round_trip(tmp_path, keys_with_ties: np.ndarray) -> None:
    index = HNSWIndex(keys_with_ties, m=16, ef_construction=40)
    path = tmp_path / "h.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["h.faiss"]  # no temporary left behind
    loaded = HNSWIndex.load(path, keys_with_ties, ef_search=index.ef_search)
    assert (loaded.m, loaded.ef_construction) == (16, 40)
    q = keys_with_ties[:20]
    for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
        np.testing.assert_array_equal(a, b)

    other = unit_rows(np.random.default_rng(9), 600, 32)
    with pytest.raises(ValueError, match="other keys"):
        HNSWIndex.load(path, other)
    with pytest.raises(ValueError, match="indexes 600 keys"):
        HNSWIndex.load(path, keys_with_ties[:300])
    with pytest.raises(FileNotFoundError):
        HNSWIndex.load(tmp_path / "missing.faiss", keys_with_ties)
    (tmp_path / "junk.faiss").write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="not a readable FAISS index"):
        HNSWIndex.load(tmp_path / "junk.faiss", keys_with_ties)


def _hnsw_recall(keys: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    index = HNSWIndex(keys)  # default parameters
    _, ids = index.search(queries, k)
    _, ref = FlatIPIndex(keys).search(queries, k)
    return recall_at_k(ids, ref)


@pytest.mark.parametrize("d, data", [(64, "uniform"), (640, "low-rank")])
def test_hnsw_default_recall_small(d: int, data: str) -> None:
    rng = np.random.default_rng(10)
    make = unit_rows if data == "uniform" else low_rank_rows
    keys, queries = make(rng, 4_000, d), make(rng, 200, d)
    assert _hnsw_recall(keys, queries) >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("d, data", [(64, "uniform"), (640, "low-rank")])
def test_hnsw_default_recall_100k(d: int, data: str) -> None:
    """Recall@10 >= 0.95 at default settings on 100k random keys (about a minute or two per case on 2 cores).

    640-d keys are drawn with low intrinsic dimension, like real latent keys: uniformly random 640-d
    unit vectors have no neighbourhood structure (every key is nearly orthogonal to every other) and no
    graph index reaches this recall on them at a useful speed; exact search is the right tool there.
    """
    rng = np.random.default_rng(11)
    make = unit_rows if data == "uniform" else low_rank_rows
    keys, queries = make(rng, 100_000, d), make(rng, 300, d)
    assert _hnsw_recall(keys, queries) >= 0.95


# --------------------------------------------------------------------------- cuVS (GPU)


@pytest.mark.gpu
def test_cuvs_brute_force_matches_cpu(keys_with_ties: np.ndarray) -> None:
    if _cuvs_unusable_reason():
        pytest.skip(_cuvs_unusable_reason())
    rng = np.random.default_rng(12)
    q = np.concatenate([unit_rows(rng, 30, 32), keys_with_ties[[1, 505]]])
    gpu = CuvsBruteForceIndex(keys_with_ties)
    scores, ids = gpu.search(q, 10)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 10)
    ex = np.array([-1] * 30 + [1, 505], dtype=np.int64)
    scores, ids = gpu.search(q, 10, exclude=ex)
    assert_knn_matches(exact_scores(keys_with_ties, q), scores, ids, 10, exclude=ex)


@pytest.mark.gpu
def test_cuvs_cagra_recall() -> None:
    if _cuvs_unusable_reason():
        pytest.skip(_cuvs_unusable_reason())
    rng = np.random.default_rng(13)
    keys, q = low_rank_rows(rng, 20_000, 640), low_rank_rows(rng, 200, 640)
    _, ids = CuvsCagraIndex(keys).search(q, 10)
    _, ref = FlatIPIndex(keys).search(q, 10)
    assert recall_at_k(ids, ref) >= 0.95
    qids = np.arange(50, dtype=np.int64)
    _, ids = CuvsCagraIndex(keys).search(keys[qids], 10, exclude=qids)
    assert not (ids == qids[:, None]).any() and (ids >= 0).all()

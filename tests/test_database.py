"""The on-disk retrieval database: round trip, atomic writing, and every way opening one can fail."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole_trt import ops
from rissole_trt.retrieval import (
    Database,
    DatabaseError,
    DatabaseWriter,
    FingerprintMismatchError,
    FlatIPIndex,
    HNSWIndex,
    compute_keys,
    key_dim,
    keys_from_codes,
    merge_code_blocks,
    split_code_blocks,
)

C, H, W, BF, K = 4, 8, 8, 2, 50  # a small latent: 4 blocks of 4 x 4
FP = "a" * 64


def gather_code_blocks_torch(codes: np.ndarray, codebook: np.ndarray, ids: np.ndarray) -> torch.Tensor:
    """Independent torch statement of the neighbour gather: [P, N, bh, bw] codes -> [B, P, k*C, bh, bw]."""
    p, _, bh, bw = codes.shape
    b, k = ids.shape
    vectors = torch.from_numpy(codebook)[torch.from_numpy(codes[:, ids.reshape(-1)].astype(np.int64))]
    # vectors: [P, B*k, bh, bw, C] -> [B, P, k, C, bh, bw]
    vectors = vectors.reshape(p, b, k, bh, bw, -1).permute(1, 0, 2, 5, 3, 4)
    return vectors.reshape(b, p, -1, bh, bw)


def make_content(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal((K, C)).astype(np.float32)
    codes = rng.integers(0, K, size=(n, H, W))
    labels = rng.integers(0, 3, size=n)
    return codebook, codes, labels


def write_db(path: Path, n: int = 37, key_kind: str = "first-block", seed: int = 0, **kw) -> tuple:
    codebook, codes, labels = make_content(n, seed)
    with DatabaseWriter(
        path, count=n, codebook=codebook, latent_shape=(C, H, W), block_factor=BF, fingerprint=FP,
        key_kind=key_kind, label_names=["cat", "dog", "owl"], metadata={"image_size": 32}, **kw,
    ) as w:
        for start, stop in [(0, 10), (10, 10), (10, 30), (30, n)]:  # uneven batches, one empty
            w.add(codes[start:stop], labels=labels[start:stop])
    return codebook, codes, labels


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "db"
    write_db(path)
    return path


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("key_kind", ["first-block", "whole-latent"])
def test_round_trip(tmp_path: Path, key_kind: str) -> None:
    path = tmp_path / "db"
    codebook, codes, labels = write_db(path, key_kind=key_kind)
    assert siblings(path) == ["db"]  # the temporary directory is gone
    db = Database.open(path, expected_fingerprint=FP, verify="full")

    assert (db.count, len(db), db.latent_shape, db.block_factor, db.P, db.bs) == (37, 37, (C, H, W), BF, 4, 4)
    assert (db.key_kind, db.key_dim, db.codebook_size, db.fingerprint) == (
        key_kind, key_dim((C, H, W), BF, key_kind), K, FP,
    )
    assert db.key_dim == (C * 4 * 4 if key_kind == "first-block" else C * H * W)
    for arr in (db.codes, db.keys, db.labels):  # memory-mapped, read-only
        assert isinstance(arr.base, mmap.mmap) and not arr.flags.writeable
    assert db.codes.dtype == np.uint16 and db.codes.shape == (4, 37, 4, 4)
    np.testing.assert_array_equal(db.codebook, codebook)
    np.testing.assert_array_equal(db.entry_codes(np.arange(37)), codes)
    np.testing.assert_array_equal(db.labels, labels)
    assert db.label_names == ["cat", "dog", "owl"] and db.metadata == {"image_size": 32}

    latents = codebook[codes].transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(db.entry_latents(np.arange(37)), latents)
    np.testing.assert_allclose(db.keys, compute_keys(latents, key_kind, BF), atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(db.keys, axis=1), 1.0, atol=1e-6)

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["latent_shape"] == [C, H, W]
    assert set(manifest["files"]) == {"codes.npy", "codebook.npy", "keys.npy", "labels.npy"}


def test_block_layout_matches_ops_split_blocks() -> None:
    """Code blocks are cut exactly like latents are by rissole_trt.ops (row-major block order)."""
    codes = np.random.default_rng(1).integers(0, 1000, size=(3, 12, 12))
    blocks = split_code_blocks(codes, 3)  # [P, B, bh, bw]
    as_latent = torch.from_numpy(codes.astype(np.float32))[:, None]  # [B, 1, H, W]
    ref = ops.split_blocks_reference(as_latent, 3)[:, :, 0].permute(1, 0, 2, 3)  # [P, B, bh, bw]
    np.testing.assert_array_equal(blocks, ref.numpy().astype(np.int64))
    np.testing.assert_array_equal(merge_code_blocks(blocks, 3), codes)


def test_first_block_key_is_the_reference_key() -> None:
    """The reference keys an image by its flattened (C, bh, bw) top-left block, L2-normalised."""
    z = np.random.default_rng(2).standard_normal((5, C, H, W)).astype(np.float32)
    block0 = z[:, :, : H // BF, : W // BF].reshape(5, -1)
    np.testing.assert_allclose(
        compute_keys(torch.from_numpy(z), "first-block", BF),
        block0 / np.linalg.norm(block0, axis=1, keepdims=True), rtol=1e-6,
    )
    whole = z.reshape(5, -1)
    np.testing.assert_allclose(
        compute_keys(z, "whole-latent", BF), whole / np.linalg.norm(whole, axis=1, keepdims=True), rtol=1e-6
    )
    codebook, codes, _ = make_content(4)
    np.testing.assert_array_equal(
        keys_from_codes(codes, codebook, "first-block", BF),
        compute_keys(codebook[codes].transpose(0, 3, 1, 2), "first-block", BF),
    )
    with pytest.raises(ValueError, match="all zeros"):
        compute_keys(np.zeros((1, C, H, W), np.float32), "first-block", BF)
    with pytest.raises(ValueError, match="unknown key kind"):
        compute_keys(z, "middle-block", BF)
    with pytest.raises(ValueError, match="divisible"):
        compute_keys(z, "first-block", 3)


def test_neighbour_blocks_match_a_torch_gather(db_path: Path) -> None:
    db = Database.open(db_path)
    ids = np.array([[0, 36, 5], [5, 5, 1]], dtype=np.int64)
    got = db.neighbour_blocks(ids)  # numpy ids, as the indexes return them
    assert got.shape == (2, 4, 3 * C, 4, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got, gather_code_blocks_torch(np.asarray(db.codes), db.codebook, ids), rtol=0, atol=0)
    # channel n*C + c of block p is channel c of block p of neighbour n
    latents = db.entry_latents(np.array([36]))
    np.testing.assert_array_equal(got[0, 3, C : 2 * C].numpy(), latents[0, :, 4:, 4:])
    with pytest.raises(IndexError):
        db.neighbour_blocks(torch.tensor([[0, 37]]))


def test_written_keys_are_used_and_normalised(tmp_path: Path) -> None:
    codebook, codes, _ = make_content(6)
    keys = np.random.default_rng(3).standard_normal((6, C * 16)) * 3.0
    with DatabaseWriter(tmp_path / "db", count=6, codebook=codebook, latent_shape=(C, H, W), block_factor=BF,
                        fingerprint=FP) as w:
        w.add(codes, keys=keys)
    db = Database.open(tmp_path / "db")
    np.testing.assert_allclose(db.keys, keys / np.linalg.norm(keys, axis=1, keepdims=True), rtol=1e-6)
    assert db.labels is None and db.label_names is None


@pytest.mark.parametrize("key_kind", ["first-block", "whole-latent"])
def test_keys_not_stored_are_recomputed_bitwise_at_open(tmp_path: Path, key_kind: str) -> None:
    write_db(tmp_path / "stored", key_kind=key_kind)
    write_db(tmp_path / "derived", key_kind=key_kind, store_keys=False)
    assert not (tmp_path / "derived" / "keys.npy").exists()
    assert "keys.npy" not in json.loads((tmp_path / "derived" / "manifest.json").read_text())["files"]
    stored = Database.open(tmp_path / "stored")
    derived = Database.open(tmp_path / "derived", verify="full")
    np.testing.assert_array_equal(derived.keys, stored.keys)
    assert not derived.keys.flags.writeable and derived.key_dim == stored.key_dim
    for a, b in zip(derived.index("flat").search(stored.keys[:5], 3), stored.index("flat").search(stored.keys[:5], 3)):
        np.testing.assert_array_equal(a, b)
    hnsw = derived.index("hnsw", persist=True, m=8, ef_construction=20)  # cached under the codes' identity
    reloaded = Database.open(tmp_path / "derived").index("hnsw", persist=True, m=8, ef_construction=20)
    assert len(list((tmp_path / "derived" / "indexes").iterdir())) == 1
    for a, b in zip(hnsw.search(stored.keys[:5], 3), reloaded.search(stored.keys[:5], 3)):
        np.testing.assert_array_equal(a, b)
    codebook, codes, _ = make_content(2)
    with DatabaseWriter(tmp_path / "given", count=2, codebook=codebook, latent_shape=(C, H, W), block_factor=BF,
                        fingerprint=FP, store_keys=False) as w:
        with pytest.raises(ValueError, match="store_keys=False"):
            w.add(codes, keys=np.ones((2, C * 16)))
        w.add(codes)


def test_index_is_cached_and_hnsw_persists(db_path: Path) -> None:
    db = Database.open(db_path)
    flat = db.index("flat")
    assert isinstance(flat, FlatIPIndex) and db.index("flat") is flat
    scores, ids = flat.search(db.keys[:3], 4, exclude=np.arange(3))
    assert not (ids == np.arange(3)[:, None]).any()

    hnsw = db.index("hnsw", persist=True, m=8, ef_construction=20)
    saved = list((db_path / "indexes").iterdir())
    assert len(saved) == 1 and saved[0].name.startswith("hnsw-M8-efc20-")
    reopened = Database.open(db_path, verify="full")  # the extra folder does not upset verification
    loaded = reopened.index("hnsw", persist=True, m=8, ef_construction=20)
    assert isinstance(loaded, HNSWIndex) and loaded.m == 8
    for a, b in zip(hnsw.search(db.keys[:5], 3), loaded.search(reopened.keys[:5], 3)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="unknown HNSW parameters: bogus"):
        reopened.index("hnsw", persist=True, bogus=1)


# --------------------------------------------------------------------------- writing atomically


def test_exception_while_writing_leaves_nothing(tmp_path: Path) -> None:
    codebook, codes, _ = make_content(10)
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with DatabaseWriter(tmp_path / "db", count=10, codebook=codebook, latent_shape=(C, H, W), block_factor=BF,
                            fingerprint=FP) as w:
            w.add(codes[:5])
            raise RuntimeError("encoder crashed")
    assert siblings(tmp_path / "db") == []


def test_too_few_entries_leave_nothing(tmp_path: Path) -> None:
    codebook, codes, _ = make_content(10)
    w = DatabaseWriter(tmp_path / "db", count=10, codebook=codebook, latent_shape=(C, H, W), block_factor=BF,
                       fingerprint=FP)
    w.add(codes[:4])
    with pytest.raises(ValueError, match="only 4 of the declared 10"):
        w.close()
    assert siblings(tmp_path / "db") == []


@pytest.mark.slow
def test_killed_build_leaves_no_database_and_its_leftovers_are_cleaned(tmp_path: Path) -> None:
    """A process killed mid-build (no Python cleanup runs) leaves only its temporary directory,
    which the next build of the same database removes."""
    script = textwrap.dedent(
        f"""
        import os, numpy as np
        from rissole_trt.retrieval import DatabaseWriter
        w = DatabaseWriter({str(tmp_path / 'db')!r}, count=10, codebook=np.ones((4, {C}), np.float32),
                           latent_shape=({C}, {H}, {W}), block_factor={BF}, fingerprint="f")
        w.add(np.zeros((3, {H}, {W}), np.int64))
        os._exit(9)  # like SIGKILL: no finalizers, no exception handlers
        """
    )
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ}, capture_output=True, text=True)
    assert result.returncode == 9, result.stderr
    left = siblings(tmp_path / "db")
    assert len(left) == 1 and left[0].startswith(".db.") and left[0].endswith(".tmp")
    with pytest.raises(DatabaseError):
        Database.open(tmp_path / left[0])  # the leftover is not a database: it has no manifest
    write_db(tmp_path / "db", n=12)
    assert siblings(tmp_path / "db") == ["db"]


def test_existing_database_is_kept_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "db"
    write_db(path, n=12, seed=1)
    with pytest.raises(FileExistsError, match="overwrite"):
        write_db(path, n=20)
    assert Database.open(path).count == 12
    write_db(path, n=20, seed=2, overwrite=True)
    assert Database.open(path, verify="full").count == 20
    assert siblings(path) == ["db"]


def test_bad_batches_are_rejected(tmp_path: Path) -> None:
    codebook, codes, labels = make_content(10)
    w = DatabaseWriter(tmp_path / "db", count=10, codebook=codebook, latent_shape=(C, H, W), block_factor=BF,
                       fingerprint=FP, with_labels=True)
    with pytest.raises(ValueError, match=r"\[B, 8, 8\]"):
        w.add(codes[:, :4], labels=labels)
    with pytest.raises(ValueError, match=r"in \[0, 50\)"):
        w.add(codes + K, labels=labels)
    with pytest.raises(ValueError, match="integer"):
        w.add(codes.astype(np.float32), labels=labels)
    with pytest.raises(ValueError, match=r"keys must have shape \[10, 64\]"):
        w.add(codes, keys=np.ones((10, 63)), labels=labels)
    with pytest.raises(ValueError, match="labels must be given"):
        w.add(codes)
    w.add(codes, labels=labels)
    with pytest.raises(ValueError, match="exceeds the declared count"):
        w.add(codes[:1], labels=labels[:1])
    w.close()
    with pytest.raises(ValueError, match="already closed"):
        w.add(codes[:1], labels=labels[:1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 0}, "count"),
        ({"fingerprint": ""}, "fingerprint"),
        ({"key_kind": "last-block"}, "unknown key kind"),
        ({"latent_shape": (C, 9, 9)}, "divisible"),
        ({"codebook": np.ones((K, C + 1), np.float32)}, r"\[K, C\]"),
        ({"codebook": np.ones((70_000, C), np.float32)}, "uint16"),
    ],
)
def test_bad_writer_arguments_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"count": 5, "codebook": np.ones((K, C), np.float32), "latent_shape": (C, H, W), "block_factor": BF,
            "fingerprint": FP, **kwargs}
    with pytest.raises(ValueError, match=message):
        DatabaseWriter(tmp_path / "db", **args)
    assert siblings(tmp_path / "db") == []


# --------------------------------------------------------------------------- opening bad databases


def edit_manifest(path: Path, **changes) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(changes)
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_fingerprint_mismatch(db_path: Path) -> None:
    with pytest.raises(FingerprintMismatchError, match="another autoencoder"):
        Database.open(db_path, expected_fingerprint="b" * 64)
    assert Database.open(db_path).fingerprint == FP  # without an expectation it opens


def test_unknown_format_version(db_path: Path) -> None:
    edit_manifest(db_path, format_version=2)
    with pytest.raises(DatabaseError, match="format version 2 is unknown.*newer"):
        Database.open(db_path)


def test_truncated_codes(db_path: Path) -> None:
    codes = db_path / "codes.npy"
    codes.write_bytes(codes.read_bytes()[:-100])
    with pytest.raises(DatabaseError, match="codes.npy is truncated"):
        Database.open(db_path)


def test_modified_content_needs_full_verification(db_path: Path) -> None:
    keys = db_path / "keys.npy"
    data = bytearray(keys.read_bytes())
    data[-4:] = np.float32(0.5).tobytes()
    keys.write_bytes(bytes(data))
    Database.open(db_path, verify="size")  # same size: only the checksum can tell
    with pytest.raises(DatabaseError, match="keys.npy is corrupt"):
        Database.open(db_path, verify="full")


def test_array_shape_disagreeing_with_manifest(db_path: Path) -> None:
    np.save(db_path / "keys.npy", np.ones((37, 32), np.float32))  # whole manifest stays; shape changes
    manifest = json.loads((db_path / "manifest.json").read_text())
    manifest["files"]["keys.npy"]["bytes"] = (db_path / "keys.npy").stat().st_size
    (db_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatabaseError, match=r"keys.npy is float32 \[37, 32\], the manifest implies float32 \[37, 64\]"):
        Database.open(db_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: (p / "manifest.json").write_text("{not json"), "manifest.json is corrupt"),
        (lambda p: (p / "manifest.json").write_text("[1, 2]"), "JSON object"),
        (lambda p: (p / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda p: edit_manifest(p, key_kind="middle"), "unknown key kind"),
        (lambda p: edit_manifest(p, count="37"), "'count' has an invalid value"),
        (lambda p: edit_manifest(p, block_factor=3), "divisible"),
        (lambda p: edit_manifest(p, files={}), "no valid size and checksum for codes.npy"),
        (lambda p: (p / "codebook.npy").unlink(), "codebook.npy is missing"),
    ],
)
def test_corrupt_manifest_or_missing_files(db_path: Path, mutate, message: str) -> None:
    mutate(db_path)
    with pytest.raises(DatabaseError, match=message):
        Database.open(db_path)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Database.open(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="verify"):
        Database.open(tmp_path, verify="sometimes")


def test_full_verification_catches_out_of_range_codes(tmp_path: Path) -> None:
    path = tmp_path / "db"
    write_db(path)
    codes = np.load(path / "codes.npy")
    codes[0, 0, 0, 0] = K + 3
    np.save(path / "codes.npy", codes)
    manifest = json.loads((path / "manifest.json").read_text())
    import hashlib

    manifest["files"]["codes.npy"]["sha256"] = hashlib.sha256((path / "codes.npy").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    Database.open(path, verify="size")
    with pytest.raises(DatabaseError, match="codes >= the codebook size"):
        Database.open(path, verify="full")


def test_entry_access_rejects_bad_ids(db_path: Path) -> None:
    db = Database.open(db_path)
    with pytest.raises(IndexError, match="outside the database"):
        db.entry_codes(np.array([37]))
    with pytest.raises(ValueError, match="1-D integer"):
        db.entry_latents(np.array([[1]]))


def test_array_header_claiming_more_data_than_the_file_holds(db_path: Path) -> None:
    keys = db_path / "keys.npy"
    keys.write_bytes(keys.read_bytes()[:-256])
    manifest = json.loads((db_path / "manifest.json").read_text())
    manifest["files"]["keys.npy"]["bytes"] = keys.stat().st_size  # a manifest that agrees with the damage
    (db_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DatabaseError, match="keys.npy is not a readable .npy array: the file is shorter"):
        Database.open(db_path)

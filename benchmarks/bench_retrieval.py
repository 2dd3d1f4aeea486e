"""Retrieval at scale: a synthetic 1,000,000-image database on disk, opened in a fresh process.

Measures, for the CelebA-64 geometry (latent 10 x 16 x 16, bf = 2: four 8 x 8 blocks, first-block keys
of dimension 10 * 8 * 8 = 640, codebook 1024):

- writing the database (DatabaseWriter, keys computed from the codes as the real builder does);
- in a fresh process: opening it and the memory it takes. RSS is split into private (anonymous)
  pages and file-backed pages of the memory maps (/proc/self/status); the peak is VmHWM (on Linux
  getrusage's ru_maxrss is inherited from the parent process across fork + exec, so it is not used).
  The database starts out of the page cache (the write phase evicts its own files). Codes and keys
  are memory-mapped: opening reads neither, and a gather reads only the pages of the requested
  entries. File-backed pages are page cache the kernel can drop, not private memory (and a recent
  kernel maps whole cached folios around each fault, so RssFile overstates what was touched);
- neighbour gather throughput (``Database.neighbour_blocks``: codes -> codebook vectors);
- exact search (FAISS, the default up to 1M entries) queries/s at several batch sizes, excluding self;
- HNSW (default parameters) build time, queries/s and recall@10 against exact search on
  ``--hnsw-count`` separate keys of the same dimension but low intrinsic dimension, like real latent
  keys: the database's own keys come from uniformly random codes and have no neighbourhood structure,
  on which no graph index is meaningful; and an HNSW build over 1M keys takes far longer than this
  benchmark's budget on 2 cores.

Usage: python benchmarks/bench_retrieval.py [--count 1000000] [--json results.json] [--dir /tmp]
Prints a table and writes the JSON; the database is deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LATENT = (10, 16, 16)
BLOCK_FACTOR = 2
CODEBOOK_SIZE = 1024
KEY_KIND = "first-block"


def proc_memory() -> dict[str, float]:
    """Current RSS, its anonymous and file-backed parts, and the peak RSS of this process (MiB)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024  # kB -> MiB
    except OSError:  # not Linux: only the peak, from getrusage (kB on Linux, bytes on macOS)
        scale = 1 << 20 if sys.platform == "darwin" else 1 << 10
        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    return out


def timed_median(fn, min_time: float = 2.0, min_reps: int = 3, max_reps: int = 50) -> float:
    """Median seconds per call of ``fn`` (one warm-up call first)."""
    from rissole_trt.timing import time_calls

    return statistics.median(time_calls(fn, min_time=min_time, min_reps=min_reps, max_reps=max_reps))


# --------------------------------------------------------------------------- phase 1: write


def write_database(path: Path, count: int, batch: int, seed: int) -> dict:
    from rissole_trt.retrieval import DatabaseWriter

    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal((CODEBOOK_SIZE, LATENT[0])).astype(np.float32)
    t0 = time.perf_counter()
    with DatabaseWriter(path, count=count, codebook=codebook, latent_shape=LATENT, block_factor=BLOCK_FACTOR,
                        key_kind=KEY_KIND, fingerprint="0" * 64, metadata={"synthetic": True}) as w:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            w.add(rng.integers(0, CODEBOOK_SIZE, size=(n, LATENT[1], LATENT[2]), dtype=np.int64))
        t_fill = time.perf_counter() - t0
    total = time.perf_counter() - t0
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    # Drop this database's pages from the page cache (synced by the writer, so clean), so that the
    # measuring process opens it cold, as a database that was built earlier would be.
    if hasattr(os, "posix_fadvise"):
        for p in path.iterdir():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return {"count": count, "fill_s": t_fill, "close_s": total - t_fill, "total_s": total,
            "entries_per_s": count / total, "file_bytes": sizes}


# --------------------------------------------------------------------------- phase 2: measure (fresh process)


def low_rank_keys(rng: np.random.Generator, n: int, d: int, rank: int = 16) -> np.ndarray:
    """Unit keys of low intrinsic dimension: a fixed random rank-16 map of Gaussian factors plus noise."""
    w = np.random.default_rng(1234).standard_normal((rank, d)).astype(np.float32)
    x = rng.standard_normal((n, rank)).astype(np.float32) @ w
    x += 1.2 * rng.standard_normal((n, d)).astype(np.float32) / np.sqrt(d)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def measure(path: Path, hnsw_count: int, seed: int) -> dict:
    res: dict = {"memory": {}}
    import torch  # imported before the baseline so its own footprint is not charged to the database

    from rissole_trt.retrieval import Database, FlatIPIndex, HNSWIndex

    torch.set_num_threads(os.cpu_count() or 1)
    res["memory"]["baseline"] = proc_memory()
    t = time.perf_counter()
    db = Database.open(path, verify="size")
    res["open_s"] = time.perf_counter() - t
    res["memory"]["after_open"] = proc_memory()
    res["codes_bytes"] = int(db.codes.nbytes)
    res["keys_bytes"] = int(db.keys.nbytes)
    rng = np.random.default_rng(seed + 1)
    n = db.count
    # One generation batch's conditioning (64 images, k = 10) from a fresh mapping.
    db.neighbour_blocks(torch.from_numpy(rng.integers(0, n, size=(64, 10))))
    res["memory"]["after_one_gather"] = proc_memory()

    # Neighbour gather with random ids over the whole database: first cold (each entry's blocks read
    # from disk), then warm (the codes file read once, so it sits in the page cache).
    gather = []
    for cache in ("cold", "warm"):
        if cache == "warm":
            with open(path / "codes.npy", "rb") as f:
                while f.read(64 << 20):
                    pass
        for b, k in [(16, 10), (64, 10), (256, 20)]:
            def run(b=b, k=k):
                return db.neighbour_blocks(torch.from_numpy(rng.integers(0, n, size=(b, k))))
            sec = timed_median(run, min_time=1.5)
            out_bytes = b * db.P * k * LATENT[0] * db.bs * db.bs * 4
            gather.append({"cache": cache, "batch": b, "k": k, "ms": sec * 1e3, "out_GBps": out_bytes / sec / 1e9,
                           "codes_read_MBps": b * k * db.P * db.bs * db.bs * 2 / sec / 1e6})
        if cache == "cold":
            res["memory"]["after_cold_gathers"] = proc_memory()
    res["gather"] = gather

    # Exact search.
    t = time.perf_counter()
    flat = db.index("flat")  # validates the keys (reads them once)
    res["flat_build_s"] = time.perf_counter() - t
    flat_rows = []
    for bsz in [1, 16, 256]:
        def run(bsz=bsz):
            ids = rng.integers(0, n, size=bsz)
            return flat.search(np.asarray(db.keys[np.sort(ids)]), 10, exclude=np.sort(ids))
        sec = timed_median(run, min_time=3.0, min_reps=2)
        flat_rows.append({"batch": bsz, "s_per_batch": sec, "qps": bsz / sec})
    res["flat"] = flat_rows
    res["memory"]["after_flat"] = proc_memory()

    # HNSW, default parameters, on structured keys of the same dimension (see the module docstring).
    sub = low_rank_keys(rng, hnsw_count, db.key_dim)
    t = time.perf_counter()
    hnsw = HNSWIndex(sub)
    res["hnsw_build"] = {"count": hnsw_count, "m": hnsw.m, "ef_construction": hnsw.ef_construction,
                         "build_s": time.perf_counter() - t}
    qids = np.sort(rng.choice(hnsw_count, size=200, replace=False))
    _, ref = FlatIPIndex(sub).search(sub[qids], 10, exclude=qids)
    hnsw_rows = []
    for ef in [64, HNSWIndex.DEFAULT_EF_SEARCH]:
        hnsw.ef_search = ef
        _, got = hnsw.search(sub[qids], 10, exclude=qids)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), ref.tolist())]))
        for bsz in [1, 64]:
            def run(bsz=bsz):
                ids = rng.integers(0, hnsw_count, size=bsz)
                return hnsw.search(sub[ids], 10, exclude=ids)
            sec = timed_median(run, min_time=2.0)
            hnsw_rows.append({"ef_search": ef, "batch": bsz, "qps": bsz / sec, "recall_at_10": recall})
    res["hnsw"] = hnsw_rows
    res["memory"]["after_hnsw"] = proc_memory()
    return res


# --------------------------------------------------------------------------- report


def print_table(r: dict) -> None:
    w, m = r["write"], r["measure"]
    mib = 1 << 20
    print(f"\nretrieval benchmark: {w['count']:,} entries, latent {LATENT}, bf {BLOCK_FACTOR}, "
          f"{KEY_KIND} keys (D = {r['key_dim']}); {r['machine']}; "
          "1-min load average at start/end: {:.1f}/{:.1f}".format(*r["load_average_start_end"]))
    files = w["file_bytes"]
    print(f"files: codes {files['codes.npy'] / mib:,.0f} MiB, keys {files['keys.npy'] / mib:,.0f} MiB")
    print(f"write: {w['total_s']:.1f} s ({w['entries_per_s']:,.0f} entries/s; of which checksums+sync+rename "
          f"{w['close_s']:.1f} s)")
    print(f"open (fresh process): {m['open_s'] * 1e3:.1f} ms")
    print("\nmemory (MiB)          RSS   anon   file   peak")
    for phase, v in m["memory"].items():
        print(f"  {phase:<18} {v.get('VmRSS', 0):6.0f} {v.get('RssAnon', 0):6.0f} {v.get('RssFile', 0):6.0f} "
              f"{v['VmHWM']:6.0f}")
    print("\nneighbour gather (random ids)  ms/call  output GB/s  codes read MB/s")
    for g in m["gather"]:
        print(f"  {g['cache']:<5} B={g['batch']:<4} k={g['k']:<3}    {g['ms']:8.2f}  {g['out_GBps']:11.2f}  "
              f"{g['codes_read_MBps']:15.1f}")
    print(f"\nexact search (flat; key validation {m['flat_build_s']:.1f} s), k = 10, exclude self")
    for f in m["flat"]:
        print(f"  batch {f['batch']:<4} {f['qps']:9.1f} queries/s  ({f['s_per_batch'] * 1e3:.0f} ms/batch)")
    h = m["hnsw_build"]
    print(f"\nHNSW on {h['count']:,} low-intrinsic-dimension {r['key_dim']}-d keys (defaults: M = {h['m']}, "
          f"efConstruction = {h['ef_construction']}): build {h['build_s']:.1f} s")
    for row in m["hnsw"]:
        print(f"  efSearch {row['ef_search']:<4} batch {row['batch']:<3} {row['qps']:9.1f} queries/s  "
              f"recall@10 {row['recall_at_10']:.3f}")


def run_phase(phase: str, path: Path, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--path", str(path), "--count", str(args.count),
           "--batch", str(args.batch), "--hnsw-count", str(args.hnsw_count), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {phase} phase failed with exit code {proc.returncode}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=20_000, help="entries per DatabaseWriter.add call")
    ap.add_argument("--hnsw-count", type=int, default=50_000)
    ap.add_argument("--dir", default=None, help="where to put the temporary database (default: system temp)")
    ap.add_argument("--json", default="bench_retrieval.json")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the database")
    # internal: each phase runs in its own child process, so neither inherits the other's memory
    ap.add_argument("--phase", choices=["write", "measure"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.phase == "write":
        print("RESULT " + json.dumps(write_database(Path(args.path), args.count, args.batch, args.seed)))
        return
    if args.phase == "measure":
        print("RESULT " + json.dumps(measure(Path(args.path), args.hnsw_count, args.seed)))
        return

    from rissole_trt.retrieval import key_dim

    args.hnsw_count = min(args.hnsw_count, args.count)
    work = Path(tempfile.mkdtemp(prefix="rissole-bench-", dir=args.dir))
    path = work / "db"
    load_start = os.getloadavg()[0]
    try:
        write = run_phase("write", path, args)
        measured = run_phase("measure", path, args)
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            # other work on the machine skews timings: record how busy it was
            "load_average_start_end": [load_start, os.getloadavg()[0]],
            "key_dim": key_dim(LATENT, BLOCK_FACTOR, KEY_KIND),
            "write": write,
            "measure": measured,
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_table(result)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}" + ("" if not args.keep else f"; database kept at {path}"))


if __name__ == "__main__":
    main()

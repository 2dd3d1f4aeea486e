"""Dataset-scale generation on Ray: ``generate_dataset`` and ``rissole-trt generate-dataset``.

Ray Data runs the work: a dataset of *shard ids* goes through ``map_batches`` into a pool of
actors (``compute=ActorPoolStrategy(size=workers)``, ``num_gpus=gpus_per_worker``), each holding one :class:`Engine`
(model, database, built engine) loaded once. An actor generates a shard with
:meth:`Engine.generate_batch` and writes it itself; the driver only records finished shards.

What guarantees what:

* **Same images whatever the scheduling.** Every image's query and noise follow from
  (seed, image id) (:class:`GenerationPlan`), and shards are whole multiples of the plan's batch
  size, so a shard runs exactly the batches a single-process ``Engine.generate(n, seed=...,
  batch_size=...)`` runs: the output does not depend on the number of workers or on which worker
  ran what (tested bitwise against a single process on the same CPU and thread count).
* **No partial or doubled shard.** A shard's output has a name derived from its id and is written to
  a temporary name and renamed into place (:mod:`rissole_trt.atomic`); a duplicate attempt (Ray
  retries a failed task or restarts a dead actor: at-least-once execution) writes the same bytes
  and replaces the first atomically.
* **Resume.** ``manifest.json`` lists a shard only after its output is complete (with the sha256 of
  what was written); it is rewritten atomically after each shard. A rerun of the same command
  skips the recorded shards whose output is still there with the recorded sha256 and redoes the
  rest (a missing, truncated or altered shard); a rerun with nothing to do writes nothing. A rerun
  whose settings or inputs differ (the model's, the database's or the engine's fingerprint, sampler,
  steps, overlap, seed, shard or batch size, format) is refused, naming what changed, before Ray
  starts. A full disk stops the run at a shard boundary (:mod:`rissole_trt.disk`); the same
  command resumes it.
* **Resources are checked before Ray starts** (a local cluster: this machine's CPUs, GPUs and memory
  per worker, :mod:`rissole_trt.memory`) and again from ``ray.cluster_resources()``: a worker
  asking for a GPU the cluster lacks would otherwise wait forever. Our manifest is the mechanism: Ray Data's own checkpointing is not used
  (it is not in every Ray release the extra allows), so resuming does not depend on Ray's version.
* **The database reaches workers without a copy per task**: every actor memory-maps the same
  on-disk database (the page cache is shared by all actors of a node; on several nodes the folder
  must be on shared storage), instead of a copy in the object store per actor.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import memory
from .atomic import atomic_directory, atomic_file
from .disk import check_free_space, translate_disk_full
from .errors import BackendUnavailableError, InvalidArgumentError, OutputExistsError
from .formats import Manifest, file_sha256
from .outputs import DATASET_RUN, check_output
from .windows import rows_per_image

__all__ = ["FORMATS", "DatasetRun", "DatasetShards", "generate_dataset", "shard_ranges"]

FORMATS = ("png", "npz", "webdataset")
RUN_FILE = "run.json"
MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: the database's and the engine's fingerprints are part of the run
_UNREADABLE = "{where} cannot be read ({error}); remove the folder or choose another"


@dataclass(frozen=True, kw_only=True)
class DatasetRun(Manifest):
    """``run.json``: the settings and inputs of a run, written when it starts. A run resumes only with
    all of them equal: a run of an older version is not migrated (its inputs' fingerprints are
    unknown) but refused as another run (:meth:`changed`)."""

    KIND: ClassVar[str] = DATASET_RUN
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    ERROR: ClassVar[type[Exception]] = InvalidArgumentError
    UNREADABLE: ClassVar[str] = _UNREADABLE

    format_version: int = FORMAT_VERSION
    n: int
    shard_size: int
    batch_size: int
    seed: int
    sampler: str
    steps: int | None
    overlap: str
    format: str
    model_fingerprint: str
    database_fingerprint: str | None = None
    engine_fingerprint: str | None = None

    def changed(self, previous: dict) -> list[str] | None:
        """None when ``previous`` (a ``run.json`` as read, of any version) is this run; else the
        settings that differ."""
        mine = self.to_dict()
        return None if previous == mine else sorted(k for k in mine if previous.get(k) != mine[k])


def _no_version(doc: dict) -> dict:
    """Version 1 is the manifest written before it recorded its version."""
    return dict(doc, format_version=1)


@dataclass(frozen=True, kw_only=True)
class DatasetShards(Manifest):
    """``manifest.json``: the shards finished whole (first id, count, sha256, seconds), rewritten
    after each one, and what the last run did."""

    KIND: ClassVar[str] = DATASET_RUN
    FORMAT_VERSION: ClassVar[int] = 1
    ERROR: ClassVar[type[Exception]] = InvalidArgumentError
    UNREADABLE: ClassVar[str] = _UNREADABLE
    MIGRATIONS: ClassVar[dict] = {None: _no_version}

    kind: str = DATASET_RUN
    format_version: int = 1
    shards: dict = field(default_factory=dict)  # str(shard) -> {"first", "count", "sha256", "seconds"}
    updated: str | None = None
    last_run: dict | None = None


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as error:
        raise BackendUnavailableError(f"generate-dataset runs on Ray, which is not installed ({error}); "
                           "pip install 'rissole-trt[distributed]'") from error
    return ray


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    """``(first image id, count)`` of every shard."""
    return [(first, min(shard_size, n - first)) for first in range(0, n, shard_size)]


def shard_name(shard: int, fmt: str) -> str:
    return {"png": f"shard-{shard:06d}", "npz": f"shard-{shard:06d}.npz", "webdataset": f"shard-{shard:06d}.tar"}[fmt]


def _write_shard(out_dir: Path, shard: int, first: int, images: np.ndarray, fmt: str) -> str:
    """Write one shard atomically; returns the sha256 of what was written (PNG bytes in id order)."""
    from PIL import Image

    digest = hashlib.sha256()
    target = out_dir / shard_name(shard, fmt)
    if fmt == "npz":
        with atomic_file(target) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, images=images, ids=np.arange(first, first + len(images), dtype=np.int64))
            digest.update(tmp.read_bytes())
        return digest.hexdigest()
    encoded = []
    for offset, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append((f"{first + offset:09d}", buffer.getvalue()))
        digest.update(buffer.getvalue())
    if fmt == "png":
        with atomic_directory(target, replace=True) as tmp:
            for key, data in encoded:
                (tmp / f"{key}.png").write_bytes(data)
    else:  # webdataset: a tar of <key>.png members, the format webdataset's readers take
        with atomic_file(target) as tmp:
            with tarfile.open(tmp, "w") as tar:
                for key, data in encoded:
                    info = tarfile.TarInfo(f"{key}.png")
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
    return digest.hexdigest()


class _ShardWorker:
    """A Ray Data actor: one Engine, loaded once; ``__call__`` generates and writes shards."""

    def __init__(self, settings: dict[str, Any]) -> None:
        import torch

        from .engine import Engine

        if settings["threads"]:
            torch.set_num_threads(settings["threads"])
        self.settings = settings
        self.engine = Engine(settings["model"], settings["database"], engine=settings["engine"],
                             device=settings["device"])
        self.plan = self.engine.plan(settings["n"], seed=settings["seed"], sampler=settings["sampler"],
                                     steps=settings["steps"], batch_size=settings["batch_size"],
                                     overlap=settings["overlap"])
        self.out_dir = Path(settings["out_dir"])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.settings
        shards, counts, digests, seconds = [], [], [], []
        for shard in batch["shard"].tolist():
            started = time.perf_counter()
            first = shard * s["shard_size"]
            count = min(s["shard_size"], s["n"] - first)
            images = self.engine.generate_batch(self.plan, first, count)
            with translate_disk_full(self.out_dir / shard_name(shard, s["format"]), images.nbytes):
                digests.append(_write_shard(self.out_dir, shard, first, images, s["format"]))
            shards.append(shard)
            counts.append(count)
            seconds.append(time.perf_counter() - started)
        return {"shard": np.array(shards), "count": np.array(counts), "sha256": np.array(digests),
                "seconds": np.array(seconds)}


def _quiet(ray) -> None:
    """Our progress bar only: Ray Data's own bars and execution logs would interleave with it."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _fingerprints(probe, engine) -> dict:
    """What, besides the settings, shapes a run's images: the model, the database, the built engine."""
    from .builder import model_fingerprint
    from .runtime.engine_build import MANIFEST as ENGINE_MANIFEST

    files = None if probe.database is None else probe.database.on_disk.files  # each file's sha256
    return {"model_fingerprint": model_fingerprint(probe.model),
            "database_fingerprint": None if files is None else
            hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest(),
            "engine_fingerprint": None if engine is None else file_sha256(Path(engine) / ENGINE_MANIFEST)}


def _shard_digest(path: Path, fmt: str) -> str | None:
    """The sha256 :func:`_write_shard` recorded, recomputed from what is on disk (None: unreadable)."""
    digest = hashlib.sha256()
    try:
        if fmt == "npz":
            digest.update(path.read_bytes())
        elif fmt == "png":
            for image in sorted(path.glob("*.png")):
                digest.update(image.read_bytes())
        else:
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    digest.update(tar.extractfile(member).read())
    except (OSError, tarfile.TarError, AttributeError):
        return None
    return digest.hexdigest()


def _kept_shards(out_dir: Path, manifest: DatasetShards, shards: list, fmt: str) -> set[int]:
    """The recorded shards whose output is still there, whole and unchanged (sha256); the rest are redone."""
    return {int(s) for s, record in manifest.shards.items()
            if record["count"] == shards[int(s)][1]
            and _shard_digest(out_dir / shard_name(int(s), fmt), fmt) == record["sha256"]}


def _check_resources(resources: dict, where: str, workers: int | None, threads: int, gpus: float,
                     pending: int) -> int:
    """The number of workers, after refusing what ``resources`` (Ray's names: CPU, GPU) cannot give:
    Ray would otherwise wait forever for an actor it cannot place."""
    cpus, have_gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    if gpus and have_gpus < gpus:
        raise BackendUnavailableError(f"gpus_per_worker={gpus:g} and {where} has {have_gpus:g} GPU(s); "
                                      "use gpus_per_worker=0 (CPU workers) or a cluster with GPUs")
    if threads > cpus:
        raise InvalidArgumentError(f"threads_per_worker={threads} and {where} has {cpus:g} CPU(s)")
    if workers is None:
        by_gpu = int(have_gpus // gpus) if gpus else pending
        return max(1, min(int(cpus // threads), by_gpu, pending))
    if workers * threads > cpus or (gpus and workers * gpus > have_gpus):
        fits = min(int(cpus // threads), int(have_gpus // gpus) if gpus else workers)
        raise InvalidArgumentError(f"{workers} workers need {workers * threads} CPU(s)"
                                   + (f" and {workers * gpus:g} GPU(s)" if gpus else "")
                                   + f"; {where} has {cpus:g} CPU(s), {have_gpus:g} GPU(s): use at most {fits} workers")
    return workers


def _local_resources() -> dict:
    import torch

    return {"CPU": len(os.sched_getaffinity(0)), "GPU": torch.cuda.device_count()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise InvalidArgumentError(_UNREADABLE.format(where=path, error=error)) from error


def generate_dataset(n: int, out_dir: str | os.PathLike, *, model: str | os.PathLike | None = None,
                     database: str | os.PathLike | None = None, engine: str | os.PathLike | None = None,
                     shard_size: int = 1024, batch_size: int = 16, seed: int = 0, sampler: str | None = None,
                     steps: int | None = None, overlap: str | None = None, format: str = "png", ray_address: str | None = None,
                     workers: int | None = None, gpus_per_worker: float = 0, threads_per_worker: int = 1,
                     device: str = "auto", progress: bool = True) -> dict:
    """Generate images ``0 .. n-1`` of one plan into shards under ``out_dir`` on Ray (see the module
    docstring for the guarantees); returns the manifest.

    Args:
        model, database, engine: as for :class:`rissole_trt.Engine`, as paths every worker can read
            (None: the built-in model and database).
        shard_size: images per shard (a multiple of ``batch_size``).
        ray_address: None starts a local Ray cluster; ``"auto"`` or ``"ray://host:10001"`` joins one.
        workers: actors (default: the cluster's CPUs / ``threads_per_worker``, or its GPUs /
            ``gpus_per_worker``).
        format: ``png`` (a folder of PNGs per shard), ``npz`` (images + ids) or ``webdataset`` (tar).
        overlap: as for :meth:`Engine.plan` (None: the model's default, recorded resolved in the run).
    """
    from .engine import DEFAULT_SAMPLER, Engine
    from .platform import resolve_device

    n, shard_size, batch_size, threads_per_worker, workers = _check_sizes(
        n, shard_size, batch_size, threads_per_worker, workers, format, gpus_per_worker)
    sampler = sampler or DEFAULT_SAMPLER
    out_dir = Path(out_dir)
    # A run is resumed, never replaced: no flag; another kind of output, a file or a link is refused.
    check_output(out_dir, kind=DATASET_RUN, overwrite=True, inputs=(model, database, engine), flag=None)
    ray = _ray()

    # Check every setting and every input here, before Ray starts (the plan validates sampler, steps, k).
    here = resolve_device(device, auto="cpu")  # "auto" runs on CPUs unless GPUs per worker are asked for
    probe = Engine(model, database, engine=engine, device=here)
    plan = probe.plan(n, seed=seed, sampler=sampler, steps=steps, batch_size=batch_size, overlap=overlap)
    settings = DatasetRun(n=n, shard_size=shard_size, batch_size=batch_size, seed=seed, sampler=sampler,
                          steps=steps, overlap=plan.overlap, format=format, **_fingerprints(probe, engine))
    config = probe.model.config
    rows = rows_per_image(config.unet.block_factor, config.block_size, plan.overlap)
    del probe
    _open_run(out_dir, settings)
    shards = shard_ranges(n, shard_size)
    manifest, done = _done_shards(out_dir, shards, format)
    pending = [s for s in range(len(shards)) if s not in done]
    if not pending:
        if progress:
            print(f"{out_dir}: all {len(shards)} shards ({n} images) are done; nothing to do")
        return manifest.to_dict()
    check_free_space(out_dir, shards[pending[0]][1] * memory.image_bytes(config), "the next shard")
    worker_memory = memory.worker_bytes(config, batch_size, shard_size, rows)
    if ray_address is None and not ray.is_initialized():  # a local cluster: this machine's CPUs, GPUs, memory
        local = _check_resources(_local_resources(), "this machine", workers, threads_per_worker, gpus_per_worker,
                                 len(pending))
        memory.check_workers(config, local, batch_size, shard_size, rows)
        worker_memory = None  # checked against this machine's memory, which Ray's own figure understates
    worker_settings = dict(settings.to_dict(), model=None if model is None else str(Path(model).resolve()),
                           database=None if database is None else str(Path(database).resolve()),
                           engine=None if engine is None else str(Path(engine).resolve()),
                           out_dir=str(out_dir.resolve()), threads=threads_per_worker,
                           device="cuda" if gpus_per_worker else str(here))
    manifest, workers, elapsed = _run_on_ray(ray, ray_address, worker_settings, manifest, shards, pending, workers,
                                             gpus_per_worker, worker_memory, progress)
    new_images = sum(shards[s][1] for s in pending)
    manifest = manifest.replace(last_run={"workers": workers, "shards": len(pending), "images": new_images,
                                          "seconds": elapsed, "images_per_s": new_images / elapsed if elapsed else None})
    manifest.write(out_dir / MANIFEST)
    return manifest.to_dict()


def _check_sizes(n, shard_size, batch_size, threads_per_worker, workers, fmt, gpus_per_worker) -> tuple:
    """:func:`generate_dataset`'s counts as ints, every argument checked before Ray starts."""
    from .engine.plan import positive_int

    n, shard_size = positive_int(n, "n"), positive_int(shard_size, "shard_size")
    batch_size = positive_int(batch_size, "batch_size")
    threads_per_worker = positive_int(threads_per_worker, "threads_per_worker")
    workers = None if workers is None else positive_int(workers, "workers")
    if shard_size % batch_size:
        raise InvalidArgumentError(f"shard_size ({shard_size}) must be a multiple of batch_size ({batch_size}): "
                                   "a shard then runs whole batches, the same ones as a single process")
    if fmt not in FORMATS:
        raise InvalidArgumentError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not (isinstance(gpus_per_worker, (int, float)) and gpus_per_worker >= 0):
        raise InvalidArgumentError(f"gpus_per_worker must be >= 0, got {gpus_per_worker!r}")
    return n, shard_size, batch_size, threads_per_worker, workers


def _open_run(out_dir: Path, settings: DatasetRun) -> None:
    """Start the run in ``out_dir``, or resume the one there when its settings are these."""
    run_file = out_dir / RUN_FILE
    if run_file.is_file():
        changed = settings.changed(_read_json(run_file))
        if changed is not None:
            raise OutputExistsError(f"{out_dir} holds another run (its {', '.join(changed)} differ); "
                                    "choose another folder or rerun with that run's settings and inputs to resume it")
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise OutputExistsError(f"{out_dir} is not empty and holds no generate-dataset run; choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not run_file.is_file():
        settings.write(run_file)


def _done_shards(out_dir: Path, shards: list[tuple[int, int]], fmt: str) -> tuple[DatasetShards, set[int]]:
    """The manifest of the shards already written whole and unchanged (sha256), and their numbers."""
    manifest_file = out_dir / MANIFEST
    manifest = DatasetShards.read(manifest_file) if manifest_file.is_file() else DatasetShards()
    done = _kept_shards(out_dir, manifest, shards, fmt)
    return manifest.replace(shards={str(s): manifest.shards[str(s)] for s in sorted(done)}), done


def _run_on_ray(ray, ray_address, settings: dict, manifest: DatasetShards, shards, pending: list[int],
                workers: int | None, gpus_per_worker: float, worker_memory: int | None,
                progress: bool) -> tuple[DatasetShards, int, float]:
    """Generate the ``pending`` shards on Ray's workers, recording each in the manifest as it lands;
    returns the manifest, the number of workers and the seconds it took. ``worker_memory``: a
    worker's bytes, checked against the nodes of a cluster the run joined (None: checked already)."""
    _quiet(ray)
    started_ray = False
    if not ray.is_initialized():
        init = {"address": ray_address} if ray_address else {}
        ray.init(**init, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started_ray = True
    try:
        threads = settings["threads"]
        asked = workers is not None
        workers = _check_resources(ray.cluster_resources(), "the Ray cluster", workers, threads, gpus_per_worker,
                                   len(pending))
        if worker_memory is not None:
            nodes = [node["Resources"].get("memory", 0) for node in ray.nodes() if node.get("Alive")]
            workers = memory.cluster_workers(nodes, workers, worker_memory, asked=asked)
        dataset = ray.data.from_items([{"shard": s} for s in pending], override_num_blocks=len(pending))
        results = dataset.map_batches(
            _ShardWorker, fn_constructor_kwargs={"settings": settings}, batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads, num_gpus=gpus_per_worker or None,
            batch_format="numpy")
        from tqdm.auto import tqdm

        manifest_file = Path(settings["out_dir"]) / MANIFEST
        done = sum(r["count"] for r in manifest.shards.values())
        bar = tqdm(total=settings["n"], initial=done, unit="img", disable=not progress,
                   desc=f"{len(pending)} shards on {workers} worker(s)")
        t0 = time.perf_counter()
        with translate_disk_full(manifest_file.parent):  # a worker's full disk arrives wrapped in Ray's task error
            for row in results.iter_rows():
                shard = int(row["shard"])
                record = {"first": shards[shard][0], "count": int(row["count"]), "sha256": str(row["sha256"]),
                          "seconds": float(row["seconds"])}
                manifest = manifest.replace(shards={**manifest.shards, str(shard): record},
                                            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                manifest.write(manifest_file)
                bar.update(int(row["count"]))
                bar.set_postfix(shards=f"{len(manifest.shards)}/{len(shards)}")
        bar.close()
        return manifest, workers, time.perf_counter() - t0
    finally:
        if started_ray:
            ray.shutdown()

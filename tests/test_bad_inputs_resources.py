"""Nothing lost, round two: a full disk, too little memory, a changed resume, resources Ray cannot give.

Each row of :data:`CLI_CASES` is (case, command, fault, the one-line error, what must survive): the
fault is a library writer raising what it raises on a full disk (the messages below are the ones
each raised on a real 1 MiB tmpfs) or a machine with little memory left; the command runs in-process
through the CLI and must fail with exit code 2 and one line. The Ray rows reuse the fixtures of
tests/test_distributed.py and check the refusals before Ray runs anything.
"""
from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole_trt import cli, disk, memory
from rissole_trt.builder import build_database
from rissole_trt.distributed import MANIFEST, generate_dataset, shard_name
from rissole_trt.engine import Engine
from rissole_trt.errors import (
    BackendUnavailableError,
    InvalidArgumentError,
    OutOfMemoryError,
    OutOfSpaceError,
    OutputExistsError,
)
from rissole_trt.models import RissoleModel
from test_distributed import PLAN, _read, _single_process, assets, cluster  # noqa: F401 - pytest fixtures

from reference_fixtures import paths
from synthetic import smooth_images

ray = pytest.importorskip("ray")

ENOSPC = OSError(errno.ENOSPC, "No space left on device")
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
TORCH_ZIP_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
NUMPY_SHORT_WRITE = "10240 requested and 5088 written"  # numpy's full disk: no errno
CPU_ALLOCATOR = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456789 bytes"


def _raise(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def _cli(argv, capsys) -> str:
    """Run the CLI in-process; returns its one-line error (exit code 2; warnings may come before it)."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert [line for line in err.splitlines() if line.startswith("rissole-trt: error:")] == [err.splitlines()[-1]], err
    return err.splitlines()[-1]


@pytest.fixture(scope="module")
def earlier(assets, tmp_path_factory):
    """Earlier good outputs, next to which every failing command writes: they must stay intact."""
    root = tmp_path_factory.mktemp("earlier")
    model = RissoleModel.load(assets[0])
    model.save(root / "model")
    build_database(model, smooth_images(12), root / "db", progress=False)
    np.savez(root / "images.npz", images=smooth_images(12))
    return root, {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _unchanged(root: Path, files: dict) -> None:
    now = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert now == files, "an earlier output changed, or something half-written was left beside it"


def _patch_safetensors(monkeypatch):
    from safetensors import SafetensorError

    monkeypatch.setattr("safetensors.torch.save_file", _raise(SafetensorError(SAFETENSORS_FULL)))


def _little_memory(monkeypatch, mib: int = 64):
    monkeypatch.setattr(memory, "available", lambda device="cpu": mib * 2**20)


def _full_disk(monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30 - 4096, 4096))


# (case, argv with {root} and {assets}, fault, expected error, output that must not exist afterwards)
REF = paths("ref_addpos_")
CLI_CASES = [
    ("convert: safetensors full", ["convert", "--checkpoint", REF["checkpoint"], "--unet-config", REF["unet_config"],
                                   "--vqgan-config", REF["vqgan_config"], "--ddpm-config", REF["ddpm_config"], "-o",
                                   "{root}/model", "--overwrite"], "safetensors",
     r"model: no space left on device \(ENOSPC\) while writing; it needs .* bytes", None),
    ("build-db: numpy's short write", ["build-db", "--model", "{model}", "--images", "{root}/images.npz", "-o", "{root}/db",
                                   "--overwrite"], "numpy", r"\[Errno 28\] .*/db: no space left on device \(ENOSPC\).*"
                                                            r"needs .*bytes", None),
    ("build-db: free space checked first", ["build-db", "--model", "{model}", "--images", "{root}/images.npz", "-o",
                                            "{tmp}/db"], "disk", r"the database needs about .* free", "{tmp}/db"),
    ("generate: free space checked first", ["generate", "-n", "64", "-o", "{tmp}/grid.png", "--model", "{model}",
                                            "--db", "{root}/db"], "disk", r"a grid of 64 images needs about", "{tmp}/grid.png"),
    ("generate: too little memory", ["generate", "-n", "2048", "--batch-size", "1024", "-o", "{tmp}/grid.png", "--model",
                                     "{model}", "--db", "{root}/db"], "memory",
     r"a batch of 1024 images needs about .* GiB .*; the largest batch size that fits is \d+", "{tmp}/grid.png"),
    ("eval: too little memory", ["eval", "--n", "512", "--batch-size", "512", "--real", "{root}/images.npz", "-o",
                                 "{tmp}/report.json", "--model", "{model}", "--db", "{root}/db"], "memory",
     r"a batch of 512 images needs about .*the largest batch size that fits is \d+", "{tmp}/report.json"),
    ("build-engine: buckets beyond memory", ["build-engine", "--model", "{model}", "--batch-sizes", "100000",
                                             "-o", "{tmp}/engine"], None,
     r"building buckets 100000 .* needs about .* GiB .*the largest bucket \(alone\) that fits is \d+", "{tmp}/engine"),
    ("build-engine: an allocation fails", ["build-engine", "--model", "{model}", "--batch-sizes", "1", "-o",
                                           "{tmp}/engine"], "alloc",
     r"the build ran out of memory \(DefaultCPUAllocator.*\); the largest bucket that fits now is \d+", "{tmp}/engine"),
    ("build-engine: disk full", ["build-engine", "--model", "{model}", "--batch-sizes", "1", "--candidates", "eager",
                                 "--budget", "0.2", "-o", "{tmp}/engine"], "engine",
     r"engine: no space left on device \(ENOSPC\)", "{tmp}/engine"),
]


@pytest.mark.parametrize("case,argv,fault,expected,absent", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_a_fault_is_one_line_and_nothing_is_lost(case, argv, fault, expected, absent, earlier, assets, tmp_path,
                                                 monkeypatch, capsys):
    root, files = earlier
    fill = dict(root=root, model=root / "model", tmp=tmp_path)
    faults = {"numpy": lambda: monkeypatch.setattr(np, "save", _raise(OSError(NUMPY_SHORT_WRITE))),
              "disk": lambda: _full_disk(monkeypatch), "memory": lambda: _little_memory(monkeypatch),
              "engine": lambda: monkeypatch.setattr("rissole_trt.formats.write_text", _raise(ENOSPC)),
              "safetensors": lambda: _patch_safetensors(monkeypatch),
              "alloc": lambda: monkeypatch.setattr("rissole_trt.runtime.engine_build.candidates.bucket_inputs",
                                                   _raise(RuntimeError(CPU_ALLOCATOR))),
              None: lambda: None}
    faults[fault]()
    if fault in ("disk", "memory"):  # refused before any work
        monkeypatch.setattr(Engine, "_run_batch", _raise(AssertionError("generation started")))
    assert re.search(expected, _cli([str(a).format(**fill) for a in argv], capsys))
    _unchanged(root, files)
    if absent:
        assert not Path(absent.format(**fill)).exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary was left"


def test_a_saved_model_on_a_full_disk_leaves_the_earlier_one(earlier, monkeypatch):
    """RissoleModel.save: the writer of convert and of train's OUT/model."""
    root, files = earlier
    _patch_safetensors(monkeypatch)
    with pytest.raises(OutOfSpaceError, match=r"model: no space left .* needs .*bytes") as caught:
        RissoleModel.load(root / "model").save(root / "model", overwrite=True)
    assert caught.value.errno == errno.ENOSPC
    _unchanged(root, files)


def test_a_training_checkpoint_on_a_full_disk_keeps_the_last_good_one(tmp_path, monkeypatch):
    from rissole_trt.train.loop import CHECKPOINT_NAME, TrainState, save_checkpoint

    net = torch.nn.Linear(2, 2)
    state = TrainState({"net": net}, {"net": torch.optim.SGD(net.parameters(), lr=0.1)}, torch.Generator())
    good = save_checkpoint(state, tmp_path).read_bytes()
    monkeypatch.setattr(torch, "save", _raise(RuntimeError(TORCH_ZIP_FULL)))
    with pytest.raises(OutOfSpaceError, match=f"{CHECKPOINT_NAME}: no space left on device"):
        save_checkpoint(state, tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_a_full_disk_at_generates_last_write_keeps_the_images(earlier, tmp_path, monkeypatch, capsys):
    from PIL import Image

    root, _ = earlier
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "rescue"))
    (tmp_path / "rescue").mkdir()
    monkeypatch.setattr(Image.Image, "save", _raise(ENOSPC))
    err = _cli(["generate", "-n", "3", "--steps", "2", "--sampler", "ddim", "-o", tmp_path / "grid.png", "--model",
                root / "model", "--db", root / "db", "--no-progress"], capsys)
    assert "grid.png: no space left on device (ENOSPC)" in err and "the 3 images were kept in" in err
    kept = next((tmp_path / "rescue").glob("rissole-generate-*.npz"))
    assert np.load(kept)["images"].shape == (3, 64, 64, 3)
    assert not (tmp_path / "grid.png").exists()


@pytest.mark.parametrize("error", [RuntimeError(CPU_ALLOCATOR), torch.cuda.OutOfMemoryError("CUDA out of memory")])
def test_an_allocation_that_still_fails_names_the_batch_that_fits(assets, monkeypatch, error):
    engine = Engine(*assets, device="cpu")
    monkeypatch.setattr(engine, "_run_batch", _raise(error))
    with pytest.raises(OutOfMemoryError, match=r"a batch of 4 images ran out of memory .*largest batch size that "
                                               r"fits now is \d+"):
        engine.generate(4, batch_size=4, progress=False)


def test_the_memory_estimate_is_the_measured_one():
    """The constants of rissole_trt.memory against a fresh measurement (peak RSS at two sizes)."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "measure_step_memory.py"
    out = subprocess.run([sys.executable, str(script), "8", "40"], capture_output=True, text=True, check=True,
                         env={"OMP_NUM_THREADS": "1", "PATH": ""}).stdout
    generate, step = (float(line.split("peak ")[2].split(" B")[0]) for line in out.splitlines())
    # Peaks at small sizes are noisy (allocator arenas): the constants must be within a factor of two.
    assert 0.5 < generate / memory.GENERATE_PEAK_PER_IMAGE < 2, out
    assert 0.5 < step / memory.STEP_PEAK_PER_ROW < 2, out


def test_a_workers_full_disk_keeps_its_line_through_rays_task_error():
    """Ray Data raises a UserCodeException from a RayTaskError that carries the worker's traceback as text."""
    import traceback

    line = "/out/shard-000001: no space left on device (ENOSPC) while writing"
    try:
        raise OutOfSpaceError(errno.ENOSPC, line)
    except OutOfSpaceError as error:
        task_error = ray.exceptions.RayTaskError("submit", traceback.format_exc(), error)
    with pytest.raises(OutOfSpaceError) as caught:
        with disk.translate_disk_full("/out"):
            try:
                raise task_error
            except ray.exceptions.RayTaskError as cause:
                raise ray.exceptions.UserCodeException("UDF failed to process a data block.") from cause
    assert str(caught.value) == f"[Errno 28] {line}"


def test_disk_full_is_recognised_through_every_wrapper():
    from safetensors import SafetensorError

    try:
        try:
            raise ENOSPC
        except OSError as cause:
            raise RuntimeError("task failed") from cause  # as Ray's task error chains the worker's
    except RuntimeError as wrapped:
        chained = wrapped
    for error in (ENOSPC, OSError(NUMPY_SHORT_WRITE), SafetensorError(SAFETENSORS_FULL), RuntimeError(TORCH_ZIP_FULL),
                  chained):
        assert disk.is_disk_full(error), error
    assert not disk.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    with pytest.raises(PermissionError):  # any other error passes unchanged
        with disk.translate_disk_full("x"):
            raise PermissionError(errno.EACCES, "Permission denied")


# --------------------------------------------------------------------------- generate-dataset
RUN = dict(n=8, shard_size=2, format="npz", progress=False, **PLAN)


def _no_ray(monkeypatch):
    """Fail the test if the run gets as far as Ray."""
    monkeypatch.setattr(ray, "init", _raise(AssertionError("ray.init was called")))
    monkeypatch.setattr("rissole_trt.distributed._run_on_ray", _raise(AssertionError("shards were run")))


@pytest.mark.parametrize("ask,expected,error", [
    (dict(gpus_per_worker=1), r"gpus_per_worker=1 and .* has 0 GPU", BackendUnavailableError),
    (dict(threads_per_worker=512), r"threads_per_worker=512 and .* has \d+ CPU", InvalidArgumentError),
    (dict(workers=512), r"512 workers need 512 CPU.*use at most \d+ workers", InvalidArgumentError),
])
def test_resources_ray_cannot_give_are_refused_first(assets, tmp_path, monkeypatch, ask, expected, error):
    if not ray.is_initialized():  # a cluster the run would start: refused before it starts
        _no_ray(monkeypatch)
    with pytest.raises(error, match=expected):
        generate_dataset(out_dir=tmp_path / "out", model=assets[0], database=assets[1], **dict(RUN, n=4), **ask)


def test_workers_beyond_memory_are_refused_before_ray(assets, tmp_path, monkeypatch):
    if ray.is_initialized():
        pytest.skip("a Ray cluster of this session is up: the local check is for a cluster the run starts")
    _no_ray(monkeypatch)
    _little_memory(monkeypatch, 5)  # one worker's batch of 2 and shard of 2 fit, two workers' do not
    with pytest.raises(OutOfMemoryError, match=r"2 workers .* the largest number of workers that fits is 1"):
        generate_dataset(out_dir=tmp_path / "out", model=assets[0], database=assets[1], workers=2, **dict(RUN, n=4))


@pytest.mark.parametrize("nodes,workers,asked,expected", [
    ([4e9, 2e9], 3, True, 3),   # 2 + 1 workers of 1 GB fit
    ([4e9, 2e9], 8, False, 6),  # a default number is lowered to what fits
    ([4e9, 2e9], 8, True, r"8 workers need about .* hold at most 6 workers of .*: use workers=6 or fewer"),
    ([5e8, 9e8], 1, False, r"a worker needs about .* the largest node of the Ray cluster offers .*lower batch_size"),
])
def test_workers_beyond_a_joined_clusters_memory_are_refused(nodes, workers, asked, expected):
    if isinstance(expected, int):
        assert memory.cluster_workers(nodes, workers, 10**9, asked=asked) == expected
    else:
        with pytest.raises(OutOfMemoryError, match=expected):
            memory.cluster_workers(nodes, workers, 10**9, asked=asked)


@pytest.mark.slow
def test_a_joined_cluster_too_small_for_one_worker_is_refused_before_any_shard(cluster, assets, tmp_path, monkeypatch):
    """A cluster already up (joined, not started by the run): its nodes' memory is what is checked."""
    monkeypatch.setattr(memory, "worker_bytes", lambda *args: 2**50)
    with pytest.raises(OutOfMemoryError, match=r"the largest node of the Ray cluster offers"):
        generate_dataset(out_dir=tmp_path / "out", model=assets[0], database=assets[1], **dict(RUN, n=4))
    assert not list((tmp_path / "out").glob("shard-*"))


@pytest.fixture(scope="module")
def others(assets, tmp_path_factory):
    """Inputs a resume could be given instead: another database, another model (the same autoencoder,
    so that the database fits it), an engine."""
    from rissole_trt.runtime.engine_build import build_engine

    root = tmp_path_factory.mktemp("others")
    model = RissoleModel.load(assets[0])
    build_engine(model, root / "engine", batch_sizes=[2], candidates=("eager",), budget_s=0.2, log=lambda line: None)
    other_db = build_database(model, smooth_images(12)[::-1].copy(), root / "db_b", progress=False).path
    with torch.no_grad():
        next(model.unet.parameters()).add_(1e-3)
    return {"database": other_db, "model": model.save(root / "model_b"), "engine": root / "engine"}


@pytest.fixture(scope="module")
def started(assets, tmp_path_factory):
    """A run interrupted (Ctrl-C) as Ray was starting: what it recorded is what a resume is checked against."""
    out = tmp_path_factory.mktemp("started") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("rissole_trt.distributed._run_on_ray", _raise(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            generate_dataset(out_dir=out, model=assets[0], database=assets[1], **RUN)
    return out


@pytest.fixture(scope="module")
def interrupted(cluster, assets, tmp_path_factory):
    """A run on Ray whose last two shards never finished."""
    out = tmp_path_factory.mktemp("interrupted") / "run"
    generate_dataset(out_dir=out, model=assets[0], database=assets[1], **RUN)
    manifest = json.loads((out / MANIFEST).read_text())
    for shard in (2, 3):  # what a kill leaves: the shard's output never renamed in, no record
        (out / shard_name(shard, "npz")).unlink()
        del manifest["shards"][str(shard)]
    (out / MANIFEST).write_text(json.dumps(manifest))
    return out


@pytest.mark.parametrize("change,named", [
    ("database", "database_fingerprint"), ("model", "model_fingerprint"), ("engine", "engine_fingerprint"),
    (dict(sampler="ddpm", steps=None), "sampler"), (dict(steps=4), "steps"), (dict(overlap="half"), "overlap"),
    (dict(seed=4), "seed"), (dict(shard_size=4), "shard_size"), (dict(batch_size=1), "batch_size"),
    (dict(format="png"), "format"),
])
def test_a_resume_with_anything_changed_is_refused_naming_it(started, others, assets, monkeypatch, change, named):
    run = dict(RUN, model=assets[0], database=assets[1])
    run.update(change if isinstance(change, dict) else {change: others[change]})
    before = {p.name: p.read_bytes() for p in started.iterdir()}
    _no_ray(monkeypatch)
    with pytest.raises(OutputExistsError, match=rf"holds another run \(its .*{named}.* differ"):
        generate_dataset(out_dir=started, **run)
    assert {p.name: p.read_bytes() for p in started.iterdir()} == before


@pytest.mark.slow
def test_an_unchanged_resume_redoes_a_flipped_shard_and_equals_an_uninterrupted_run(interrupted, assets, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(interrupted, out)
    flipped = out / shard_name(1, "npz")
    data = bytearray(flipped.read_bytes())
    data[-100] ^= 1  # one byte of the recorded shard
    flipped.write_bytes(bytes(data))
    manifest = generate_dataset(out_dir=out, model=assets[0], database=assets[1], **RUN)
    assert manifest["last_run"]["shards"] == 3  # the two never finished and the flipped one
    images, ids = _read(out, 8, 2, "npz")
    assert ids == list(range(8))
    np.testing.assert_array_equal(images, _single_process(assets, 8, **PLAN))


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_stops_at_a_shard_and_the_same_command_resumes(cluster, assets, tmp_path):
    """A real full disk: a tmpfs with room for about two of four shards (12 KiB each, 16 KiB in pages),
    then enlarged (root only). The worker writing a shard or the driver writing the manifest meets it."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=56k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    try:
        run = dict(RUN, n=8, format="png", model=assets[0], database=assets[1], workers=1)
        with pytest.raises(OutOfSpaceError, match=r"(shard-\d{6}|run): no space left on device \(ENOSPC\)") as caught:
            generate_dataset(out_dir=mount / "run", **run)
        assert "\n" not in str(caught.value)  # the worker's line, not Ray's traceback
        # Which shard meets the full disk depends on the PNGs' sizes: the first one (no manifest yet) or a later one.
        manifest_file = mount / "run" / MANIFEST
        recorded = json.loads(manifest_file.read_text())["shards"] if manifest_file.exists() else {}
        assert len(recorded) < 4
        assert not [p for p in (mount / "run").iterdir() if p.name.startswith(".")], "a half-written shard was left"
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        manifest = generate_dataset(out_dir=mount / "run", **run)
        assert manifest["last_run"]["shards"] == 4 - len(recorded)
        images, ids = _read(mount / "run", 8, 2, "png")
        assert ids == list(range(8))
        np.testing.assert_array_equal(images, _single_process(assets, 8, **PLAN))
    finally:
        subprocess.run(["umount", str(mount)], check=False)

"""Dataset-scale generation on a local Ray cluster the tests start (2 CPUs): the same images as one
process, a killed run resumed with every image exactly once, nothing written when nothing is left,
bad arguments refused before any work."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
import torch

from rissole_trt.builder import build_database
from rissole_trt.distributed import generate_dataset, shard_name
from rissole_trt.engine import Engine
from rissole_trt.errors import InvalidArgumentError, OutputExistsError, RissoleError
from rissole_trt.models import RissoleModel

from reference_fixtures import paths
from synthetic import smooth_images

ray = pytest.importorskip("ray")

PLAN = dict(seed=3, sampler="ddim", steps=3, batch_size=2)
# The kill tests wait for the first DDPM-1000 shard before killing: about a minute on an idle 2-core
# machine, several on a loaded one (the loop ends as soon as it is there, so a long limit costs nothing).
FIRST_SHARD_DEADLINE_S = 900


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    model = RissoleModel.from_reference(**paths("ref_addpos_"))
    model_dir = model.save(root / "model")
    db = build_database(model, smooth_images(12), root / "db", progress=False)
    return model_dir, db.path


def _single_process(assets, n, **plan):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: same shapes, same kernels, same bits
    try:
        return Engine(assets[0], assets[1], device="cpu").generate(n, progress=False, **plan)
    finally:
        torch.set_num_threads(threads)


def _read(out_dir, n, shard_size, fmt) -> tuple[np.ndarray, list[int]]:
    """Every image of the run in id order, and the ids as written (to count duplicates)."""
    from PIL import Image

    ids, images = [], []
    for shard in range(-(-n // shard_size)):
        target = out_dir / shard_name(shard, fmt)
        if fmt == "npz":
            with np.load(target) as data:
                ids += data["ids"].tolist()
                images += list(data["images"])
        elif fmt == "png":
            for file in sorted(target.iterdir()):
                ids.append(int(file.stem))
                images.append(np.asarray(Image.open(file)))
        else:
            with tarfile.open(target) as tar:
                for member in tar.getmembers():
                    ids.append(int(member.name.split(".")[0]))
                    images.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
    return np.stack(images), ids


@pytest.mark.slow
@pytest.mark.parametrize("fmt,workers", [("npz", 2), ("png", 1), ("webdataset", 2)])
def test_the_same_images_as_one_process_whatever_the_workers(cluster, assets, tmp_path, fmt, workers):
    n, shard = 7, 2  # the last shard is short
    manifest = generate_dataset(n, tmp_path / "out", model=assets[0], database=assets[1], shard_size=shard,
                                format=fmt, workers=workers, progress=False, **PLAN)
    images, ids = _read(tmp_path / "out", n, shard, fmt)
    assert ids == list(range(n))
    np.testing.assert_array_equal(images, _single_process(assets, n, **PLAN))
    assert sorted(int(s) for s in manifest["shards"]) == [0, 1, 2, 3]
    assert manifest["last_run"]["workers"] == workers and manifest["last_run"]["images"] == n


@pytest.mark.slow
def test_a_killed_run_resumes_with_every_image_exactly_once(cluster, assets, tmp_path):
    n, shard, out = 12, 2, tmp_path / "out"
    slow = dict(PLAN, sampler="ddpm", steps=None)  # all 1000 steps: a shard takes long enough to kill between
    command = [sys.executable, "-m", "rissole_trt.cli", "generate-dataset", "-n", str(n), "-o", str(out),
               "--model", str(assets[0]), "--db", str(assets[1]), "--shard-size", str(shard), "--batch-size", "2",
               "--seed", "3", "--sampler", "ddpm", "--format", "npz", "--workers", "1", "--ray-address", cluster,
               "--no-progress"]
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + FIRST_SHARD_DEADLINE_S
    manifest = out / "manifest.json"
    while time.monotonic() < deadline and driver.poll() is None:
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 1:
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert manifest.is_file(), f"no shard finished within {FIRST_SHARD_DEADLINE_S} s (a very busy machine?)"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = len(json.loads(manifest.read_text())["shards"])
    assert 0 < finished < n // shard  # killed mid-run

    resumed = generate_dataset(n, out, model=assets[0], database=assets[1], shard_size=shard, format="npz",
                               workers=2, progress=False, **slow)
    assert resumed["last_run"]["shards"] <= n // shard - finished + 1  # at most the shard in flight is redone
    images, ids = _read(out, n, shard, "npz")
    assert ids == list(range(n))  # every image exactly once
    np.testing.assert_array_equal(images, _single_process(assets, n, **slow))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


@pytest.mark.slow
def test_a_rerun_with_nothing_to_do_writes_nothing(cluster, assets, tmp_path, capsys):
    out = tmp_path / "out"
    kwargs = dict(model=assets[0], database=assets[1], shard_size=2, format="png", progress=True, **PLAN)
    generate_dataset(4, out, **kwargs)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate_dataset(4, out, **kwargs)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.slow
def test_the_overlap_is_part_of_the_run(cluster, assets, tmp_path):
    out = tmp_path / "out"
    kwargs = dict(model=assets[0], database=assets[1], shard_size=2, format="npz", progress=False, **PLAN)
    generate_dataset(2, out, overlap="half", **kwargs)
    assert json.loads((out / "run.json").read_text())["overlap"] == "half"
    images, _ = _read(out, 2, 2, "npz")
    np.testing.assert_array_equal(images, _single_process(assets, 2, overlap="half", **PLAN))
    with pytest.raises(OutputExistsError, match="overlap"):  # other images: not a resume of this run
        generate_dataset(2, out, **kwargs)  # the model's default: none


def test_bad_arguments_are_refused_before_any_work(assets, tmp_path):
    common = dict(model=assets[0], database=assets[1], progress=False)
    for n, extra in ((0, {}), (-3, {}), (4, {"shard_size": 0}), (4, {"shard_size": 3, "batch_size": 2}),
                     (4, {"format": "jpeg"}), (4, {"workers": 0}), (4, {"gpus_per_worker": -1})):
        with pytest.raises(InvalidArgumentError):
            generate_dataset(n, tmp_path / "new", **common, **extra)
    assert not (tmp_path / "new").exists()
    with pytest.raises(InvalidArgumentError, match="steps"):
        generate_dataset(4, tmp_path / "new", sampler="ddim", steps=0, **common)
    assert not (tmp_path / "new").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"format_version": 1, "n": 4, "seed": 99}))
    with pytest.raises(OutputExistsError, match="holds another run"):
        generate_dataset(4, other, shard_size=2, **common, **PLAN)
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="a folder of other files, not a generate-dataset run"):
        generate_dataset(4, tmp_path / "unrelated", shard_size=2, **common, **PLAN)
    assert sorted(p.name for p in other.iterdir()) == ["run.json"]


def test_without_ray_the_command_says_how_to_get_it(assets, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RissoleError, match=r"pip install 'rissole-trt\[distributed\]'"):
        generate_dataset(2, tmp_path / "out", model=assets[0], database=assets[1], shard_size=2, **PLAN)


def _worker_pids() -> list[int]:
    """The processes of our Ray Data actors (Ray names an actor's process after its class)."""
    found = subprocess.run(["pgrep", "-f", "MapBatches\\(_ShardWorker\\)"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.slow
def test_a_killed_worker_is_replaced_by_ray_and_every_image_is_written_once(cluster, assets, tmp_path):
    """SIGKILL the actor mid-shard: Ray Data restarts it and retries its shard (at-least-once), the
    atomic shard writes make the retry harmless, and the run finishes by itself; a rerun then has
    nothing to do."""
    n, shard, out = 12, 2, tmp_path / "out"
    slow = dict(PLAN, sampler="ddpm", steps=None)
    command = [sys.executable, "-m", "rissole_trt.cli", "generate-dataset", "-n", str(n), "-o", str(out),
               "--model", str(assets[0]), "--db", str(assets[1]), "--shard-size", str(shard), "--batch-size", "2",
               "--seed", "3", "--sampler", "ddpm", "--format", "npz", "--workers", "1", "--ray-address", cluster,
               "--no-progress"]
    driver = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.json"
    deadline = time.monotonic() + FIRST_SHARD_DEADLINE_S
    while time.monotonic() < deadline and driver.poll() is None:
        if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 1 and _worker_pids():
            break
        time.sleep(0.05)
    assert driver.poll() is None, driver.stderr.read().decode()[-2000:]
    assert manifest.is_file(), f"no shard finished within {FIRST_SHARD_DEADLINE_S} s (a very busy machine?)"
    killed = _worker_pids()
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    finished_at_kill = len(json.loads(manifest.read_text())["shards"])
    assert killed and finished_at_kill < n // shard  # killed mid-run
    try:
        driver.wait(timeout=3 * FIRST_SHARD_DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    assert driver.returncode == 0, driver.stderr.read().decode()[-2000:]
    assert not set(killed) & set(_worker_pids())  # the killed process is gone; a new actor did the rest
    images, ids = _read(out, n, shard, "npz")
    assert ids == list(range(n))  # every image exactly once
    np.testing.assert_array_equal(images, _single_process(assets, n, **slow))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    generate_dataset(n, out, model=assets[0], database=assets[1], shard_size=shard, format="npz",
                     workers=1, progress=False, **slow)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before

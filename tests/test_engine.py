"""Engine end to end on the reference fixture model and a small database built on the fly."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from rissole_trt import cli
from rissole_trt.builder import build_database
from rissole_trt.engine import Engine
from rissole_trt.errors import RissoleError
from rissole_trt.models import RissoleModel
from rissole_trt.retrieval.database import FingerprintMismatchError

from reference_fixtures import paths
from synthetic import smooth_images
from tolerances import assert_close


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    p = paths("ref_addpos_")  # k = 3, position embedding on
    return RissoleModel.from_reference(p["checkpoint"], p["unet_config"], p["vqgan_config"], p["ddpm_config"])


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return smooth_images(24)


@pytest.fixture(scope="module")
def db_path(model, images, tmp_path_factory):
    path = tmp_path_factory.mktemp("db") / "db"
    labels = np.arange(len(images)) % 3
    build_database(model, images, path, labels=labels, label_names=["a", "b", "c"], progress=False)
    return path


@pytest.fixture(scope="module")
def engine(model, db_path) -> Engine:
    return Engine(model, db_path, device="cpu")


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 10), ("dpmpp_2m", 10)])
def test_every_sampler_gives_images(engine, sampler, steps):
    # DDPM runs all 1000 steps: one batch of two images keeps it to 1000 denoiser calls.
    out = engine.generate(2, seed=1, sampler=sampler, steps=steps, batch_size=2, progress=False)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    assert out.std() > 0  # not a constant picture
    if sampler != "ddpm":  # determinism of the stochastic path is tested below, at a tenth of the cost
        again = engine.generate(2, seed=1, sampler=sampler, steps=steps, batch_size=2, progress=False)
        assert_close(out, again, "bitwise")  # the same plan


def test_same_seed_same_images_whatever_the_batch_size(engine):
    # DDIM with eta = 1 draws fresh noise at every step, like DDPM, at a tenth of the cost.
    a = engine.generate(5, seed=3, sampler="ddim", steps=8, eta=1.0, batch_size=2, progress=False)
    b = engine.generate(5, seed=3, sampler="ddim", steps=8, eta=1.0, batch_size=5, progress=False)
    assert_close(a, b, "images_uint8")  # other batch shapes: other GEMM shapes
    c = engine.generate(5, seed=4, sampler="ddim", steps=8, eta=1.0, batch_size=5, progress=False)
    assert not np.array_equal(a, c)


def test_plan_is_small_and_any_split_of_it_is_bitwise_the_full_run(engine):
    plan = engine.plan(7, seed=11, sampler="ddim", steps=4, eta=1.0, batch_size=3)
    full = np.concatenate([images for _, images in engine.generate_iter(plan)])
    assert_close(full, engine.generate(7, seed=11, sampler="ddim", steps=4, eta=1.0, batch_size=3, progress=False),
                 "bitwise")
    for splits in ([0, 7], [0, 1, 7], [0, 2, 3, 5, 7], [0, 4, 6, 7], list(range(8))):
        parts = [engine.generate_batch(pickle.loads(pickle.dumps(plan)), a, b - a) for a, b in zip(splits, splits[1:])]
        assert_close(np.concatenate(parts), full, "bitwise", msg=f"split {splits}")
    huge = engine.plan(10**12, seed=1)
    assert len(pickle.dumps(huge)) < 600  # O(1) in n: queries and noise follow from (seed, i)
    assert huge.batches(10**12 - 20, 5) == [(10**12 - 32, 16), (10**12 - 16, 16)]
    with pytest.raises(IndexError, match="outside the plan"):
        engine.generate_batch(plan, 5, 3)


def test_progress_bar_counts_whole_images(engine, monkeypatch):
    import io

    from tqdm.auto import tqdm

    import rissole_trt.engine.pipeline as engine_module

    shown = []

    class RecordingBar(tqdm):  # the real bar, drawn into a buffer, remembering every count it shows
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "file": io.StringIO(), "disable": False, "mininterval": 0})

        def refresh(self, *args, **kwargs):
            shown.append(self.n)
            return super().refresh(*args, **kwargs)

    monkeypatch.setattr(engine_module, "tqdm", RecordingBar)
    # 3 steps per batch of 2: a fractional bar would show 0.667, 1.333, ...
    engine.generate(5, seed=0, sampler="ddim", steps=3, batch_size=2, progress=True)
    assert shown and all(isinstance(n, int) for n in shown), shown
    assert shown == sorted(shown) and shown[-1] == 5 and len(set(shown)) > 3  # moves within batches too


def test_generate_refuses_an_output_larger_than_memory_before_any_work(engine, monkeypatch):
    monkeypatch.setattr(engine, "_denoiser", lambda *a: pytest.fail("work started"))
    with pytest.raises(MemoryError, match="GiB"):
        engine.generate(10**9, progress=False)
    calls = []
    plan = engine.plan(3, sampler="ddim", steps=2, batch_size=2)
    monkeypatch.undo()
    for _ in engine.generate_iter(plan, callback=lambda done, total: calls.append((done, total))):
        pass
    assert calls == [(2, 3), (3, 3)]


def test_exclude_self_keeps_the_query_out_of_its_neighbours(engine):
    r = engine.retrieve(engine.plan(200, seed=0, exclude_self=True))
    assert r.neighbour_ids.shape == (200, 3)
    assert not (r.neighbour_ids == r.query_ids[:, None]).any()
    ref = engine.retrieve(engine.plan(200, seed=0, exclude_self=False))
    np.testing.assert_array_equal(ref.query_ids, r.query_ids)
    # The reference behaviour: the query is its own nearest neighbour (score 1).
    np.testing.assert_array_equal(ref.neighbour_ids[:, 0], ref.query_ids)
    np.testing.assert_allclose(ref.scores[:, 0], 1.0, atol=1e-5)


def test_query_ids_and_query_images(engine, images):
    subset = np.array([2, 5, 8])
    r = engine.retrieve(engine.plan(20, seed=0, query_ids=subset))
    assert set(r.query_ids.tolist()) <= set(subset.tolist())
    # A user image equal to database entry 7 retrieves entry 7 first.
    r = engine.retrieve(engine.plan(2, query=images[7]))
    assert (r.query_ids == -1).all() and (r.neighbour_ids[:, 0] == 7).all()
    out = engine.generate(2, query=images[[7, 9]], sampler="ddim", steps=4, progress=False)
    assert out.shape == (2, 64, 64, 3)


def test_conditioning_runs_once_per_batch(engine, monkeypatch):
    calls = []
    handle = engine.model.unet.cond_conv.register_forward_hook(lambda *a: calls.append(1))
    try:
        engine.generate(4, seed=0, sampler="ddim", steps=6, batch_size=2, progress=False)
    finally:
        handle.remove()
    assert len(calls) == 2  # two batches, six steps each


@pytest.mark.parametrize("kwargs,error,match", [
    ({"n": 0}, ValueError, "n must be a positive integer"),
    ({"n": 2, "sampler": "euler"}, ValueError, "unknown sampler"),
    ({"n": 2, "k": 24}, ValueError, "larger than the database"),
    ({"n": 2, "k": 2}, ValueError, "trained with k = 3"),
    ({"n": 2, "batch_size": 0}, ValueError, "batch_size"),
    ({"n": 2, "sampler": "ddim", "steps": 5000}, ValueError, "steps"),
    ({"n": 2, "query": np.zeros((32, 32, 3), np.uint8)}, ValueError, "query images must be"),
    ({"n": 2, "query_ids": [0, 99]}, IndexError, "query id 99"),
    ({"n": 2, "query": np.zeros((0, 64, 64, 3), np.uint8)}, ValueError, "m >= 1"),
    ({"n": 2, "seed": -1}, ValueError, "seed"),
])
def test_bad_arguments_fail_before_any_work(engine, monkeypatch, kwargs, error, match):
    def no_work(*args, **kw):
        raise AssertionError("work started before the arguments were checked")

    monkeypatch.setattr(engine, "_denoiser", no_work)
    with pytest.raises(error, match=match):
        engine.generate(progress=False, **kwargs)


def test_database_of_another_autoencoder_is_refused(model, db_path):
    other = RissoleModel(model.config)
    with pytest.raises(FingerprintMismatchError):
        Engine(other, db_path, device="cpu")


def test_unknown_backend_is_refused(model, db_path):
    with pytest.raises(RissoleError, match="unknown backend 'tensorrt-llm'"):
        Engine(model, db_path, device="cpu", backend="tensorrt-llm")
    with pytest.raises(RissoleError, match="backend 'tensorrt' cannot run fp32 on cpu: runs on cuda"):
        Engine(model, db_path, device="cpu", backend="tensorrt")
    with pytest.raises(RissoleError, match="backend 'onnxruntime' cannot run bf16"):
        Engine(model, db_path, device="cpu", backend="onnxruntime", precision="bf16")


def test_cli_build_db_and_generate(model, images, tmp_path):
    model_dir = model.save(tmp_path / "model")
    npz = tmp_path / "images.npz"
    np.savez(npz, images=images, categories=np.array(["x", "y"] * 12), train_idx=np.arange(20))
    db = tmp_path / "db"
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "--split", "train_idx",
                     "--labels", "categories", "-o", str(db)]) == 0
    grid = tmp_path / "grid.png"
    assert cli.main(["generate", "-n", "3", "-o", str(grid), "--model", str(model_dir), "--db", str(db),
                     "--sampler", "ddim", "--steps", "3", "--save-dir", str(tmp_path / "single"),
                     "--category", "y", "--no-progress"]) == 0
    from PIL import Image

    assert Image.open(grid).size == (2 + 2 * 66, 2 + 2 * 66)
    assert sorted(p.name for p in (tmp_path / "single").iterdir()) == ["0000.png", "0001.png", "0002.png"]
    # An existing database is not overwritten without --overwrite.
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "-o", str(db)]) == 2


def test_prepacked_torch_backend_gives_the_eager_images(engine, model, db_path):
    assert engine.backend == "torch"  # the default
    eager = Engine(model, db_path, device="cpu", backend="eager")
    kwargs = dict(n=3, seed=5, sampler="ddim", steps=6, batch_size=2, progress=False)
    assert_close(engine.generate(**kwargs), eager.generate(**kwargs), "images_uint8")


@pytest.mark.parametrize("kwargs,match", [
    ({"precision": "fp8"}, "unknown precision"),
    ({"backend": "eager", "precision": "bf16"}, "backend 'eager' cannot run bf16 on cpu: serves fp32"),
])
def test_bad_precision_is_refused(model, db_path, kwargs, match):
    with pytest.raises(RissoleError, match=match):
        Engine(model, db_path, device="cpu", **kwargs)


def test_codebook_clip_keeps_samples_on_the_codebook_range(engine):
    plan = engine.plan(2, seed=0, sampler="ddim", steps=4, clip="codebook")
    clipped = engine.generate_batch(plan, 0, 2)
    assert clipped.shape == (2, 64, 64, 3)
    with pytest.raises(ValueError, match="unknown clip"):
        engine.plan(2, clip="tanh")


@pytest.mark.gpu
def test_on_a_gpu_the_engine_retrieves_with_cuvs_and_gives_the_cpu_images(db_path, engine):
    from rissole_trt.retrieval.index import _cuvs_modules

    try:
        _cuvs_modules()
    except RissoleError as e:
        pytest.skip(str(e))
    p = paths("ref_addpos_")
    gpu_model = RissoleModel.from_reference(p["checkpoint"], p["unet_config"], p["vqgan_config"], p["ddpm_config"])
    gpu = Engine(gpu_model, db_path, device="cuda", backend="eager")
    assert gpu.index.kind == "cuvs"
    kwargs = dict(n=3, seed=2, sampler="ddim", steps=4, batch_size=3, progress=False)
    assert_close(gpu.generate(**kwargs), engine.generate(**kwargs), "images_uint8")

"""The whole sampling loop captured once and replayed (runtime/loop_graph.py).

On the CPU the capture is :func:`eager_capture`, the twin of the CUDA graph: a replay reruns the
same loop over the same static buffers, so what these tests check (the static buffers refreshed
per batch, the noise staged per image in the eager loop's order, the clip, the Engine's wiring) is
what a CUDA replay runs. The CUDA recording itself is tested by the `gpu` tests at the end."""
from __future__ import annotations

import gc
import json
import weakref

import numpy as np
import pytest
import torch

from rissole_trt.builder import build_database
from rissole_trt.diffusion import clip_x0, make_sampler, sample
from rissole_trt.engine import Engine
from rissole_trt.errors import InvalidArgumentError, NonFiniteError
from rissole_trt.models import RissoleModel
from rissole_trt.runtime.cuda_graph_backend import StepGraphs
from rissole_trt.runtime.engine_build.candidates import bucket_inputs
from rissole_trt.runtime.loop_graph import LoopGraphs, eager_capture
from rissole_trt.windows import ShiftedWindows, WindowedDenoiser

from reference_fixtures import paths
from synthetic import smooth_images
from tolerances import assert_close


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    return RissoleModel.from_reference(**paths("ref_addpos_")).eval()  # k = 3, position embedding


@pytest.fixture(scope="module")
def db(model, tmp_path_factory):
    return build_database(model, smooth_images(12), tmp_path_factory.mktemp("db") / "db", progress=False)


def _cond(model, batch, seed):
    c = model.config
    shape = (batch, c.n_blocks, c.unet.k * c.autoencoder.latent_dim, c.block_size, c.block_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _generators(first, count):
    return Engine.image_generators(7, first, count, torch.device("cpu"))


def _clip(model):
    codebook = model.autoencoder.codebook.detach()
    return codebook.min(0).values.view(1, 1, -1, 1, 1), codebook.max(0).values.view(1, 1, -1, 1, 1)


@pytest.mark.parametrize("name,steps,eta,clipped", [("ddim", 5, 0.0, False), ("ddim", 5, 0.7, False),
                                                    ("dpmpp_2m", 5, None, False), ("dpmpp_2m", 4, None, True)])
def test_a_replayed_loop_equals_the_eager_loop_for_every_batch(model, name, steps, eta, clipped):
    c = model.config
    shape = (2, c.n_blocks, c.autoencoder.latent_dim, c.block_size, c.block_size)
    sampler = make_sampler(name, model.schedule, steps, eta=eta)
    clip = _clip(model) if clipped else None
    loops = LoopGraphs(eager_capture)
    with torch.no_grad():
        for batch, first in enumerate((0, 2, 4)):  # the first call captures, the others replay
            denoiser = model.denoiser(_cond(model, 2, seed=batch))
            got = loops.sample(denoiser, sampler, shape, _generators(first, 2), clip=clip)
            eps_fn = denoiser if clip is None else clip_x0(denoiser, model.schedule, *clip)
            want = sample(eps_fn, shape, model.schedule, sampler, generator=_generators(first, 2))
            assert_close(got, want, "bitwise")  # the same computation on the same shapes
    assert len(loops) == 1


@pytest.mark.parametrize("name,steps,eta,clipped", [("ddim", 4, 0.7, False), ("dpmpp_2m", 4, None, True)])
def test_a_replayed_loop_with_shifted_windows_equals_the_eager_windowed_loop(model, name, steps, eta, clipped):
    """overlap="half": the window crop and blend are inside each captured step; only the windows' row
    denoiser's tensors are refreshed per batch."""
    c = model.config
    shape = (2, c.n_blocks, c.autoencoder.latent_dim, c.block_size, c.block_size)
    sampler = make_sampler(name, model.schedule, steps, eta=eta)
    clip = _clip(model) if clipped else None
    windows = ShiftedWindows(c.unet.block_factor, c.block_size)
    loops = LoopGraphs(eager_capture)
    with torch.no_grad():
        for batch, first in enumerate((0, 2)):  # the first call captures, the second replays
            denoiser = windows.denoiser(model.denoiser, _cond(model, 2, seed=batch))
            got = loops.sample(denoiser, sampler, shape, _generators(first, 2), clip=clip)
            eps_fn = denoiser if clip is None else clip_x0(denoiser, model.schedule, *clip)
            want = sample(eps_fn, shape, model.schedule, sampler, generator=_generators(first, 2))
            assert_close(got, want, "bitwise")  # the same computation on the same shapes
        assert len(loops) == 1
        # The aligned blocks of the same shape are another loop, not a replay of the windowed one.
        loops.sample(model.denoiser(_cond(model, 2, seed=0)), sampler, shape, _generators(0, 2), clip=clip)
        assert len(loops) == 2
        windowed = next(iter(loops._loops.values()))
        with pytest.raises(InvalidArgumentError, match="captured for another overlap"):
            windowed(model.denoiser(_cond(model, 2, seed=0)), _generators(0, 2))


def test_loops_are_keyed_by_shape_and_sampler_and_refuse_what_they_do_not_capture(model):
    c = model.config
    loops = LoopGraphs(eager_capture)
    with torch.no_grad():
        for batch, steps in ((1, 3), (2, 3), (1, 4), (1, 3)):
            shape = (batch, c.n_blocks, c.autoencoder.latent_dim, c.block_size, c.block_size)
            loops.sample(model.denoiser(_cond(model, batch, 0)), make_sampler("ddim", model.schedule, steps),
                         shape, _generators(0, batch))
        assert len(loops) == 3
        shape = (1, c.n_blocks, c.autoencoder.latent_dim, c.block_size, c.block_size)
        with pytest.raises(InvalidArgumentError, match="ddpm loop is not captured whole"):
            loops.sample(model.denoiser(_cond(model, 1, 0)), make_sampler("ddpm", model.schedule), shape,
                         _generators(0, 1))
        loop = next(iter(loops._loops.values()))
        with pytest.raises(InvalidArgumentError, match="captured for 4 rows, got 8"):
            loop(model.denoiser(_cond(model, 2, 0)), _generators(0, 2))


def test_a_clipped_loop_holds_the_bounds_its_replays_read(model):
    """A CUDA graph keeps only addresses: the loop must own every tensor it reads (issue #27)."""
    c = model.config
    shape = (1, c.n_blocks, c.autoencoder.latent_dim, c.block_size, c.block_size)
    sampler = make_sampler("dpmpp_2m", model.schedule, 4)
    loops = LoopGraphs(eager_capture)
    low, high = _clip(model)
    with torch.no_grad():
        loops.sample(model.denoiser(_cond(model, 1, 0)), sampler, shape, _generators(0, 1), clip=(low, high))
        callers = weakref.ref(low), weakref.ref(high)
        del low, high
        gc.collect()
        assert callers[0]() is None and callers[1]() is None  # the capture kept no reference to them
        loop = next(iter(loops._loops.values()))
        narrow = tuple(0.5 * bound for bound in _clip(model))  # other bounds, copied into the held ones
        denoiser = model.denoiser(_cond(model, 1, 1))
        got = loops.sample(denoiser, sampler, shape, _generators(0, 1), clip=narrow)
        assert all(torch.equal(held, bound) for held, bound in zip(loop.clip, narrow))
        want = sample(clip_x0(denoiser, model.schedule, *narrow), shape, model.schedule, sampler,
                      generator=_generators(0, 1))
        assert_close(got, want, "bitwise")  # the replay read the held bounds
        with pytest.raises(InvalidArgumentError, match="captured with a clip"):
            loop(denoiser, _generators(0, 1))


def test_the_per_step_graph_is_captured_once_per_shape_whatever_the_arity():
    """``forward_hoisted(x, c, t)`` and ``(x, c, t, None)`` are one call: one graph, not two."""
    plain = RissoleModel.from_reference(**paths("ref_add_")).eval()  # no position embedding
    assert plain.unet.pos_embed is None
    graphs = StepGraphs(plain.unet.forward_hoisted, eager_capture)
    with torch.no_grad():
        for seed, extra in ((0, ()), (1, (None,)), (2, ())):
            inputs = bucket_inputs(plain, 4, seed=seed)
            assert len(inputs) == 3
            got = graphs(*inputs, *extra)
            assert_close(got, plain.unet.forward_hoisted(*inputs), "bitwise")  # the replay read these inputs
        assert list(graphs.graphs) == [tuple(tuple(t.shape) for t in inputs)]
        held = graphs.graphs[next(iter(graphs.graphs))].static
        assert all(torch.equal(buffer, value) for buffer, value in zip(held, inputs))  # refreshed in place


def _with_loop_sampler(engine: Engine, monkeypatch) -> LoopGraphs:
    """Give the engine's runtime a whole-loop sampler over the CPU twin, as the cuda_graph backend has."""
    loops = LoopGraphs(eager_capture)
    monkeypatch.setattr(type(engine.runtime), "captures_loop", True)
    monkeypatch.setattr(engine.runtime, "loop_sampler", lambda rows: loops.sample)
    return loops


@pytest.mark.parametrize("clip,overlap", [("none", "none"), ("codebook", "none"), ("none", "half"),
                                          ("codebook", "half")])
def test_the_engine_samples_through_a_runtime_loop_sampler_with_the_same_images(model, db, monkeypatch, clip,
                                                                                 overlap):
    kwargs = dict(seed=3, sampler="ddim", steps=4, eta=0.5, batch_size=2, clip=clip, overlap=overlap)
    want = Engine(model, db, device="cpu", backend="eager").generate(4, progress=False, **kwargs)
    engine = Engine(model, db, device="cpu", backend="eager")
    loops = _with_loop_sampler(engine, monkeypatch)
    calls = []
    got = engine.generate(4, callback=lambda done, n: calls.append(done), **kwargs)
    assert_close(got, want, "bitwise")
    assert len(loops) == 1 and calls == [2, 4]  # two batches of one shape: one capture
    assert isinstance(next(iter(loops._loops.values())).denoiser, WindowedDenoiser) == (overlap == "half")
    # DDPM steps in Python (its loop is not captured whole).
    assert engine._loop_sampler(make_sampler("ddpm", model.schedule), 4) is None


def test_non_finite_values_from_a_whole_loop_stop_generation(model, db, monkeypatch):
    broken = RissoleModel.from_reference(**paths("ref_addpos_")).eval()
    with torch.no_grad():
        broken.unet.out_conv.bias[0] = float("nan")
    engine = Engine(broken, db, device="cpu", backend="eager")
    _with_loop_sampler(engine, monkeypatch)
    with pytest.raises(NonFiniteError, match=r"sampling loop \(captured whole\) for images \[0, 1\]"):
        engine.generate(2, sampler="ddim", steps=3, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("sampler,eta,overlap", [("ddim", 0.0, "none"), ("ddim", 1.0, "none"),
                                                 ("dpmpp_2m", None, "none"), ("dpmpp_2m", None, "half")])
def test_cuda_graph_whole_loop_images_equal_the_eager_engine(db, sampler, eta, overlap):
    gpu = RissoleModel.from_reference(**paths("ref_addpos_")).cuda().eval()
    kwargs = dict(seed=5, sampler=sampler, steps=6, eta=eta, batch_size=2, overlap=overlap, progress=False)
    eager = Engine(gpu, db, device="cuda", backend="eager").generate(4, **kwargs)
    engine = Engine(gpu, db, device="cuda", backend="cuda_graph")
    got = engine.generate(4, **kwargs)
    assert len(engine.runtime.loops) == 1  # captured once, replayed for the second batch
    assert_close(got, eager, "images_uint8")
    assert np.array_equal(engine.generate(4, **kwargs), got)  # a replay is deterministic


def test_the_gpu_benchmark_script_runs_and_says_what_it_skipped(tmp_path):
    """benchmarks/bench_gpu.py (what scripts/gpu_check.sh runs) in its smoke mode: on a machine
    without a GPU the CUDA rows are skipped with the reason and the goal is not claimed."""
    import runpy

    from conftest import REPO_ROOT

    script = runpy.run_path(str(REPO_ROOT / "benchmarks" / "bench_gpu.py"))
    report = script["main"](["--smoke", "--out", str(tmp_path), "--repeats-for", "1:2"])
    assert json.loads((tmp_path / "bench_gpu.json").read_text())["complete"]  # rewritten after every row
    assert (tmp_path / "bench_gpu.md").is_file()
    whats = [row["what"] for row in report["rows"]]
    assert whats == ["per-step call", "denoising loop dpmpp_2m:3", "end to end dpmpp_2m:3"]
    assert all(value > 0 for row in report["rows"] for value in row.get("ms", row.get("images/s")).values())
    assert all(row["repeats"] == 2 for row in report["rows"])  # --repeats-for overrides one batch size
    if not torch.cuda.is_available():
        assert set(report["skipped"]) == {"cuda_graph", "tensorrt", "engine"}
        assert report["goal_batch1"].startswith("not measured")

"""Triton kernels against their torch references, on CPU tensors under TRITON_INTERPRET=1 (set by
conftest.py before anything imports Triton; on a CUDA machine the same tests run on the GPU). fp32 and fp16:
the interpreter's bf16 ``tl.dot`` is wrong, so bf16 is a GPU test. Tolerances from the one table."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no GPU and TRITON_INTERPRET is not 1 (conftest.py sets it)", allow_module_level=True)
pytest.importorskip("triton")

from cuda_guards import NoUnsignedIndexing  # noqa: E402
from rissole_trt.kernels.gather_xattn import gather_xattn, gather_xattn_reference  # noqa: E402
from rissole_trt.tolerances import KERNEL_ERROR_FACTOR, TOLERANCES  # noqa: E402

from tolerances import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Under the CPU interpreter every kernel launch runs in Python: the slow tier. On a GPU they are quick.
pytestmark = [] if DEVICE == "cuda" else [pytest.mark.slow]


def _problem(rows, lq, heads, dh, k, bs, entries=9, blocks=4, n_codes=40, images=3, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, entries, (images, k), generator=g)
    ids[0, 0], ids[-1, -1] = 0, entries - 1  # the database's first and last entries
    table = lambda n: torch.randn(n, heads, dh, generator=g).to(dtype).to(DEVICE)  # noqa: E731
    return dict(q=torch.randn(rows, lq, heads, dh, generator=g).to(dtype).to(DEVICE), ids=ids.to(DEVICE),
                row_image=(torch.arange(rows) % images).to(DEVICE), row_block=(torch.arange(rows) % blocks).to(DEVICE),
                codes=torch.randint(0, n_codes, (blocks, entries, bs, bs), generator=g).to(torch.uint16).to(DEVICE),
                k_codes=table(n_codes), v_codes=table(n_codes), k_pos=table(bs * bs), v_pos=table(bs * bs))


def _fp32(problem):
    return {name: t.float() if t.is_floating_point() else t for name, t in problem.items()}


SHAPES = [  # rows, Lq (not a multiple of the 16-query tile), heads, head_dim, k, bs
    (5, 20, 4, 24, 3, 5),
    (3, 64, 1, 32, 1, 8),
    (7, 9, 4, 16, 10, 8),
    (2, 33, 1, 8, 10, 5),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[f"r{s[0]}-lq{s[1]}-h{s[2]}-d{s[3]}-k{s[4]}-bs{s[5]}" for s in SHAPES])
def test_fp32_kernel_matches_the_reference(shape):
    problem = _problem(*shape)
    assert_close(gather_xattn(**problem), gather_xattn_reference(**problem), "kernel_fp32")


@pytest.mark.parametrize("shape", SHAPES[:3], ids=["a", "b", "c"])
def test_fp16_kernel_meets_flash_attentions_error_rule(shape):
    problem = _problem(*shape, dtype=torch.float16)
    exact = gather_xattn_reference(**_fp32(problem))
    kernel_error = (gather_xattn(**problem).float() - exact).abs().max()
    reference_error = (gather_xattn_reference(**problem).float() - exact).abs().max()
    assert kernel_error <= KERNEL_ERROR_FACTOR * reference_error + TOLERANCES["kernel_lowp_floor"].atol


def test_codes_above_int16s_range_read_the_same_rows_in_the_kernel_and_the_reference():
    """The reference indexes the codes through an int16 view (CUDA cannot index uint16) and widens
    them; a code of 32768 or more read sign-extended would pick another table row."""
    problem = _problem(5, 20, 2, 16, 3, 4, n_codes=40000)
    codes = problem["codes"].cpu()  # written on the CPU: CUDA's uint16 support is copies and views
    codes[0, 0, 0, 0] = 39999
    problem["codes"] = codes.to(DEVICE)
    assert int(problem["codes"].view(torch.int16).min()) < 0  # some codes are negative as int16
    with NoUnsignedIndexing():
        reference = gather_xattn_reference(**problem)
    assert_close(gather_xattn(**problem), reference, "kernel_fp32")


def test_masked_neighbours_are_left_out_and_a_fully_masked_row_is_zero():
    problem = _problem(4, 20, 2, 16, 3, 5, images=2)
    problem["ids"][1] = -1  # image 1 has no neighbours at all: rows 1 and 3
    problem["ids"][0, 1] = -1  # image 0 has two of three
    out = gather_xattn(**problem)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all() and (out[3] == 0).all()
    assert_close(out, gather_xattn_reference(**problem), "kernel_fp32")
    # Dropping a masked neighbour is the same as never having it.
    kept = dict(problem, ids=problem["ids"][:, [0, 2]])
    assert_close(out[[0, 2]], gather_xattn(**kept)[[0, 2]], "kernel_fp32")


@pytest.mark.parametrize("bad,error", [
    (dict(ids=lambda p: p["ids"].clone().fill_(9)), IndexError),  # == entries: out of range
    (dict(ids=lambda p: p["ids"].clone().fill_(-2)), IndexError),
    (dict(row_block=lambda p: p["row_block"] + 4), IndexError),
    (dict(row_image=lambda p: p["row_image"] + 3), IndexError),
    (dict(codes=lambda p: p["codes"].to(torch.int32)), ValueError),
    (dict(k_pos=lambda p: p["k_pos"][:-1]), ValueError),
    (dict(v_codes=lambda p: p["v_codes"].half()), ValueError),
])
def test_bad_inputs_are_refused_before_launch(bad, error):
    problem = _problem(5, 20, 4, 24, 3, 5)
    (name, change), = bad.items()
    problem[name] = change(problem)
    with pytest.raises(error):
        gather_xattn(**problem)


@pytest.mark.parametrize("bf,bs", [(2, 4), (3, 2)])
def test_fp32_kernel_reads_shifted_windows_as_its_reference_does(bf, bs):
    """With ``sources`` a row is a window straddling blocks; its tokens come from the blocks it covers."""
    from rissole_trt.windows import ShiftedWindows

    windows = ShiftedWindows(bf, bs)
    count, images = len(windows.offsets), 2
    # Codes above int16's range too: the windows' lookup reads them through the int16 view as well.
    problem = _problem(images * count, 12, 2, 16, 3, bs, blocks=bf * bf, images=images, n_codes=40000)
    problem["row_image"] = torch.arange(images).repeat_interleave(count).to(DEVICE)
    problem["row_block"] = torch.arange(count).repeat(images).to(DEVICE)  # the window
    sources = windows.token_sources(DEVICE)
    got = gather_xattn(**problem, sources=sources)
    with NoUnsignedIndexing():
        reference = gather_xattn_reference(**problem, sources=sources)
    assert_close(got, reference, "kernel_fp32")
    aligned = [i for i, (y, x) in enumerate(windows.offsets) if y % bs == 0 and x % bs == 0]
    rows = [b * count + w for b in range(images) for w in aligned]  # aligned windows are their blocks
    blocks = dict(problem, q=problem["q"][rows], row_image=problem["row_image"][rows],
                  row_block=torch.arange(bf * bf).repeat(images).to(DEVICE))
    assert_close(got[rows], gather_xattn(**blocks), "kernel_fp32")


def test_kernel_on_an_xattn_models_tables_matches_its_layer(tmp_path):
    """End to end on real weights: the kernel reads the database's codes through the model's tables."""
    from rissole_trt.builder import build_database
    from rissole_trt.models import RissoleModel
    from test_xattn import XATTN, _rows_of

    from synthetic import smooth_images

    torch.manual_seed(0)
    model = RissoleModel(XATTN).eval()
    database = build_database(model, smooth_images(6, size=32), tmp_path / "db", progress=False)
    ids = torch.tensor([[0, 5, 2], [1, 1, 4]])
    cond, row_image, row_block, codes = _rows_of(database, ids)
    hoisted = model.unet.condition(cond)
    tables = model.unet.xattn_tables(database.codebook_tensor("cpu"))
    layer, table = model.unet._xattn_layers[0], tables[0]
    q = torch.randn(len(cond), 16, layer.n_heads, layer.head_dim)
    a, b = layer.kv_slice
    expected = layer.attend(q, hoisted[:, :, a:b])
    to = lambda t: t.to(DEVICE)  # noqa: E731
    ours = gather_xattn(to(q), to(ids), to(row_image), to(row_block), to(codes),
                        **{name: to(t) for name, t in table.items()}, scale=layer.scale)
    assert_close(ours.cpu(), expected, "fp32_reorder")


# ----------------------------------------------------------------------------- fused sampler step

from rissole_trt.diffusion import NoiseSchedule, make_sampler, sample  # noqa: E402
from rissole_trt.kernels.sampler_step import sampler_step, sampler_step_reference  # noqa: E402

SAMPLER_CASES = [("ddpm", None, None), ("ddim", 10, 0.0), ("ddim", 10, 1.0), ("dpmpp_2m", 10, None)]


def _step_inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).to(DEVICE) for _ in range(4)]  # x, eps, noise, prev


@pytest.mark.parametrize("name,steps,eta", SAMPLER_CASES, ids=[f"{c[0]}-eta{c[2]}" for c in SAMPLER_CASES])
def test_fused_step_matches_its_reference_at_every_kind_of_step(name, steps, eta):
    sampler = make_sampler(name, NoiseSchedule("linear", 100), steps, eta=eta)
    x, eps, noise, prev = _step_inputs((3, 4, 5, 7), torch.float32)  # 420 elements: not a multiple of the tile
    for i in (0, 1, sampler.num_steps // 2, sampler.num_steps - 1):
        step = sampler.linear_step(i)
        ours, ours_x0 = sampler_step(x, eps, noise, prev, step, block=128)
        expected, expected_x0 = sampler_step_reference(x, eps, noise, prev, step)
        assert_close(ours, expected, "kernel_fp32")
        assert (ours_x0 is None) == (expected_x0 is None)
        if expected_x0 is not None:
            assert_close(ours_x0, expected_x0, "kernel_fp32")


def test_fused_step_in_fp16_meets_the_error_rule_and_writes_x0_over_prev():
    sampler = make_sampler("dpmpp_2m", NoiseSchedule("linear", 100), 10)
    step = sampler.linear_step(3)  # second order: uses prev and keeps x0
    x, eps, noise, prev = _step_inputs((2, 300), torch.float16)
    exact, exact_x0 = sampler_step_reference(*(t.float() for t in (x, eps, noise, prev)), step)
    reference, _ = sampler_step_reference(x, eps, noise, prev, step)
    in_place = prev.clone()
    ours, x0 = sampler_step(x, eps, noise, in_place, step, x0_out=in_place)
    assert x0.data_ptr() == in_place.data_ptr()
    floor = TOLERANCES["kernel_lowp_floor"].atol
    assert (ours.float() - exact).abs().max() <= KERNEL_ERROR_FACTOR * (reference.float() - exact).abs().max() + floor
    assert (x0.float() - exact_x0).abs().max() <= 1e-3 * exact_x0.abs().max()


def test_fused_step_refuses_what_it_cannot_compute():
    sampler = make_sampler("ddim", NoiseSchedule("linear", 100), 10, eta=1.0)
    x, eps, noise, prev = _step_inputs((2, 8), torch.float32)
    with pytest.raises(ValueError, match="give noise"):
        sampler_step(x, eps, None, None, sampler.linear_step(0))
    with pytest.raises(ValueError, match="eps must be like x"):
        sampler_step(x, eps[:1], noise, None, sampler.linear_step(0))
    with pytest.raises(ValueError, match="give prev"):
        sampler_step(x, eps, None, None, make_sampler("dpmpp_2m", NoiseSchedule("linear", 100), 10).linear_step(2))


@pytest.mark.parametrize("name,steps,eta", SAMPLER_CASES, ids=[f"{c[0]}-eta{c[2]}" for c in SAMPLER_CASES])
def test_a_whole_fused_sampling_loop_gives_the_unfused_samples(name, steps, eta):
    """Same per-image generators, so the same noise: only float32 rounding differs."""
    schedule = NoiseSchedule("linear", 100)

    def eps_fn(x, t):  # a smooth stand-in denoiser
        return torch.tanh(0.5 * x + 0.01 * t)

    def run(fused):
        generators = [torch.Generator(device=DEVICE).manual_seed(7 + i) for i in range(3)]
        return sample(eps_fn, (3, 2, 4, 4), schedule, name, steps, eta=eta, generator=generators, device=DEVICE,
                      fused_step=fused)

    assert_close(run(True), run(False), "fp32_sampled")


# ----------------------------------------------------------------------------- the triton backend

@pytest.fixture(scope="module")
def xattn(tmp_path_factory):
    """An xattn model whose cross-attention layers matter, on DEVICE, with its database and Triton backend."""
    from rissole_trt.builder import build_database
    from rissole_trt.models import RissoleModel
    from rissole_trt.runtime.triton_backend import TritonBackend
    from test_xattn import XATTN

    from synthetic import smooth_images

    torch.manual_seed(0)
    model = RissoleModel(XATTN).eval()
    for layer in model.unet._xattn_layers:
        torch.nn.init.normal_(layer.out.weight, std=0.3)
    database = build_database(model, smooth_images(6, size=32), tmp_path_factory.mktemp("xattn") / "db",
                              progress=False)
    model = model.to(DEVICE)
    return model, database, TritonBackend(model)


def _fused_engine(model, database, backend):
    """An Engine over ``backend``: by hand on a CPU (the registry offers triton for CUDA only), else ``auto``."""
    from rissole_trt.engine import Engine

    if DEVICE == "cuda":
        engine = Engine(model, database, device=DEVICE)
        assert engine.backend == "triton"  # auto on a GPU for xattn models
        return engine
    engine = Engine(model, database, device="cpu", backend="eager")
    engine.runtime, engine._denoiser = backend, backend.denoiser
    return engine


def test_triton_backend_runs_an_xattn_model_from_the_databases_codes(xattn):
    """The backend's per-step network (fused gather + cross-attention) and the Engine's sampling loop
    through it (fused sampler step) against the eager reference path."""
    from rissole_trt.engine import Engine
    from rissole_trt.errors import BackendUnavailableError

    model, database, backend = xattn
    assert backend.reads_codes and backend.fused_step
    ids = torch.tensor([[0, 5, 2], [1, 1, 4]])
    cond = database.neighbour_blocks(ids, device=DEVICE)
    x = torch.randn(2, 4, 4, 4, 4, device=DEVICE)
    ours = backend.code_denoiser(cond, ids, database.codes_tensor(DEVICE))(x, 20)
    assert_close(ours, model.denoiser(cond)(x, 20), "engine_fp32")
    with pytest.raises(IndexError):
        backend.code_denoiser(cond, ids + 1, database.codes_tensor(DEVICE))  # id 6 is past the database

    eager = Engine(model, database, device=DEVICE, backend="eager")
    expected = eager.generate(2, seed=3, sampler="ddim", steps=3, progress=False)
    if DEVICE == "cpu":
        with pytest.raises(BackendUnavailableError, match="runs on cuda, not cpu"):
            Engine(model, database, device="cpu", backend="triton")
    fused = _fused_engine(model, database, backend)
    assert_close(fused.generate(2, seed=3, sampler="ddim", steps=3, progress=False), expected, "images_uint8")


def test_the_code_denoiser_with_shifted_windows_is_the_windowed_denoiser(xattn):
    """overlap="half" through the kernel: the windows' tokens read from the codes of the blocks they straddle."""
    from rissole_trt.windows import ShiftedWindows, WindowedDenoiser

    model, database, backend = xattn
    ids = torch.tensor([[0, 5, 2], [1, 1, 4]])
    cond = database.neighbour_blocks(ids, device=DEVICE)
    windows = ShiftedWindows(model.config.unet.block_factor, model.config.block_size)
    x = torch.randn(2, 4, 4, 4, 4, device=DEVICE)
    ours = backend.code_denoiser(cond, ids, database.codes_tensor(DEVICE), windows=windows)
    assert isinstance(ours, WindowedDenoiser) and ours.inner.rows == 2 * len(windows.offsets)
    assert_close(ours(x, 20), windows.denoiser(model.denoiser, cond)(x, 20), "engine_fp32")


def test_the_engine_takes_the_code_path_with_overlap_and_says_when_it_cannot_capture_it(xattn, monkeypatch):
    """overlap="half" on a code-reading backend runs its code denoiser (spied on); a backend that also
    captured whole loops could not hold one, and the Engine says so once instead of doing so silently."""
    from rissole_trt.engine import Engine
    from rissole_trt.runtime.loop_graph import LoopGraphs, eager_capture

    model, database, backend = xattn
    settings = dict(seed=3, sampler="ddim", steps=3, batch_size=1, overlap="half", progress=False)
    expected = Engine(model, database, device=DEVICE, backend="eager").generate(2, **settings)
    fused = _fused_engine(model, database, backend)
    calls = []
    code_denoiser = fused.runtime.code_denoiser
    monkeypatch.setattr(fused.runtime, "code_denoiser",
                        lambda *args, windows=None: calls.append(windows) or code_denoiser(*args, windows=windows))
    assert_close(fused.generate(2, **settings), expected, "images_uint8")
    assert len(calls) == 2 and all(w is not None and len(w.offsets) == 9 for w in calls)  # one per batch
    loops = LoopGraphs(eager_capture)
    monkeypatch.setattr(fused.runtime, "loop_sampler", lambda rows: loops.sample, raising=False)
    monkeypatch.setattr(type(fused.runtime), "captures_loop", True)  # as a backend that declared both would
    with pytest.warns(UserWarning, match=r"triton backend reads the neighbours' codes.*overlap='half'") as record:
        assert_close(fused.generate(2, **settings), expected, "images_uint8")
    assert len(calls) == 4 and len(loops) == 0  # the code path, stepped in Python
    assert len([w for w in record if "reads the neighbours' codes" in str(w.message)]) == 1  # once, two batches


# ----------------------------------------------------------------------------- context + projection kernel

from rissole_trt.kernels.context_xattn import context_xattn, context_xattn_reference  # noqa: E402

CONTEXT_SHAPES = [  # rows, Lq, heads, head_dim, tokens, D (T and D not multiples of the tiles)
    (3, 20, 4, 16, 45, 24),
    (2, 64, 1, 32, 640, 64),
    (5, 9, 2, 8, 10, 70),
]


def _context_problem(rows, lq, heads, dh, tokens, d, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape, s=1.0: (s * torch.randn(*shape, generator=g)).to(dtype).to(DEVICE)  # noqa: E731
    return dict(q=make(rows, lq, heads, dh), ctx=make(rows, tokens, d), w_k=make(d, heads * dh, s=d ** -0.5),
                w_v=make(d, heads * dh, s=d ** -0.5))


@pytest.mark.parametrize("shape", CONTEXT_SHAPES, ids=[f"r{s[0]}-lq{s[1]}-h{s[2]}-d{s[3]}-t{s[4]}-D{s[5]}"
                                                        for s in CONTEXT_SHAPES])
def test_context_kernel_fp32_matches_the_reference(shape):
    problem = _context_problem(*shape)
    assert_close(context_xattn(**problem), context_xattn_reference(**problem), "kernel_fp32")


def test_context_kernel_fp16_meets_flash_attentions_error_rule():
    problem = _context_problem(*CONTEXT_SHAPES[0], dtype=torch.float16)
    exact = context_xattn_reference(**{k: v.float() for k, v in problem.items()})
    kernel_error = (context_xattn(**problem).float() - exact).abs().max()
    reference_error = (context_xattn_reference(**problem).float() - exact).abs().max()
    assert kernel_error <= KERNEL_ERROR_FACTOR * reference_error + TOLERANCES["kernel_lowp_floor"].atol


def test_context_kernel_masks_tokens_and_a_fully_masked_row_is_zero():
    problem = _context_problem(3, 20, 2, 16, 45, 24)
    mask = torch.ones(3, 45, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    mask[2, 10:] = False
    out = context_xattn(**problem, mask=mask)
    assert torch.isfinite(out).all() and (out[1] == 0).all()
    assert_close(out, context_xattn_reference(**problem, mask=mask), "kernel_fp32")
    short = dict(problem, q=problem["q"][2:], ctx=problem["ctx"][2:, :10])
    assert_close(out[2:], context_xattn(**short), "kernel_fp32")  # masked tokens are as good as absent
    with pytest.raises(ValueError, match="w_k must be"):
        context_xattn(**dict(problem, w_k=problem["w_k"][:-1]))


def test_context_kernel_is_an_xattn_layer_over_its_embedded_context():
    from rissole_trt.models import RissoleModel
    from test_xattn import XATTN

    torch.manual_seed(0)
    unet = RissoleModel(XATTN).unet
    cond = torch.randn(4, 12, 4, 4)
    context = unet.context_embed(unet.context_tokens(cond)).detach()  # [R, T, D]
    layer = unet._xattn_layers[2]
    w_k, w_v = layer.to_kv.weight.detach().t().chunk(2, dim=1)
    q = torch.randn(4, 4, layer.n_heads, layer.head_dim)
    expected = layer.attend(q, layer.to_kv(context)).detach()
    ours = context_xattn(q.to(DEVICE), context.to(DEVICE), w_k.contiguous().to(DEVICE), w_v.contiguous().to(DEVICE),
                         scale=layer.scale)
    assert_close(ours.cpu(), expected, "fp32_reorder")


@pytest.mark.skipif(DEVICE == "cpu", reason="bf16 needs a GPU: the Triton interpreter's bf16 tl.dot is wrong")
@pytest.mark.parametrize("shape", SHAPES[:3], ids=["a", "b", "c"])
def test_bf16_kernels_meet_flash_attentions_error_rule_on_a_gpu(shape):
    floor = TOLERANCES["kernel_lowp_floor"].atol
    problem = _problem(*shape, dtype=torch.bfloat16)
    exact = gather_xattn_reference(**_fp32(problem))
    assert ((gather_xattn(**problem).float() - exact).abs().max()
            <= KERNEL_ERROR_FACTOR * (gather_xattn_reference(**problem).float() - exact).abs().max() + floor)
    context = _context_problem(*CONTEXT_SHAPES[0], dtype=torch.bfloat16)
    exact = context_xattn_reference(**{k: v.float() for k, v in context.items()})
    assert ((context_xattn(**context).float() - exact).abs().max()
            <= KERNEL_ERROR_FACTOR * (context_xattn_reference(**context).float() - exact).abs().max() + floor)


def test_the_kernel_benchmark_script_runs(tmp_path):
    """benchmarks/bench_kernels.py at tiny shapes: the GPU check's benchmark does not rot unseen."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_kernels.py"
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(script), "--smoke", "--dtype", "fp32", "--json", str(out)], check=True,
                   capture_output=True, env={**os.environ, "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "0")})
    saved = json.loads(out.read_text())
    assert saved["complete"]  # rewritten after every row, marked complete at the end
    rows = saved["rows"]
    assert [r["kernel"] for r in rows] == ["gather_xattn", "context_xattn", "sampler_step (fp32)"]
    assert all(r["kernel_ms"] > 0 and r["reference_ms"] > 0 for r in rows)

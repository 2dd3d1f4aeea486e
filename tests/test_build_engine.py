"""Built engines: build -> manifest -> load -> run, the cache-hit and refusal rules, padding to
buckets, a killed build, per-layer tactics and rows per call, and the peers (torch.compile, OpenVINO) as candidates.

Timing decides only *which* candidate runs; every assertion here is about correctness, so the
tests hold whichever candidate wins on the machine at hand. The model is the converted authors'
checkpoint of the fixtures (a real converted model, small enough to build in seconds)."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from rissole_trt import cli
from rissole_trt.builder import build_database, model_fingerprint
from rissole_trt.engine import Engine
from rissole_trt.errors import BackendUnavailableError, EngineMismatchError, InvalidArgumentError, MissingFileError
from rissole_trt.models import RissoleModel
from rissole_trt.presets import make_preset_model
from rissole_trt.runtime.backend import Artifacts
from rissole_trt.runtime.engine_build import (
    EngineManifest,
    build_engine,
    candidates,
    check_machine,
    load_engine,
    read_manifest,
)
from rissole_trt.runtime.tactics import TacticTable, TunedBackend, apply_tactics, tune
from rissole_trt.runtime.tactics.candidates import DenseMapConv
from rissole_trt.runtime.tensorrt_backend import TensorRTBackend

from reference_fixtures import paths
from synthetic import smooth_images
from tolerances import assert_close

# Fast candidates only (torch.compile compiles for tens of seconds per shape: tested once, below).
FAST = ("tuned", "torch", "eager")
BUILD = dict(batch_sizes=(1, 2), budget_s=2.0, candidates=FAST, log=lambda _: None)


@pytest.fixture(scope="module")
def model():
    return RissoleModel.from_reference(**paths("ref_addpos_")).eval()


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("engine")
    manifest = build_engine(model, root / "engine", **BUILD)
    return root / "engine", manifest


@pytest.fixture(scope="module")
def db(model, tmp_path_factory):
    return build_database(model, smooth_images(12), tmp_path_factory.mktemp("db") / "db", progress=False)


def _step_inputs(model, rows, seed=0):
    return candidates.bucket_inputs(model, rows, seed)


def test_manifest_records_the_model_the_machine_and_every_candidate(built, model):
    path, manifest = built
    on_disk = read_manifest(path)
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["model_fingerprint"] == model_fingerprint(model)
    assert manifest["device"]["type"] == "cpu" and manifest["device"]["threads"] == torch.get_num_threads()
    assert set(manifest["versions"]) >= {"torch", "onednn", "cuda", "tensorrt", "onnxruntime", "openvino"}
    assert [b["batch_size"] for b in manifest["buckets"]] == [1, 2]
    for bucket in manifest["buckets"]:
        assert bucket["rows"] == bucket["batch_size"] * model.config.n_blocks
        assert set(bucket["candidates"]) == set(FAST)
        timed = {n: r for n, r in bucket["candidates"].items() if r["within_tolerance"]}
        assert bucket["chosen"] == min(timed, key=lambda n: timed[n]["ms"])  # the fastest within tolerance
        assert bucket["candidates"]["eager"]["max_abs_error"] == 0.0
    assert (path / "tactics.json").is_file() and sum(manifest["tactics"]["wins"].values()) > 0


def test_the_manifest_says_what_each_layer_chose_and_why(built):
    path, manifest = built
    table = TacticTable.from_dict(json.loads((path / "tactics.json").read_text()))
    decisions = manifest["tactics"]["layers"]
    assert set(decisions) == set(table.layers)
    for layer, per_rows in decisions.items():
        assert set(per_rows) == {"4", "8"}  # both buckets' rows
        for rows, decision in per_rows.items():
            timed = table.layers[layer][rows]["candidates"]
            assert decision["chosen"] == table.choice(layer, int(rows)) and decision["ms"] == timed[decision["chosen"]]["ms"]
            others = [c for c, r in timed.items() if r["excess"] <= 1.0 and c != decision["chosen"]]
            if others:  # the runner-up is the next fastest within tolerance, never faster than the choice
                assert decision["runner_up"] == min(others, key=lambda c: timed[c]["ms"])
                assert decision["runner_up_ms"] >= decision["ms"]
            else:
                assert decision["runner_up"] is None
            assert all(timed[c]["excess"] > 1.0 and timed[c]["ms"] < decision["ms"]
                       for c in decision["faster_outside_tolerance"])


def test_engine_images_equal_the_eager_engine_within_one_grey_level(built, model, db):
    path, _ = built
    kwargs = dict(n=3, seed=4, sampler="ddim", steps=5, batch_size=3, progress=False)  # 3: padded / split
    eager = Engine(model, db, device="cpu", backend="eager").generate(**kwargs)
    engine = Engine(model, db, device="cpu", engine=path)
    assert engine.backend == "engine" and engine.precision == "fp32"
    assert_close(engine.generate(**kwargs), eager, "images_uint8")


def test_an_engine_runs_the_shifted_windows(built, model, db):
    """overlap="half" (the built-in model's default) sends 9 windows per image with mixed position
    weights through the engine's buckets."""
    kwargs = dict(n=3, seed=1, sampler="ddim", steps=3, batch_size=3, overlap="half", progress=False)
    eager = Engine(model, db, device="cpu", backend="eager").generate(**kwargs)
    assert_close(Engine(model, db, device="cpu", engine=built[0]).generate(**kwargs), eager, "images_uint8")


def test_a_model_that_samples_with_windows_gets_buckets_of_windows(model, db, tmp_path):
    import copy

    windowed = copy.deepcopy(model)
    windowed.default_overlap = "half"  # as the built-in model: 9 windows per image and step
    manifest = build_engine(windowed, tmp_path / "engine", **BUILD)
    assert manifest["overlap"] == "half" and manifest["rows_per_image"] == 9
    assert [b["rows"] for b in manifest["buckets"]] == [9, 18]
    kwargs = dict(n=3, seed=2, sampler="ddim", steps=3, batch_size=3, progress=False)
    eager = Engine(windowed, db, device="cpu", backend="eager").generate(**kwargs)
    assert_close(Engine(windowed, db, device="cpu", engine=tmp_path / "engine").generate(**kwargs), eager,
                 "images_uint8")


@pytest.mark.parametrize("rows", [1, 3, 4, 7, 8, 11])  # below, inside, at and above the buckets (4, 8 rows)
def test_calls_are_padded_up_to_a_bucket_or_split(built, model, rows):
    engine = load_engine(built[0], model)
    inputs = _step_inputs(model, rows, seed=rows)
    assert_close(engine.forward_hoisted(*inputs), model.unet.forward_hoisted(*inputs), "engine_fp32")
    assert engine.bucket_for(rows) == (4 if rows <= 4 else 8)


def test_run_in_buckets_gives_the_runner_only_bucket_rows(model):
    """The padding shared by built engines and TensorRT profiles: what the fixed-shape runner sees."""
    from rissole_trt.runtime.base import run_in_buckets

    seen = []

    def run(x, cond_feat, time_bias, pos_bias):
        seen.append((x.shape[0], cond_feat.shape[0], time_bias.shape[0], pos_bias.shape[0]))
        return model.unet.forward_hoisted(x, cond_feat, time_bias, pos_bias)

    inputs = _step_inputs(model, 11, seed=2)
    assert inputs[2].shape[0] == 1  # the samplers' shared timestep
    out = run_in_buckets([4, 8], run, *inputs)
    assert seen == [(8, 8, 1, 8), (4, 4, 1, 4)]  # 8 rows, then 3 padded to 4; one timestep row kept
    assert_close(out, model.unet.forward_hoisted(*inputs), "engine_fp32")
    per_row = inputs[:2] + (model.unet.embed_time(torch.arange(11) * 90),) + inputs[3:]
    seen.clear()
    assert_close(run_in_buckets([4, 8], run, *per_row), model.unet.forward_hoisted(*per_row), "engine_fp32")
    assert seen == [(8, 8, 8, 8), (4, 4, 4, 4)]
    seen.clear()  # with measured costs: the cheapest cover, here 4 + 4 + 4 rather than 8 + 4
    assert_close(run_in_buckets([4, 8], run, *inputs, costs={4: 1.0, 8: 3.0}), model.unet.forward_hoisted(*inputs),
                 "engine_fp32")
    assert seen == [(4, 4, 1, 4)] * 3


def test_the_cheapest_cover_of_a_row_count_by_measured_buckets():
    from rissole_trt.runtime.base import cheapest_cover, pad_or_split

    zen3 = ((4, 4.05), (64, 35.2), (256, 134.6))  # the tiny engine's buckets on the Zen 3 (README)
    assert cheapest_cover(9, zen3) == [4, 4, 4]  # one image with overlap="half": not a padded 64-row call
    assert sorted(cheapest_cover(144, zen3)) == [4, 4, 4, 4, 64, 64]  # 16 images' windows: 86.6 ms, not 134.6
    assert cheapest_cover(36, zen3) == [64] and cheapest_cover(256, zen3) == [256]
    assert sorted(cheapest_cover(576, zen3)) == [64, 256, 256]
    assert pad_or_split(9, [4, 64, 256]) == [64] and pad_or_split(576, [4, 64, 256]) == [256, 256, 64]


def test_fp32_work_runs_without_tf32_and_the_flags_are_restored(built, model, db):
    from rissole_trt.runtime.base import exact_fp32

    flags = lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)  # noqa: E731
    before = flags()
    with exact_fp32():
        assert flags() == (False, False)
    assert flags() == before
    engine = Engine(model, db, device="cpu")
    seen = []
    make = engine._denoiser
    engine._denoiser = lambda cond, pos=None: seen.append(flags()) or make(cond, pos)
    engine.generate(1, sampler="ddim", steps=2, progress=False)
    assert seen == [(False, False)] and flags() == before  # the Engine's sampling loop and decode


def test_the_same_build_again_is_a_cache_hit(built, model):
    path, manifest = built
    stamp = (path / "manifest.json").stat().st_mtime_ns
    messages = []
    again = build_engine(model, path, **dict(BUILD, log=messages.append))
    assert again == read_manifest(path) and (path / "manifest.json").stat().st_mtime_ns == stamp
    assert any("up to date" in m for m in messages)


def test_another_model_or_settings_are_refused_with_the_reason(built, model, tmp_path):
    path, _ = built
    other = RissoleModel.from_reference(**paths("ref_addpos_"))
    with torch.no_grad():
        next(other.unet.parameters()).add_(1e-3)
    with pytest.raises(EngineMismatchError, match="another model"):
        load_engine(path, other)
    with pytest.raises(EngineMismatchError, match="--rebuild"):
        build_engine(model, path, **dict(BUILD, batch_sizes=(1, 4)))
    with pytest.raises(MissingFileError, match="not an engine directory"):
        load_engine(tmp_path, model)


def test_another_cpu_warns_and_another_format_is_refused(built, model, tmp_path):
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(built[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["device"]["isa_flags"] = ["avx2"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="isa_flags.*--rebuild"):
        load_engine(copy, model)
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineMismatchError, match="format 99"):
        load_engine(copy, model)


def _manifest_on(device: dict, chosen: str = "tuned", **versions) -> EngineManifest:
    """A manifest of an engine built on ``device`` whose one bucket runs ``chosen`` (what the load rules read)."""
    base = {"torch": "2.13.0", "onednn": "3.7", "cuda": "13.0", "tensorrt": "10.13", "onnxruntime": "1.23",
            "openvino": "2025.3"}
    return EngineManifest(model_fingerprint="0" * 64, model_config={}, device=device, versions=dict(base, **versions),
                          precision="fp32", batch_sizes=[1], block_positions=4, overlap="none", rows_per_image=4,
                          candidates_requested=[chosen], tolerance="engine_fp32", buckets=[{"chosen": chosen}])


CPU = {"type": "cpu", "cpu_model": "AMD EPYC", "isa_flags": ["avx2", "fma"], "threads": 2}
H200 = {"type": "cuda", "name": "NVIDIA H200", "capability": "9.0", "driver": 13000}
NOW = _manifest_on(CPU).versions


@pytest.mark.parametrize("built_on,here,versions,message", [
    (_manifest_on(H200), CPU, NOW, "built for cuda, the model is on cpu"),
    (_manifest_on(CPU), H200, NOW, "built for cpu, the model is on cuda"),
    (_manifest_on(H200), dict(H200, name="NVIDIA H100 80GB HBM3"), NOW, "built on NVIDIA H200 .*rebuild it here"),
    (_manifest_on(H200), dict(H200, capability="8.0"), NOW, r"sm 9.0\), this is .*sm 8.0"),
    (_manifest_on(H200, "tensorrt"), H200, dict(NOW, tensorrt="10.14"), "TensorRT 10.13 plan.*TensorRT 10.14"),
    (_manifest_on(H200, "tensorrt"), H200, dict(NOW, tensorrt=None), "TensorRT 10.13 plan.*TensorRT None"),
])
def test_another_device_gpu_or_tensorrt_version_is_refused_with_the_reason(built_on, here, versions, message):
    with pytest.raises(EngineMismatchError, match=message):
        check_machine(built_on, here, versions)


@pytest.mark.parametrize("built_on,here,versions,expected", [
    (_manifest_on(CPU), CPU, NOW, []),
    (_manifest_on(CPU), dict(CPU, threads=16), NOW, ["threads 2 -> 16"]),
    (_manifest_on(CPU), dict(CPU, isa_flags=["avx2", "avx512f", "fma"], cpu_model="Intel Xeon"), NOW,
     ["cpu_model AMD EPYC -> Intel Xeon", "isa_flags ['avx2', 'fma'] -> ['avx2', 'avx512f', 'fma']"]),
    (_manifest_on(CPU), CPU, dict(NOW, torch="2.14.0", onednn="3.8"), ["torch 2.13.0 -> 2.14.0", "onednn 3.7 -> 3.8"]),
    # the ONNX Runtime / OpenVINO versions matter only where they run a bucket
    (_manifest_on(CPU), CPU, dict(NOW, onnxruntime="1.24", openvino=None), []),
    (_manifest_on(CPU, "openvino"), CPU, dict(NOW, openvino="2026.0"), ["openvino 2025.3 -> 2026.0"]),
    (_manifest_on(CPU, "onnxruntime"), CPU, dict(NOW, onnxruntime="1.24"), ["onnxruntime 1.23 -> 1.24"]),
    # a GPU engine: TensorRT only where a bucket runs it; another driver or CUDA warns
    (_manifest_on(H200, "cuda_graph"), H200, dict(NOW, tensorrt=None), []),
    (_manifest_on(H200, "cuda_graph"), dict(H200, driver=13010), dict(NOW, cuda="13.1"),
     ["driver 13000 -> 13010", "cuda 13.0 -> 13.1"]),
])
def test_what_differs_but_runs_is_returned_for_the_warning(built_on, here, versions, expected):
    assert check_machine(built_on, here, versions) == expected


def test_loading_on_another_thread_count_or_torch_warns(built, model, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "engine"
    shutil.copytree(built[0], copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["device"]["threads"] += 3
    manifest["versions"]["torch"] = "1.0.0"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match=r"threads \d+ -> \d+; torch 1.0.0 -> .*--rebuild"):
        engine = load_engine(copy, model)
    inputs = _step_inputs(model, 4)
    assert_close(engine.forward_hoisted(*inputs), model.unet.forward_hoisted(*inputs), "engine_fp32")


def test_a_loaded_engine_states_its_chosen_backends_capabilities(built, model):
    engine = load_engine(built[0], model)
    assert set(engine.backends) == {b["rows"] for b in built[1]["buckets"]}
    assert {b.name for b in engine.backends.values()} == {b["chosen"] for b in built[1]["buckets"]}
    assert (engine.captures_loop, engine.reads_codes, engine.fused_step) == (False, False, False)  # CPU candidates
    assert engine.loop_sampler(4) is None


def test_an_engine_without_the_plan_it_chose_is_refused_not_completed(model, tmp_path):
    with pytest.raises(MissingFileError, match="lacks tensorrt/denoiser.plan.*--rebuild"):
        TensorRTBackend.from_artifacts(model, "fp32", Artifacts(tmp_path, (4,)))
    assert not any(tmp_path.iterdir())


def test_an_engine_builds_from_a_preset(tmp_path):
    model = make_preset_model("tiny")
    manifest = build_engine(model, tmp_path / "engine", **dict(BUILD, batch_sizes=(1,)))
    assert manifest["model_config"] == model.config.to_dict()
    engine = load_engine(tmp_path / "engine", model)
    inputs = _step_inputs(model, 3 * model.config.n_blocks)  # split into calls of the one bucket
    assert_close(engine.forward_hoisted(*inputs), model.unet.forward_hoisted(*inputs), "engine_fp32")


def test_rebuild_replaces_and_a_killed_build_leaves_nothing(model, tmp_path, monkeypatch):
    path = tmp_path / "engine"
    build_engine(model, path, **BUILD)
    rebuilt = build_engine(model, path, **dict(BUILD, batch_sizes=(1, 3), rebuild=True))
    assert read_manifest(path)["batch_sizes"] == [1, 3] == rebuilt["batch_sizes"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(candidates, "interleaved_within", killed)
    with pytest.raises(KeyboardInterrupt):
        build_engine(model, fresh, **BUILD)
    with pytest.raises(KeyboardInterrupt):
        build_engine(model, path, **dict(BUILD, rebuild=True))
    assert not fresh.exists() and read_manifest(path)["batch_sizes"] == [1, 3]  # the old engine is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine"]  # no temporary folders left


def test_bad_arguments_are_refused_before_any_work(model, tmp_path):
    for bad in ({"batch_sizes": ()}, {"batch_sizes": (0, 4)}, {"precision": "fp8"}, {"budget_s": 0},
                {"candidates": ("tensorrt",)}, {"precision": "fp16"}):
        with pytest.raises(InvalidArgumentError):
            build_engine(model, tmp_path / "e", **dict(BUILD, **bad))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="not an? engine|engine"):
        build_engine(model, tmp_path / "taken", **BUILD)
    assert not (tmp_path / "e").exists()


def test_cuda_build_without_a_gpu_fails_clearly_and_leaves_validated_onnx(model, tmp_path):
    pytest.importorskip("onnxruntime")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    path = tmp_path / "engine"
    with pytest.raises(BackendUnavailableError, match="no CUDA device.*validated with ONNX Runtime"):
        build_engine(model, path, **dict(BUILD, device="cuda", candidates=None))
    assert (path / "onnx" / "denoiser.onnx").is_file()
    with pytest.raises(MissingFileError, match="only the ONNX export"):
        load_engine(path, model)
    code = cli.main(["build-engine", "--preset", "tiny", "--device", "cuda", "--batch-sizes", "1",
                     "-o", str(tmp_path / "cli")])
    assert code == 2 and (tmp_path / "cli" / "onnx" / "denoiser.onnx").is_file()
    # An fp16 build also leaves the fp16 graph TensorRT would build its plan from, validated too.
    with pytest.raises(BackendUnavailableError, match="denoiser-fp16.onnx.*validated with ONNX Runtime"):
        build_engine(model, tmp_path / "fp16", **dict(BUILD, device="cuda", precision="fp16", candidates=None))
    assert {p.name for p in (tmp_path / "fp16" / "onnx").iterdir()} == {"denoiser.onnx", "denoiser-fp16.onnx"}


def test_cli_builds_describes_and_generates(model, db, tmp_path, capsys):
    model_dir = model.save(tmp_path / "model")
    engine_dir = tmp_path / "engine"
    args = ["build-engine", "--model", str(model_dir), "--batch-sizes", "1,2", "--budget", "2",
            "--candidates", *FAST, "-o", str(engine_dir)]
    assert cli.main(args) == 0
    assert cli.main(args) == 0 and "up to date" in capsys.readouterr().out
    assert cli.main(["info", "--engine", str(engine_dir)]) == 0
    text = capsys.readouterr().out
    assert "batch 1 (4 rows)" in text and "per-layer tactics" in text
    assert "    in_conv: 4: " in text and "; 8: " in text  # each layer's choice per bucket
    assert cli.main(["generate", "--model", str(model_dir), "--db", str(db.path), "--engine", str(engine_dir), "-n", "2",
                     "--sampler", "ddim", "--steps", "3", "--no-progress", "-o", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert cli.main(["generate", "--model", str(model_dir), "--db", str(db.path), "--engine", str(engine_dir),
                     "--backend", "torch", "-o", str(tmp_path / "g2.png")]) == 2


# --------------------------------------------------------------------------- tactics


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_every_chosen_tactic_is_within_tolerance_and_the_network_matches(model, precision):
    rows = 2 * model.config.n_blocks
    inputs = _step_inputs(model, rows)
    table = tune(model, precision, {rows: inputs}, seconds_per_candidate=0.001)
    for layer, per_rows in table.layers.items():
        record = per_rows[str(rows)]
        assert record["candidates"][record["chosen"]]["excess"] <= 1.0, layer
        assert record["chosen"] == min((c for c, r in record["candidates"].items() if r["excess"] <= 1.0),
                                       key=lambda c: record["candidates"][c]["ms"])
    again = TacticTable.from_dict(json.loads(json.dumps(table.to_dict())))
    out = TunedBackend(model, again).forward_hoisted(*inputs)
    assert_close(out, model.unet.forward_hoisted(*inputs), "engine_fp32" if precision == "fp32" else "bf16_eps")


@pytest.mark.parametrize("conv,size", [
    (nn.Conv2d(12, 10, 3, padding=1), 2),             # a 3x3 conv on a 2x2 map
    (nn.Conv2d(12, 10, 3, stride=2, padding=1), 4),   # the downsampling to 2x2
    (nn.ConvTranspose2d(12, 10, 4, 2, 1), 2),         # the upsampling from 2x2
    (nn.Conv2d(12, 10, 1, bias=False), 1),            # one pixel, no bias
])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_dense_map_convolution_matches_the_layer_and_refuses_large_maps(conv, size, dtype):
    torch.manual_seed(0)
    x = torch.randn(5, 12, size, size).contiguous(memory_format=torch.channels_last)
    dense = DenseMapConv(conv, dtype)
    assert dense.applies_to(x)
    out = dense(x.to(dtype))
    assert out.dtype == dtype and out.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close(out.float(), conv(x.to(dtype).float()), "tactic_fp32" if dtype == torch.float32 else "bf16_eps")
    large = torch.randn(1, 12, 8, 8)
    assert not dense.applies_to(large)
    with pytest.raises(InvalidArgumentError, match="dense-map"):
        dense(large.to(dtype))


def test_the_dense_map_convolution_is_timed_on_tiny_maps_only():
    model = make_preset_model("tiny")
    rows = model.config.n_blocks
    table = tune(model, "fp32", {rows: _step_inputs(model, rows)}, seconds_per_candidate=0.001)
    timed = {name for name, per_rows in table.layers.items() if "dense_map" in per_rows[str(rows)]["candidates"]}
    # tiny: 8x8 blocks, 4x4 after one downsampling, 2x2 in the middle
    assert {"mid_res1.conv1", "mid_res2.conv2", "down.1.downsample", "up.0.upsample"} <= timed
    assert not timed & {"in_conv", "down.0.res1.conv1", "up.1.upsample", "down.1.res1.conv1"}
    for name in timed:
        assert table.layers[name][str(rows)]["candidates"]["dense_map"]["excess"] <= 1.0, name


def test_each_bucket_times_its_splits_into_smaller_buckets_and_a_split_run_matches(model):
    p = model.config.n_blocks
    buckets = {rows: _step_inputs(model, rows) for rows in (p, 2 * p)}
    table = tune(model, "fp32", buckets, seconds_per_candidate=0.001)
    assert set(table.calls[str(2 * p)]["ms"]) == {str(2 * p), str(p)}  # whole, or two calls of the smaller bucket
    assert set(table.calls[str(p)]["ms"]) == {str(p)}
    table.calls[str(2 * p)]["chosen"] = p  # force the split: it must give the same network
    split = TunedBackend(model, table).forward_hoisted(*buckets[2 * p])
    assert_close(split, model.unet.forward_hoisted(*buckets[2 * p]), "engine_fp32")


def test_a_tactic_table_of_another_network_is_refused(model):
    rows = model.config.n_blocks
    table = tune(model, "fp32", {rows: _step_inputs(model, rows)}, seconds_per_candidate=0.001)
    table.layers["no.such.layer"] = table.layers.pop(next(iter(table.layers)))
    with pytest.raises(InvalidArgumentError, match="another network"):
        apply_tactics(model, table)


# --------------------------------------------------------------------------- peers as candidates


@pytest.mark.parametrize("name", ["openvino", pytest.param("torch_compile", marks=pytest.mark.slow), "onnxruntime"])
def test_peer_backends_match_the_eager_module(model, name):
    from rissole_trt.runtime import registry

    ok, reason = registry.get(name).available("cpu", "fp32")
    if not ok:
        pytest.skip(reason)
    backend = registry.build(name, model, "fp32")
    inputs = _step_inputs(model, model.config.n_blocks)
    assert_close(backend.forward_hoisted(*inputs), model.unet.forward_hoisted(*inputs), "engine_fp32")


# --------------------------------------------------------------------------- GPU runtimes (skip here)


@pytest.mark.gpu
def test_cuda_graph_backend_matches_eager_on_a_gpu(model):
    from rissole_trt.runtime.cuda_graph_backend import CudaGraphBackend

    gpu = RissoleModel.from_reference(**paths("ref_addpos_")).cuda().eval()
    backend = CudaGraphBackend(gpu, "fp32")
    for rows in (4, 8, 4):  # a new shape captures, a seen one replays
        inputs = tuple(t.cuda() for t in _step_inputs(model, rows, seed=rows))
        assert_close(backend.forward_hoisted(*inputs).cpu(), gpu.unet.forward_hoisted(*inputs).cpu(), "engine_fp32")
    assert len(backend.steps.graphs) == 2


# Named, not "every candidate": torch.compile's inductor compile is the GPU check's largest unknown,
# so it is built in its own test (and stage of scripts/gpu_stages.py, with its own time limit).
CUDA_FAST = ("cuda_graph", "torch", "eager")


@pytest.mark.gpu
@pytest.mark.parametrize("candidates", [CUDA_FAST, ("torch_compile", "eager")], ids=["fast", "torch_compile"])
def test_cuda_engine_build_and_images(model, db, tmp_path, candidates):
    gpu = RissoleModel.from_reference(**paths("ref_addpos_")).cuda().eval()
    sizes = BUILD["batch_sizes"] if candidates == CUDA_FAST else (2,)  # one compile: the size generated below
    manifest = build_engine(gpu, tmp_path / "engine",
                            **dict(BUILD, device="cuda", batch_sizes=sizes, candidates=candidates))
    assert manifest["device"]["type"] == "cuda"
    assert all(set(bucket["candidates"]) == set(candidates) for bucket in manifest["buckets"])
    kwargs = dict(n=2, seed=1, sampler="ddim", steps=4, batch_size=2, progress=False)
    eager = Engine(gpu, db, device="cuda", backend="eager").generate(**kwargs)
    assert_close(Engine(gpu, db, device="cuda", engine=tmp_path / "engine").generate(**kwargs), eager, "images_uint8")


@pytest.mark.trt
@pytest.mark.parametrize("precision,tolerance", [("fp32", "engine_fp32"), ("fp16", "fp16_eps")])
def test_tensorrt_backend_matches_eager(model, precision, tolerance):
    from rissole_trt.runtime.tensorrt_backend import TensorRTBackend

    gpu = RissoleModel.from_reference(**paths("ref_addpos_")).cuda().eval()
    backend = TensorRTBackend(gpu, precision, buckets=[4, 8])
    inputs = tuple(t.cuda() for t in _step_inputs(model, 8))
    first = backend.forward_hoisted(*inputs)
    assert_close(first.cpu(), gpu.unet.forward_hoisted(*inputs).cpu(), tolerance)
    # one timestep per row (time_rows = rows) through the same profile; the first result is not overwritten
    per_row = inputs[:2] + (gpu.unet.embed_time(torch.arange(8, device="cuda") * 100),) + inputs[3:]
    assert_close(backend.forward_hoisted(*per_row).cpu(), gpu.unet.forward_hoisted(*per_row).cpu(), tolerance)
    assert_close(first.cpu(), gpu.unet.forward_hoisted(*inputs).cpu(), tolerance)


# --------------------------------------------------------------------------- the bench


def test_bench_times_the_engine_beside_a_peer_and_reports_the_ratio(built, model, tmp_path):
    pytest.importorskip("onnxruntime")
    from rissole_trt.bench import BenchOptions, format_report, run_bench

    model_dir = model.save(tmp_path / "model")
    options = BenchOptions(preset=None, model=str(model_dir), baseline=None, backends=("onnxruntime",),
                           precisions=("fp32",), samplers=("ddim:3",), images=1, timing_steps=2, repeats=1,
                           budget_s=2.0, threads=1, db_size=50, psnr_images=0, peak_time=0.05, engine=str(built[0]))
    report = run_bench(options, log=lambda _: None)
    kinds = {v["name"]: v for v in report["variants"]}
    assert set(kinds) == {"engine fp32", "onnxruntime fp32"}
    (ratio,) = report["peers"]
    assert ratio["ours"] == "engine fp32" and ratio["fastest_peer"] == "onnxruntime fp32"
    assert ratio["speedup"] == pytest.approx(kinds["onnxruntime fp32"]["ms_per_call"] / kinds["engine fp32"]["ms_per_call"])
    assert "vs the fastest peer onnxruntime fp32" in format_report(report)


def test_a_bf16_engine_skips_eager_and_stays_within_the_bf16_tolerance(model, tmp_path):
    manifest = build_engine(model, tmp_path / "engine", **dict(BUILD, precision="bf16", batch_sizes=(1,)))
    (bucket,) = manifest["buckets"]
    assert bucket["candidates"]["eager"] == {"skipped": "serves fp32, not bf16"}
    assert bucket["speedup_vs_eager"] is None and bucket["chosen"] in ("tuned", "torch")
    engine = load_engine(tmp_path / "engine", model)
    inputs = _step_inputs(model, 3)
    assert_close(engine.forward_hoisted(*inputs), model.unet.forward_hoisted(*inputs), "bf16_eps")
    assert "eager" not in engine.describe()[0]

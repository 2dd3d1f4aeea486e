"""The runtime seam: one registry chooses backends, one spec describes the per-step inputs, and the
public API imports the way users write it."""
from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import rissole_trt
from rissole_trt.builder import build_database
from rissole_trt.engine import Engine
from rissole_trt.errors import BackendUnavailableError, NonFiniteError, RissoleError
from rissole_trt.models import RissoleModel
from rissole_trt.runtime import Backend, Capabilities, registry
from rissole_trt.runtime.spec import step_spec

from reference_fixtures import load_io, paths
from synthetic import smooth_images
from tolerances import assert_close

PACKAGE = Path(rissole_trt.__file__).resolve().parent


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    return RissoleModel.from_reference(**paths("ref_addpos_"))


def test_public_api_imports_lazily_as_users_write_it():
    code = ("import sys, rissole_trt\n"
            "assert 'torch' not in sys.modules, 'import rissole_trt loaded torch'\n"
            "names = ['Engine', 'GenerationPlan', 'RissoleModel', 'Database', 'build_database', 'RissoleError',\n"
            "         'DatabaseError', 'BackendUnavailableError', 'NonFiniteError', 'TrainingDiverged']\n"
            "missing = [n for n in names if not hasattr(rissole_trt, n)]\n"
            "assert not missing, missing\n"
            "assert set(names) <= set(rissole_trt.__all__)\n"
            "print(rissole_trt.Engine.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "rissole_trt.engine.pipeline"


def test_generate_takes_its_options_by_keyword():
    for method in (Engine.generate, Engine.plan):
        params = list(inspect.signature(method).parameters.values())[2:]
        assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params), method


def test_every_user_error_is_a_rissole_error_with_the_conventional_base():
    from rissole_trt import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), RissoleError), name
    assert issubclass(errors.DatabaseError, ValueError) and issubclass(errors.OutOfRangeError, IndexError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(errors.TrainingDiverged, RuntimeError)


def test_only_the_registry_builds_backends():
    """No module outside rissole_trt/runtime constructs a backend class or picks one by name."""
    built = re.compile(r"\b(TorchBackend|OnnxRuntimeBackend|EagerBackend)\(")
    offenders = [str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py")
                 if "runtime" not in f.relative_to(PACKAGE).parts and built.search(f.read_text())]
    assert offenders == []


def test_fp16_is_tensorrt_on_cuda_only_and_is_refused_elsewhere_with_the_reason():
    from rissole_trt.runtime.torch_backend import precision_dtype, precision_native

    assert precision_dtype("fp16") == torch.float16
    assert precision_native("fp16", "cuda") and not precision_native("fp16", "cpu")
    with pytest.raises(BackendUnavailableError, match=r"no backend can run fp16 on cpu: torch \(serves fp32, bf16"):
        registry.select("auto", "cpu", "fp16")
    with pytest.raises(BackendUnavailableError, match="backend 'tensorrt' cannot run fp16 on cpu: runs on cuda"):
        registry.select("tensorrt", "cpu", "fp16")
    assert "tensorrt" in [name for name, b in registry.backends().items() if "fp16" in b.capabilities.precisions]


class _Missing(Backend):
    """A backend whose package is missing (never built)."""

    name = "fast"
    description = "a backend whose package is missing"
    capabilities = Capabilities(devices=("cpu",), precisions=("fp32",))

    @classmethod
    def probe(cls):
        return False, "package 'fast' is not installed"

    def forward_hoisted(self, *inputs):
        raise AssertionError("never built")


def test_auto_picks_by_the_documented_order_and_says_what_it_passed_over(monkeypatch):
    assert registry.select("auto", "cpu", "fp32").name == registry.AUTO_ORDER["cpu"][0]
    table = {"fast": _Missing, **registry.backends()}
    monkeypatch.setattr(registry, "backends", lambda: table)
    monkeypatch.setitem(registry.AUTO_ORDER, "cpu", ("fast", "torch", "eager"))
    with pytest.warns(UserWarning, match=r"picked 'torch'.*fast \(package 'fast' is not installed\)"):
        assert registry.select("auto", "cpu", "fp32").name == "torch"
    with pytest.raises(BackendUnavailableError, match="package 'fast' is not installed"):
        registry.select("fast", "cpu", "fp32")
    with pytest.raises(RissoleError, match="unknown backend 'tensorrt-llm'"):
        registry.select("tensorrt-llm", "cpu", "fp32")
    with pytest.raises(BackendUnavailableError, match="runs on cpu, not cuda"):
        registry.select("onnxruntime", "cuda", "fp32")


@pytest.mark.parametrize("name", ["eager", "torch", "onnxruntime", "openvino"])
def test_every_registered_backend_gives_the_eager_eps(model, name):
    ok, reason = registry.get(name).available("cpu", "fp32")
    if not ok:
        pytest.skip(reason)
    io = load_io("ref_addpos_")
    backend = registry.build(name, model, "fp32")
    assert backend.name == name and backend.precision == "fp32" and backend.native
    got = backend.denoiser(io["cond"], io["pos"])(io["x"], io["t"])
    assert_close(got, model.denoiser(io["cond"], io["pos"])(io["x"], io["t"]),
                 "onnx_fp32" if name == "onnxruntime" else "fp32_reorder")


@pytest.mark.parametrize("prefix", ["ref_add_", "ref_addpos_"])
def test_onnx_graph_reads_its_names_and_axes_from_the_spec(prefix, tmp_path):
    onnx = pytest.importorskip("onnx")
    from rissole_trt.runtime.onnx_export import export_denoiser_onnx

    model = RissoleModel.from_reference(**paths(prefix))
    spec = step_spec(model)
    graph = onnx.load(str(export_denoiser_onnx(model, tmp_path / "d.onnx"))).graph

    def dims(value):
        return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)

    assert [i.name for i in graph.input] == spec.input_names
    assert [o.name for o in graph.output] == [spec.output.name]
    for value, tensor in zip(list(graph.input) + list(graph.output), spec.inputs + (spec.output,)):
        assert dims(value) == tensor.shape, tensor.name
    # The one-row time bias and the n-row inputs have axes named apart (TensorRT checks equal names).
    assert dict(zip(spec.input_names, spec.inputs))["time_bias"].shape[0] == "time_rows"
    assert ("pos_bias" in spec.input_names) == (model.unet.pos_embed is not None)


def test_non_finite_weights_stop_generation_naming_the_step(model, tmp_path):
    db = build_database(model, smooth_images(8), tmp_path / "db", progress=False)
    broken = RissoleModel.from_reference(**paths("ref_addpos_"))
    with torch.no_grad():
        broken.unet.out_conv.bias[0] = float("nan")
    engine = Engine(broken, db, device="cpu", backend="eager")
    with pytest.raises(NonFiniteError, match=r"timestep 999 for images \[0, 1\]"):
        engine.generate(2, sampler="ddim", steps=3, progress=False)
    assert np.isfinite(Engine(model, db, device="cpu").generate(1, sampler="ddim", steps=2, progress=False)).all()


def test_one_registry_answers_every_purpose_from_declared_capabilities():
    def names(device, purpose, precision="fp32", conditioning="add"):
        return [c.name for c in registry.candidates(device, precision, conditioning, purpose)]

    assert names("cpu", "run") == list(registry.AUTO_ORDER["cpu"])
    assert names("cuda", "run", conditioning="xattn") == list(registry.AUTO_ORDER["cuda:xattn"])
    cpu_build, cuda_build = names("cpu", "build"), names("cuda", "build")
    assert cpu_build[0] == "tuned" and {"onnxruntime", "openvino", "torch_compile"} <= set(cpu_build)
    assert {"triton", "tensorrt", "cuda_graph", "torch"} <= set(cuda_build) and "tuned" not in cuda_build
    assert set(names("cpu", "peer")) == {"eager", "torch_compile", "onnxruntime", "openvino"}
    for name, backend in registry.backends().items():  # each module declares its name, description, capabilities
        assert backend.name == name and backend.description
        assert set(backend.capabilities.devices) <= {"cpu", "cuda"}
    # availability says why: the precision a backend does not serve, a missing GPU
    eager = next(c for c in registry.candidates("cpu", "bf16", "add", "build") if c.name == "eager")
    assert not eager.available and eager.reason == "serves fp32, not bf16"
    if not torch.cuda.is_available():
        gpu_only = [c for c in registry.candidates("cuda", "fp32", "add", "build")
                    if c.name in ("cuda_graph", "triton")]
        assert len(gpu_only) == 2 and all(not c.available and c.reason for c in gpu_only)
    with pytest.raises(BackendUnavailableError, match="runs only inside a built engine"):
        registry.select("tuned", "cpu", "fp32")
    with pytest.raises(RissoleError, match="unknown purpose"):
        registry.candidates("cpu", "fp32", "add", "serve")


def test_a_built_backend_states_its_capabilities_as_attributes(model):
    torch_backend = registry.build("torch", model, "fp32")
    assert (torch_backend.captures_loop, torch_backend.reads_codes, torch_backend.fused_step) == (False, False, False)
    assert torch_backend.loop_sampler(4) is None
    with pytest.raises(RissoleError, match="does not read neighbours through their codes"):
        torch_backend.code_denoiser(None, None, None)

"""The ONNX Runtime backend matches the torch denoiser (the graph TensorRT will consume, checked on the CPU)."""
from __future__ import annotations

import pytest

from rissole_trt.builder import build_database
from rissole_trt.engine import Engine
from rissole_trt.models import RissoleModel

from reference_fixtures import load_io, paths
from synthetic import smooth_images
from tolerances import assert_close

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from rissole_trt.runtime.onnx_export import export_denoiser_onnx  # noqa: E402
from rissole_trt.runtime.onnxruntime_backend import OnnxRuntimeBackend  # noqa: E402


@pytest.mark.parametrize("prefix", ["ref_add_", "ref_addpos_"])
def test_onnxruntime_denoiser_matches_torch(prefix, tmp_path):
    model = RissoleModel.from_reference(**paths(prefix))
    io = load_io(prefix)
    backend = OnnxRuntimeBackend(model, onnx_path=export_denoiser_onnx(model, tmp_path / "denoiser.onnx"))
    rows = dict(cond=io["cond"], pos=io["pos"] if model.unet.pos_embed is not None else None)
    ours, reference = backend.denoiser(**rows), model.denoiser(**rows)
    for t in (0, 500, 999, io["t"]):  # shared and per-row timesteps
        assert_close(ours(io["x"], t), reference(io["x"], t), "onnx_fp32")
    # And against the authors' output itself.
    assert_close(ours(io["x"], io["t"]), io["eps"], "fp32_fixture")


def test_engine_with_onnxruntime_gives_the_torch_images(tmp_path):
    model = RissoleModel.from_reference(**paths("ref_addpos_"))
    db = build_database(model, smooth_images(12), tmp_path / "db", progress=False)
    kwargs = dict(n=3, seed=2, sampler="ddim", steps=6, batch_size=2, progress=False)
    torch_images = Engine(model, db, device="cpu").generate(**kwargs)
    ort_images = Engine(model, db, device="cpu", backend="onnxruntime").generate(**kwargs)
    # Same arithmetic up to float32 rounding, after decoding.
    assert_close(torch_images, ort_images, "images_uint8")


@pytest.mark.parametrize("prefix", ["ref_add_", "ref_addpos_"])
def test_the_fp16_graph_for_tensorrt_keeps_norms_and_softmax_in_fp32_and_matches(prefix, tmp_path):
    import collections

    import onnx

    model = RissoleModel.from_reference(**paths(prefix))
    path = export_denoiser_onnx(model, tmp_path / "denoiser-fp16.onnx", "fp16")
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    by_op = collections.defaultdict(set)
    for node in graph.node:
        if node.input:  # (Constant nodes have none)
            by_op[node.op_type].add(types.get(node.input[0]))
    assert by_op["InstanceNormalization"] == {fp32}  # every GroupNorm in float32
    assert by_op["Softmax"] <= {fp32}
    assert fp16 in by_op["Conv"]  # the convolutions in half precision
    assert {types[v.name] for v in [*graph.input, *graph.output]} == {fp32}  # float32 at the edges
    io = load_io(prefix)
    backend = OnnxRuntimeBackend(model, onnx_path=path)
    rows = dict(cond=io["cond"], pos=io["pos"] if model.unet.pos_embed is not None else None)
    assert_close(backend.denoiser(**rows)(io["x"], io["t"]), model.denoiser(**rows)(io["x"], io["t"]), "fp16_eps")

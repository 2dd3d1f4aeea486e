"""The per-step UNet (``forward_hoisted``) exports to ONNX with a dynamic batch and matches torch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from rissole_trt.models import RissoleModel

from reference_fixtures import load_io, paths

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class _PerStep(torch.nn.Module):
    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, x, cond_feat, time_bias, pos_bias):
        return self.unet.forward_hoisted(x, cond_feat, time_bias, pos_bias)


def test_forward_hoisted_exports_to_onnx(tmp_path):
    model = RissoleModel.from_reference(**paths("ref_addpos_"))
    unet, io = model.unet, load_io("ref_addpos_")
    with torch.no_grad():
        cond_feat, pos_bias = unet.condition(io["cond"]), unet.embed_pos(io["pos"])
        time_table = unet.embed_time(torch.arange(model.config.diffusion.n_steps))
    names = ["x", "cond_feat", "time_bias", "pos_bias"]
    path = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter
        torch.onnx.export(
            _PerStep(unet).eval(), (io["x"], cond_feat, time_table[io["t"]], pos_bias), str(path),
            dynamo=False, opset_version=17, input_names=names, output_names=["eps"],
            dynamic_axes={name: {0: "n"} for name in names + ["eps"]},
        )
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # Per-row timesteps (the fixture's), then 2 rows sharing one timestep (time_bias broadcast).
    for rows, time_bias, expected in [
        (slice(None), time_table[io["t"]], io["eps"]),
        (slice(0, 2), time_table[500:501], None),
    ]:
        feeds = {"x": io["x"][rows], "cond_feat": cond_feat[rows], "time_bias": time_bias, "pos_bias": pos_bias[rows]}
        out = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
        if expected is None:
            with torch.no_grad():
                expected = unet.forward_hoisted(*feeds.values())
        np.testing.assert_allclose(out, expected.numpy(), rtol=0, atol=1e-4)
    assert not unet.training

"""The TensorRT denoiser backend: the per-step UNet's ONNX graph built into a TensorRT plan.

Written against TensorRT's documented Python API (``tensorrt`` >= 10); TensorRT cannot be
installed in this project's workplace, so this module is untested here: its tests are marked
``trt`` and skip with that reason. What it does: parse the ONNX file (the graph whose dynamic axes
``rows`` and ``time_rows`` are named apart, :mod:`rissole_trt.runtime.spec`) into a strongly typed
network, whose layer precisions are the graph's own types: fp32 from the fp32 export, fp16 from the
fp16 export (:func:`~rissole_trt.runtime.onnx_export.export_denoiser_onnx`: fp16 with every
GroupNorm and the attention in float32; inputs and output float32 either way). bf16 plans are not
built: ONNX's Conv takes bf16 only from opset 22, which neither torch's TorchScript exporter nor ONNX
Runtime's CPU kernels (our check of the graph) reach. Then one optimisation profile per bucket
(``rows`` fixed at the bucket's rows; ``time_rows`` from 1, the samplers' shared timestep, up to
``rows``; a call of other rows is padded up to the next bucket or split), TF32 off for fp32 plans, the
build with the timing cache kept beside the plan, and runs with ``execute_async_v3``
on torch's current stream, from and into buffers the backend owns (allocated and bound once per
bucket, as TensorRT's demos do).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..defaults import DEFAULT_BATCH_SIZES
from ..errors import BackendUnavailableError, MissingFileError
from ..models.rissole import RissoleModel
from ..windows import rows_per_image
from .backend import TRT_CACHE, TRT_PLAN, Artifacts, Capabilities
from .base import PerStepBackend, run_in_buckets
from .spec import step_spec

#: Plan precisions (strongly typed: from the exported graph's types).
PRECISIONS = ("fp32", "fp16")


def build_plan(onnx_path: Path, plan_path: Path, timing_cache_path: Path, spec, buckets: list[int],
               precision: str) -> bytes:
    """Build (and write) a TensorRT plan with one optimisation profile per bucket of rows."""
    import tensorrt as trt

    from ..atomic import write_bytes

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp32":  # TensorRT allows TF32 for fp32 layers by default (Ampere on): 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    cache = config.create_timing_cache(timing_cache_path.read_bytes() if timing_cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    for rows in buckets:
        profile = builder.create_optimization_profile()
        for tensor in spec.inputs:
            # time_rows is 1 (one timestep for every row, the samplers' case) up to rows (one per row)
            shared_time = tensor.concrete({"rows": rows, "time_rows": 1})
            profile.set_shape(tensor.name, shared_time, shared_time, tensor.concrete({"rows": rows, "time_rows": rows}))
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BackendUnavailableError("TensorRT failed to build the plan (see its log above)")
    write_bytes(plan_path, bytes(plan))
    write_bytes(timing_cache_path, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


class TensorRTBackend(PerStepBackend):
    """Runs a TensorRT plan of ``model``'s per-step UNet; one execution context per bucket."""

    name = "tensorrt"
    description = "TensorRT plan of the per-step ONNX graph, one profile per bucket (untested: no TensorRT here)"
    capabilities = Capabilities(devices=("cuda",), precisions=PRECISIONS, needs_artifacts=("onnx",))

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        try:
            import tensorrt
        except ImportError:
            return False, "TensorRT is not installed (pip install tensorrt on a CUDA machine)"
        if not torch.cuda.is_available():
            return False, "torch sees no CUDA device"
        return True, f"tensorrt {tensorrt.__version__}"

    @classmethod
    def from_artifacts(cls, model: RissoleModel, precision: str, artifacts: Artifacts) -> "TensorRTBackend":
        """The engine's plan; a build makes it in its temporary directory (a loaded engine without
        its plan is refused, never completed outside the atomic build)."""
        root, rows = artifacts.root, list(artifacts.rows)
        if not (root / TRT_PLAN).is_file():
            if not artifacts.building:
                raise MissingFileError(f"engine {root} chose TensorRT but lacks {TRT_PLAN}; rebuild it with "
                                       "rissole-trt build-engine --rebuild")
            (root / TRT_PLAN).parent.mkdir(exist_ok=True)
            build_plan(artifacts.onnx(precision), root / TRT_PLAN, root / TRT_CACHE, step_spec(model), rows, precision)
        return cls(model, precision, plan_path=root / TRT_PLAN, buckets=rows)

    def __init__(self, model: RissoleModel, precision: str = "fp32", *, plan_path: str | os.PathLike | None = None,
                 buckets: list[int] | None = None) -> None:
        ok, reason = self.probe()
        if not ok:
            raise BackendUnavailableError(f"backend 'tensorrt': {reason}")
        if precision not in PRECISIONS:
            raise BackendUnavailableError(f"the tensorrt backend builds {' and '.join(PRECISIONS)} plans, not {precision}")
        import tensorrt as trt

        super().__init__(model, precision)
        self.spec = step_spec(model)
        per_image = rows_per_image(model.config.unet.block_factor, model.config.block_size, model.default_overlap)
        self.buckets = list(buckets or [per_image * b for b in DEFAULT_BATCH_SIZES])  # rows as the model samples
        if plan_path is None:  # a private build, as the other registered backends do
            import tempfile

            from .onnx_export import export_denoiser_onnx

            self._tmp = tempfile.TemporaryDirectory(prefix="rissole-trt-")
            root = Path(self._tmp.name)
            build_plan(export_denoiser_onnx(model, root / "denoiser.onnx", precision), root / "denoiser.plan",
                       root / "timing.cache", self.spec, self.buckets, precision)
            plan_path = root / "denoiser.plan"
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(Path(plan_path).read_bytes())
        self.bindings: dict[int, _Bindings] = {}

    def _run_profile(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """One call at exactly a bucket's rows, through that profile's context and buffers."""
        feeds = self.spec.feeds(*inputs)
        rows = feeds["x"].shape[0]
        if rows not in self.bindings:
            self.bindings[rows] = _Bindings(self.engine, self.spec, self.buckets.index(rows), rows, self.device)
        return self.bindings[rows].run(feeds)

    @torch.no_grad()
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        return run_in_buckets(self.buckets, self._run_profile, *inputs)  # any rows: padded or split


class _Bindings:
    """One bucket's execution context and the buffers it reads and writes, allocated once at the
    bucket's largest shapes and bound to the context once (TensorRT reads fixed addresses)."""

    def __init__(self, engine, spec, profile: int, rows: int, device: torch.device) -> None:
        stream = torch.cuda.current_stream().cuda_stream
        self.context = engine.create_execution_context()
        self.context.set_optimization_profile_async(profile, stream)
        self.spec, self.rows = spec, rows
        largest = {"rows": rows, "time_rows": rows}
        self.inputs = {t.name: torch.empty(t.concrete(largest), device=device) for t in spec.inputs}
        self.output = torch.empty(spec.output.concrete(largest), device=device)
        for name, buffer in self.inputs.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.context.set_tensor_address(spec.output.name, self.output.data_ptr())
        self.time_rows = None

    def run(self, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        time_rows = feeds["time_bias"].shape[0]
        if time_rows != self.time_rows:  # 1 in sampling; rows when every row has its own timestep
            for tensor in self.spec.inputs:
                self.context.set_input_shape(tensor.name, tensor.concrete({"rows": self.rows, "time_rows": time_rows}))
            self.time_rows = time_rows
        for name, value in feeds.items():
            self.inputs[name][:value.shape[0]].copy_(value)
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise BackendUnavailableError("TensorRT execution failed")
        return self.output.clone()  # the next call overwrites the owned buffer


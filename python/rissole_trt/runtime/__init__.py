"""Denoiser backends behind one seam.

:mod:`.registry` chooses and builds them (the only place that does); :mod:`.spec` describes the
per-step network's inputs once for all of them. Registered: ``eager`` (the plain module),
``torch`` (prepacked, channels-last, fp32 or bf16), ``onnxruntime`` (CPU, ONNX export).
"""
from .registry import AUTO_ORDER, BackendSpec, availability, build, get_spec, select, specs
from .spec import StepSpec, TensorSpec, step_spec

__all__ = ["AUTO_ORDER", "BackendSpec", "availability", "build", "get_spec", "select", "specs",
           "StepSpec", "TensorSpec", "step_spec"]

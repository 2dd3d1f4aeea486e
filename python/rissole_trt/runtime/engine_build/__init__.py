"""Built engines (this package): ``rissole-trt build-engine`` -> an engine directory -> ``Engine(..., engine=DIR)``.

The lifecycle of TensorRT's diffusion demo, on every device: **build** once per model and machine
(time the candidates here: every backend the registry offers for building on the device, timed
interleaved per bucket; keep the fastest within the tolerance table), **load** (check that the
engine belongs to this model and this machine), **run** (any row count through the cheapest cover
of buckets by their measured times, :func:`~rissole_trt.runtime.base.cheapest_cover`).

An engine directory holds:

* ``manifest.json``: format version; the model's fingerprint (sha256 of its config and every
  weight); the device (CPU model, ISA flags and threads, or GPU name, compute capability and
  driver); the versions of torch, oneDNN, CUDA, TensorRT, ONNX Runtime and OpenVINO; the precision;
  the buckets, in images, and the rows per image (P blocks, or the 9 windows of a model that samples
  with ``overlap="half"`` by default, as the built-in one does); per bucket every candidate's measured time and error against the eager module, and
  the one chosen;
* ``tactics.json`` (CPU): the per-layer tactic table (:mod:`rissole_trt.runtime.tactics`);
* ``onnx/denoiser.onnx``: the per-step graph (what ONNX Runtime, OpenVINO and TensorRT consume),
  checked with ONNX Runtime against the eager module at build time; for an fp16 CUDA build also
  ``onnx/denoiser-fp16.onnx`` (fp16, norms and softmax in fp32: TensorRT's strongly typed input),
  checked the same way within the fp16 tolerance;
* ``tensorrt/denoiser.plan`` and ``tensorrt/timing.cache`` when TensorRT was a candidate.

A build writes into a temporary directory renamed into place at the end (a killed build leaves no
engine), and the same build run again is a cache hit; ``--rebuild`` replaces an engine and nothing
else (:func:`rissole_trt.outputs.check_output`). The manifest records every file's size and sha256;
loading refuses another model, another device type, another GPU or another TensorRT version with
the reason, and any file the manifest names that lies outside the folder, is missing, or changed
since the build (:func:`~.manifest.check_files`); another CPU model, ISA flags or thread count, or other versions of the libraries whose
kernels it runs (torch, oneDNN, CUDA, and ONNX Runtime / OpenVINO where chosen) only warn (rebuild
with ``--rebuild`` to re-tune): :func:`~.loader.check_machine`.

The package, by job: :mod:`.manifest` (:class:`EngineManifest`, the file records and their check),
:mod:`.candidates` (what a build times), :mod:`.builder` (:func:`build_engine` and its stages),
:mod:`.loader` (:func:`load_engine`, :class:`BuiltEngine`).
"""
from __future__ import annotations

from ...platform import device_fingerprint, versions
from ..backend import TRT_CACHE, TRT_PLAN
from .builder import ENGINE_PRECISIONS, build_engine
from .loader import BuiltEngine, check_machine, load_engine
from .manifest import FORMAT_VERSION, MANIFEST, TACTICS, EngineManifest, check_files, is_engine_dir, read_manifest

__all__ = ["FORMAT_VERSION", "MANIFEST", "TACTICS", "ENGINE_PRECISIONS", "EngineManifest", "build_engine",
           "load_engine", "read_manifest", "BuiltEngine", "check_machine", "check_files", "device_fingerprint",
           "versions", "is_engine_dir", "TRT_CACHE", "TRT_PLAN"]

"""Per-layer tactic selection: what ``rissole-trt build-engine`` does for the CPU.

TensorRT builds a GPU engine by timing candidate kernels ("tactics") for every layer on the target
device. The CPU has the same problem: which convolution algorithm wins depends on the ISA (AVX2,
AVX-512, AMX), the layer's shape and the rows per call. :func:`~.tuner.tune` makes a copy of the model's
block UNet in which every layer that has alternatives is a *tunable* module holding all of them,
runs the copy once per bucket to capture each layer's real input, times every candidate on it, and
keeps the fastest whose output lies within the tolerance table (:mod:`rissole_trt.tolerances`)
of the plain float32 layer. The result is a :class:`TacticTable`; :class:`TunedBackend` runs the
UNet with it, each layer dispatching on its input's row count to the bucket's choice.

Then the **rows per call** (micro-batching): each bucket also runs as several calls of a smaller
bucket's rows (with that bucket's tactics), in case the smaller working set's cache locality
outweighs the per-call overhead on this machine; the fastest split is kept.

Layers are tuned inner first (a block's convolutions before the block), and a composite layer is
timed with its inner layers' choices for that bucket, so each layer's time is the one it will run at.

The package by job: :mod:`.candidates` (every layer's implementations), :mod:`.rewriter` (the UNet
copy whose layers hold their candidates, and applying a table to it), :mod:`.tuner` (the timing
loop), :mod:`.table` (:class:`TacticTable` and its JSON form), :mod:`.backend` (:class:`TunedBackend`).
"""
from __future__ import annotations

from .backend import TunedBackend
from .rewriter import apply_tactics
from .table import TacticTable
from .tuner import layer_tolerance, tune

__all__ = ["TacticTable", "tune", "apply_tactics", "TunedBackend", "layer_tolerance"]

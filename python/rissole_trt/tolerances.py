"""The one table of numerical tolerances: per dtype and kind of comparison, each with its reason.

The tests compare with it (``tests/tolerances.py``) and ``rissole-trt build-engine`` accepts a
candidate implementation only within it, so a tactic the build keeps is one the tests would pass.

Bitwise equality is asserted only where the code guarantees it on every ISA: the same computation
on the same shapes and data (the same plan run twice, a slice of a plan against the full run, a
re-run after resume), or pure data movement (gathers, splits, codes). Between GEMMs or convolutions
of other shapes, other algorithms or other backends, CPUs round differently (AVX2, AVX-512 and AMX
take other oneDNN/MKL kernels), so those comparisons take a tolerance from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Tolerance", "TOLERANCES", "KERNEL_ERROR_FACTOR", "excess"]


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    why: str


TOLERANCES: dict[str, Tolerance] = {
    "bitwise": Tolerance(0.0, 0.0, "same computation on the same shapes, or data movement: exact on every ISA"),
    "fp32_reorder": Tolerance(1e-5, 1e-5, "one fp32 network evaluation, same arithmetic in another summation "
                                          "order (other conv algorithm, batch shape or backend)"),
    "fp32_fixture": Tolerance(1e-4, 0.0, "our fp32 UNet against the authors' fixture, made with another torch on "
                                         "another CPU (observed <= 4e-6)"),
    "fp32_sampled": Tolerance(2e-3, 0.0, "a few sampler steps amplify fp32 reordering differences (3.4e-4 seen "
                                         "after 6 steps on an AVX-512/AMX Xeon)"),
    "onnx_fp32": Tolerance(1e-4, 0.0, "ONNX Runtime's own fp32 kernels against torch's, one evaluation"),
    "tactic_fp32": Tolerance(1e-4, 1e-4, "one layer's fp32 output by another algorithm (im2col GEMM, 1x1 GEMM, "
                                         "sub-pixel, fused attention, Winograd F(2x2,3x3) / F(4x4,3x3), fused "
                                         "GroupNorm + SiLU) against the plain layer"),
    "engine_fp32": Tolerance(1e-4, 1e-3, "a built engine's fp32 per-step network (tactics chained over ~30 layers, "
                                         "or another runtime) against the eager module"),
    "kernel_fp32": Tolerance(1e-5, 1e-5, "a Triton kernel's fp32 result against its torch reference in fp32 "
                                         "(another summation order: online softmax over token tiles)"),
    "kernel_lowp_floor": Tolerance(1e-4, 0.0, "added to flash-attention's rule for fp16/bf16 kernels (error <= "
                                              "KERNEL_ERROR_FACTOR x the low-precision reference's): a floor for "
                                              "results the reference happens to hit exactly"),
    "bf16_eps": Tolerance(5e-2, 5e-2, "bf16 weights and activations (8-bit mantissa) against fp32, one evaluation"),
    "fp16_eps": Tolerance(1e-2, 1e-2, "fp16 weights and activations (11-bit significand), norms and softmax in "
                                      "fp32, against fp32, one evaluation (2.5e-3 seen on values up to 3)"),
    "float64_closed_form": Tolerance(1e-10, 1e-10, "float64 sampler and schedule algebra against closed forms"),
    "float64_roundtrip": Tolerance(1e-6, 0.0, "x0 -> eps -> x0 in float64 divides by sqrt(alpha_bar), ~0.01 near t = T"),
    "images_uint8": Tolerance(2.0, 0.0, "uint8 images of the same plan at another batch size or backend: fp32 "
                                        "reordering moves a pixel across a rounding boundary (<= 1 level seen)"),
}


#: flash-attention's rule for low-precision kernels: the kernel's error against an fp32 reference may be at
#: most this many times the error of the torch reference computed in the same low precision.
KERNEL_ERROR_FACTOR = 2.0


def excess(actual: torch.Tensor, expected: torch.Tensor, kind: str) -> float:
    """How far ``actual`` lies outside the ``kind`` band around ``expected``: the largest
    ``|a - e| / (atol + rtol |e|)`` (<= 1 within tolerance; inf for a non-finite value)."""
    t = TOLERANCES[kind]
    a, e = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(a).all():
        return float("inf")
    bound = t.atol + t.rtol * e.abs()
    diff = (a - e).abs()
    if t.atol == 0 and t.rtol == 0:
        return 0.0 if bool((diff == 0).all()) else float("inf")
    return float((diff / bound).max()) if diff.numel() else 0.0

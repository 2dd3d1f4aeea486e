"""The one table of test tolerances: per dtype and kind of comparison, each with its reason.

Bitwise equality is asserted only where the code guarantees it on every ISA: the same computation
on the same shapes and data (the same plan run twice, a slice of a plan against the full run, a
re-run after resume), or pure data movement (gathers, splits, codes). Between GEMMs or convolutions
of other shapes, other algorithms or other backends, CPUs round differently (AVX2, AVX-512 and AMX
take other oneDNN/MKL kernels), so those comparisons take a tolerance from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


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
    "bf16_eps": Tolerance(5e-2, 5e-2, "bf16 weights and activations (8-bit mantissa) against fp32, one evaluation"),
    "float64_closed_form": Tolerance(1e-10, 1e-10, "float64 sampler and schedule algebra against closed forms"),
    "float64_roundtrip": Tolerance(1e-6, 0.0, "x0 -> eps -> x0 in float64 divides by sqrt(alpha_bar), ~0.01 near t = T"),
    "images_uint8": Tolerance(2.0, 0.0, "uint8 images of the same plan at another batch size or backend: fp32 "
                                        "reordering moves a pixel across a rounding boundary (<= 1 level seen)"),
}


def tol(kind: str) -> dict[str, float]:
    """``atol``/``rtol`` keyword arguments of one table entry."""
    t = TOLERANCES[kind]
    return {"atol": t.atol, "rtol": t.rtol}


def assert_close(actual, expected, kind: str, msg: str | None = None) -> None:
    """torch or numpy arrays equal within the table's ``kind`` entry (exact for ``bitwise``)."""
    t = TOLERANCES[kind]
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), atol=t.atol, rtol=t.rtol,
                                   msg=msg)
    elif kind == "bitwise":
        np.testing.assert_array_equal(actual, expected, err_msg=msg or "")
    else:
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                                   atol=t.atol, rtol=t.rtol, err_msg=msg or "")

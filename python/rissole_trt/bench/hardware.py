"""What the benchmark ran on, and the machine's peak FLOP/s measured on the spot.

The peak is measured, not looked up: a GEMM-shaped matmul (square, ``gemm_size``) and a
conv-shaped convolution (3x3, the CelebA UNet's first level: 256 -> 256 channels on 8x8 maps, a
batch of 64, run the fastest way torch offers: prepacked oneDNN weights, channels-last), each in
fp32 and bf16. A precision's peak is the larger of the two; every configuration's achieved FLOP/s is
reported as a share of its precision's peak.
"""

from __future__ import annotations

import os
import platform
import sys

import torch
from torch import nn

from ..platform import (
    ISA_FLAGS,
    bf16_native,
    cpu_model,
    cpuinfo,
    dist_version,
    isa_flags,
    onednn_version,
    precision_dtype,
    usable_cpus,
)
from ..timing import median, time_calls

__all__ = ["machine_info", "measure_peak", "ISA_FLAGS", "usable_cpus"]


def machine_info(device: torch.device) -> dict:
    """CPU model, cores, ISA flags, frequency, torch build facts, versions, GPU when used."""
    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    hw = {
        "cpu_model": cpu_model(info),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_mhz": float(info["cpu MHz"]) if "cpu MHz" in info else None,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "isa_flags": isa_flags(info),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_bf16_native": bf16_native("cpu"),
        "hypervisor": "hypervisor" in flags,
        "machine": platform.machine(),
        "os": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        hw["gpu"] = {"name": props.name, "memory_gib": props.total_memory / 2**30,
                     "capability": f"{props.major}.{props.minor}", "bf16_native": bf16_native(device)}
    versions = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "onednn": onednn_version(),
        "numpy": dist_version("numpy"),
        "faiss": dist_version("faiss-cpu") or dist_version("faiss-gpu") or dist_version("faiss"),
        "rissole_trt": dist_version("rissole-trt"),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }
    return {"hardware": hw, "versions": versions}


def _gemm(device: torch.device, dtype: torch.dtype, size: int):
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return (lambda: torch.matmul(a, b)), 2 * size**3, [size, size, size]


def _conv(device: torch.device, dtype: torch.dtype, batch: int):
    from ..runtime.torch_backend import PreparedConv, packs_for_onednn  # the fast backend's conv path

    conv = nn.Conv2d(256, 256, 3, padding=1).to(device)
    op = PreparedConv(conv, dtype, packs_for_onednn(device, dtype))
    x = torch.randn(batch, 256, 8, 8, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return (lambda: op(x)), 2 * batch * 256 * 256 * 9 * 64, [batch, 256, 8, 8]


def _measure(make, sizes, device: torch.device, dtype: torch.dtype, min_time: float) -> dict:
    """GFLOP/s of the largest size in ``sizes`` whose first call stays under ~0.25 s (slow,
    emulated dtypes stop at a small size instead of spending minutes), median of the timed calls."""
    import time

    chosen = None
    for size in sizes:
        fn, flops, shape = make(device, dtype, size)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        chosen = (fn, flops, shape)
        if time.perf_counter() - start > 0.25:
            break
    fn, flops, shape = chosen
    with torch.inference_mode():
        times = time_calls(fn, min_time=min_time, min_reps=3, device=device)
    return {"gflops": flops / median(times) / 1e9, "shape": shape, "calls": len(times)}


def measure_peak(device: torch.device, precisions: list[str], min_time: float = 1.0) -> dict:
    """{precision: {"gemm": {...}, "conv": {...}, "peak_gflops": max}} measured now on ``device``."""
    out = {}
    for precision in precisions:
        dtype = precision_dtype(precision)
        gemm = _measure(_gemm, (256, 512, 1024, 2048), device, dtype, min_time)
        conv = _measure(_conv, (4, 16, 64), device, dtype, min_time)
        out[precision] = {"gemm": gemm, "conv": conv, "peak_gflops": max(gemm["gflops"], conv["gflops"])}
    return out

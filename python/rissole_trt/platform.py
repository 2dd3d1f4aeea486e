"""What this machine is: the device a run uses, the CPU's model and ISA flags, which precisions
run natively, the library versions and the fingerprint a built engine is tied to. The one place
these are read; the runtime, the Engine, the bench and the distributed runner ask here."""
from __future__ import annotations

import os
import platform as _platform
import re
from importlib import metadata
from pathlib import Path

import torch

from .defaults import PRECISIONS
from .errors import BackendUnavailableError, InvalidArgumentError

__all__ = ["ISA_FLAGS", "resolve_device", "cpuinfo", "cpu_model", "isa_flags", "usable_cpus", "onednn_version",
           "dist_version", "versions", "device_fingerprint", "precision_dtype", "bf16_native", "precision_native"]

#: /proc/cpuinfo flags that decide CPU matmul/conv speed, in the order printed.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "avx_ne_convert",
             "amx_tile", "amx_bf16", "amx_fp16")
_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.bfloat16, torch.float16)))


def resolve_device(device: str | torch.device, auto: str | None = None) -> torch.device:
    """``device`` as a torch device: ``"auto"`` is ``auto`` when given (a built engine's device, a
    CPU-only runner's), else CUDA when torch sees a GPU and the CPU otherwise; refuses other device
    types and CUDA without a GPU."""
    if str(device) == "auto":
        device = auto or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise InvalidArgumentError(f"unknown device {str(device)!r}; use auto, cpu or cuda[:i]") from error
    if device.type not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device {str(device)!r} is not supported; use auto, cpu or cuda[:i]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError("device 'cuda' was requested but torch sees no CUDA device")
    return device


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def cpu_model(info: dict[str, str] | None = None) -> str:
    info = cpuinfo() if info is None else info
    return info.get("model name") or _platform.processor() or _platform.machine()


def isa_flags(info: dict[str, str] | None = None) -> dict[str, bool]:
    """Each of :data:`ISA_FLAGS`: whether this CPU has it."""
    flags = set((cpuinfo() if info is None else info).get("flags", "").split())
    return {f: f in flags for f in ISA_FLAGS}


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def onednn_version() -> str | None:
    match = re.search(r"MKL-DNN v([\d.]+)", torch.__config__.show())
    return match.group(1) if match else None


def dist_version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None: not installed)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """The runtime versions a built engine depends on (None: not installed)."""
    return {"rissole_trt": dist_version("rissole-trt"), "torch": torch.__version__, "onednn": onednn_version(),
            "cuda": torch.version.cuda, "tensorrt": dist_version("tensorrt"),
            "onnxruntime": dist_version("onnxruntime"), "openvino": dist_version("openvino")}


def device_fingerprint(device: torch.device) -> dict:
    """What a built engine's speed depends on: the CPU model, ISA flags and threads, or the GPU."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
                "driver": getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()}
    info = cpuinfo()
    return {"type": "cpu", "cpu_model": cpu_model(info),
            "isa_flags": sorted(f for f, present in isa_flags(info).items() if present),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def precision_dtype(precision: str) -> torch.dtype:
    """The torch dtype of a precision name; InvalidArgumentError for an unknown one."""
    if precision not in _DTYPES:
        raise InvalidArgumentError(f"unknown precision {precision!r}; choose one of {', '.join(_DTYPES)}")
    return _DTYPES[precision]


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes in bf16 natively (else torch emulates bf16, slowly)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def precision_native(precision: str, device: str | torch.device = "cpu") -> bool:
    """False when ``device`` only emulates ``precision`` (bf16 without bf16 arithmetic; fp16 off CUDA)."""
    dtype = precision_dtype(precision)
    if dtype == torch.bfloat16:
        return bf16_native(device)
    return dtype == torch.float32 or torch.device(device).type == "cuda"

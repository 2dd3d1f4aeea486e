"""What this installation of rissole_trt can do: build information and, for every optional backend,
whether it is available and, if not, why (``rissole-trt info``, ``rissole_trt.info()``)."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Backend:
    """Availability of one optional backend; ``detail`` is the version when available, else the reason."""

    available: bool
    detail: str


def _import(module: str) -> tuple[Any | None, str]:
    """(module, "") when importable, else (None, the reason)."""
    if importlib.util.find_spec(module) is None:
        return None, f"package '{module}' is not installed"
    try:
        return importlib.import_module(module), ""
    except Exception as exc:  # an installed but broken package: report the import error itself
        return None, f"'{module}' is installed but fails to import: {type(exc).__name__}: {exc}"


def _torch_cuda() -> Backend:
    import torch

    if torch.version.cuda is None:
        return Backend(False, f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return Backend(False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device or driver")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Backend(True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")


def _cuda_ops(build: dict[str, Any] | None) -> Backend:
    if build is None:
        return Backend(False, "the compiled core rissole_trt._C failed to import")
    if not build["cuda_compiled"]:
        return Backend(False, "not compiled: rebuild with RISSOLE_CUDA=ON on a machine with nvcc")
    from rissole_trt import _C

    count, error = _C.cuda_device_count()
    archs = "/".join(f"sm_{a}" for a in build["cuda_architectures"])
    if count < 0:
        return Backend(False, f"compiled for CUDA {build['cuda_version']} ({archs}), but no usable GPU: {error}")
    if count == 0:
        return Backend(False, f"compiled for CUDA {build['cuda_version']} ({archs}), but no CUDA device is visible")
    return Backend(True, f"CUDA {build['cuda_version']} ({archs}), {count} device(s)")


def _gpu_package(module: str, torch_cuda: Backend, note: str = "") -> Backend:
    """A package that needs a GPU: installed and importable, and torch sees a CUDA device."""
    mod, reason = _import(module)
    if mod is None:
        return Backend(False, reason + note)
    version = getattr(mod, "__version__", "unknown version")
    if not torch_cuda.available:
        return Backend(False, f"{module} {version} installed, but no CUDA device ({torch_cuda.detail})")
    return Backend(True, f"{module} {version}")


def _triton(torch_cuda: Backend) -> Backend:
    backend = _gpu_package("triton", torch_cuda)
    if not backend.available and backend.detail.startswith("triton "):
        # Installed without a GPU: the kernels still run (slowly) in Triton's interpreter.
        return Backend(False, backend.detail + "; kernels run on CPU tensors with TRITON_INTERPRET=1")
    return backend


def _faiss() -> Backend:
    mod, reason = _import("faiss")
    if mod is None:
        return Backend(False, reason)
    return Backend(True, f"faiss {getattr(mod, '__version__', 'unknown version')} (CPU)")


def _onnxruntime() -> Backend:
    mod, reason = _import("onnxruntime")
    if mod is None:
        return Backend(False, reason + " (pip install 'rissole-trt[onnx]')")
    providers = ", ".join(mod.get_available_providers())
    return Backend(True, f"onnxruntime {mod.__version__}: {providers}")


def info(as_text: bool = False) -> dict[str, Any] | str:
    """Build information and the availability of every optional backend.

    Returns a dict with ``version``, ``python``, ``platform``, ``torch``, ``build`` (the compiled
    core's ``build_info()``, or None with ``build_error`` when it cannot be imported) and ``backends``
    (name -> {available, detail}); with ``as_text=True`` a readable report instead.
    """
    import torch

    from rissole_trt import __version__

    build: dict[str, Any] | None
    try:
        from rissole_trt import _C

        build, build_error = _C.build_info(), None
    except ImportError as exc:
        build, build_error = None, f"{type(exc).__name__}: {exc}"

    torch_cuda = _torch_cuda()
    backends = {
        "cuda_ops": _cuda_ops(build),
        "torch_cuda": torch_cuda,
        "triton": _triton(torch_cuda),
        "tensorrt": _gpu_package(
            "tensorrt",
            torch_cuda,
            note=" (NVIDIA TensorRT 10+ must be installed separately; the torch and ONNX Runtime backends work without it)",
        ),
        "cuvs": _gpu_package("cuvs", torch_cuda, note=" (GPU retrieval: pip install 'rissole-trt[gpu]')"),
        "faiss": _faiss(),
        "onnxruntime": _onnxruntime(),
    }
    from rissole_trt.runtime import AUTO_ORDER, specs

    denoisers = {}
    for name, spec in specs().items():
        ok, detail = spec.available()
        denoisers[name] = {"available": ok, "detail": detail, "devices": list(spec.devices),
                           "precisions": list(spec.precisions), "description": spec.description}
    result: dict[str, Any] = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "build": build,
        "backends": {name: asdict(b) for name, b in backends.items()},
        "denoisers": denoisers,
        "auto_order": {device: list(order) for device, order in AUTO_ORDER.items()},
    }
    if build_error is not None:
        result["build_error"] = build_error
    return format_info(result) if as_text else result


def format_info(result: dict[str, Any]) -> str:
    """Render :func:`info`'s dict as the report ``rissole-trt info`` prints."""
    lines = [
        f"rissole-trt {result['version']}",
        f"python {result['python']} on {result['platform']}, torch {result['torch']}",
        "",
        "build:",
    ]
    build = result["build"]
    if build is None:
        lines.append(f"  compiled core unavailable: {result.get('build_error')}")
    else:
        cuda = (
            f"yes (CUDA {build['cuda_version']}, archs {', '.join(build['cuda_architectures'])})"
            if build["cuda_compiled"]
            else "no"
        )
        lines += [
            f"  compiler        {build['compiler']}, C++{build['cxx_standard']}",
            f"  openmp          {'yes (' + str(build['openmp_max_threads']) + ' threads)' if build['openmp'] else 'no'}",
            f"  cuda kernels    {cuda}",
        ]
    lines += ["", "backends:"]
    width = max(len(name) for name in result["backends"])
    for name, backend in result["backends"].items():
        mark = "yes" if backend["available"] else "no "
        lines.append(f"  {name:<{width}}  {mark}  {backend['detail']}")
    lines += ["", "denoiser backends (Engine(backend=...), --backend):"]
    width = max(len(name) for name in result["denoisers"])
    for name, d in result["denoisers"].items():
        mark = "yes" if d["available"] else "no "
        lines.append(f"  {name:<{width}}  {mark}  {'/'.join(d['devices'])}, {'/'.join(d['precisions'])}: "
                     f"{d['description']} ({d['detail']})")
    lines += [f"  auto on {device}: {' > '.join(order)}" for device, order in result["auto_order"].items()]
    return "\n".join(lines)



def format_engine(manifest: dict[str, Any]) -> str:
    """A built engine's manifest as text: the machine it was tuned on, per bucket what runs it and
    what every candidate measured, and which per-layer tactics won."""
    device = manifest["device"]
    where = (f"{device['cpu_model']} ({', '.join(device['isa_flags']) or 'no listed ISA flags'}; "
             f"{device['threads']} threads)" if device["type"] == "cpu" else f"{device['name']} (sm {device['capability']})")
    lines = [f"engine format {manifest['format_version']}, {manifest['precision']}, built {manifest['built']} on {where}",
             f"model {manifest['model_fingerprint'][:16]}..., buckets (images) {manifest['batch_sizes']} of "
             f"{manifest['rows_per_image']} rows each (overlap {manifest['overlap']}), tolerance '{manifest['tolerance']}'"]
    for bucket in manifest["buckets"]:
        versus = "" if bucket["speedup_vs_eager"] is None else f" ({bucket['speedup_vs_eager']:.2f}x eager)"
        lines.append(f"  batch {bucket['batch_size']} ({bucket['rows']} rows): {bucket['chosen']} "
                     f"{bucket['ms']:.2f} ms per step{versus}")
        for name, result in bucket["candidates"].items():
            if "ms" in result:
                note = "" if result["within_tolerance"] else "  outside tolerance"
                lines.append(f"      {name:<14} {result['ms']:8.2f} ms  max |error| {result['max_abs_error']:.1e}{note}")
            else:
                lines.append(f"      {name:<14} {'skipped: ' + result['skipped'] if 'skipped' in result else 'failed: ' + result['failed']}")
    if manifest.get("tactics"):
        wins = ", ".join(f"{name} x{count}" for name, count in manifest["tactics"]["wins"].items())
        lines.append(f"per-layer tactics (layer x bucket wins): {wins}; every timing in {manifest['tactics']['file']}")
        lines.append("  per layer and bucket (rows): the fastest within tolerance, and by how much it beat the runner-up")
        for layer, per_rows in manifest["tactics"]["layers"].items():
            lines.append(f"    {layer}: " + "; ".join(f"{rows}: {_why(d)}" for rows, d in per_rows.items()))
        splits = ", ".join(f"{rows} rows as calls of {per}" for rows, per in manifest["tactics"]["rows_per_call"].items())
        lines.append(f"rows per call of the tuned network: {splits}")
    return "\n".join(lines)


def _why(decision: dict[str, Any]) -> str:
    """One layer's choice at one bucket, e.g. ``winograd2 0.41 ms (1.32x packed)``."""
    text = f"{decision['chosen']} {decision['ms']:.3g} ms"
    if decision["runner_up"] is not None:
        text += f" ({decision['runner_up_ms'] / decision['ms']:.2f}x {decision['runner_up']})"
    if decision["faster_outside_tolerance"]:
        text += f" [faster but outside tolerance: {', '.join(decision['faster_outside_tolerance'])}]"
    return text

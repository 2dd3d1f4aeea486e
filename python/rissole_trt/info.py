"""What this installation of rissole_trt can do: build information, every optional component
(compiled CUDA kernels, torch's CUDA, cuVS, FAISS) and every registered denoiser backend with its
declared capabilities, each with whether it is available and, if not, why (``rissole-trt info``,
``rissole_trt.info()``). The backends come from :mod:`rissole_trt.runtime.registry` alone."""

from __future__ import annotations

import importlib
import importlib.util
import platform
import sys
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Component:
    """Availability of one optional component; ``detail`` is the version when available, else the reason."""

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


def _torch_cuda() -> Component:
    import torch

    if torch.version.cuda is None:
        return Component(False, f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return Component(False, f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device or driver")
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return Component(True, f"torch {torch.__version__}, CUDA {torch.version.cuda}: {names}")


def _cuda_ops(build: dict[str, Any] | None) -> Component:
    if build is None:
        return Component(False, "the compiled core rissole_trt._C failed to import")
    if not build["cuda_compiled"]:
        return Component(False, "not compiled: rebuild with RISSOLE_CUDA=ON on a machine with nvcc")
    from rissole_trt import _C

    count, error = _C.cuda_device_count()
    archs = "/".join(f"sm_{a}" for a in build["cuda_architectures"])
    if count < 0:
        return Component(False, f"compiled for CUDA {build['cuda_version']} ({archs}), but no usable GPU: {error}")
    if count == 0:
        return Component(False, f"compiled for CUDA {build['cuda_version']} ({archs}), but no CUDA device is visible")
    return Component(True, f"CUDA {build['cuda_version']} ({archs}), {count} device(s)")


def _gpu_package(module: str, torch_cuda: Component, note: str = "") -> Component:
    """A package that needs a GPU: installed and importable, and torch sees a CUDA device."""
    mod, reason = _import(module)
    if mod is None:
        return Component(False, reason + note)
    version = getattr(mod, "__version__", "unknown version")
    if not torch_cuda.available:
        return Component(False, f"{module} {version} installed, but no CUDA device ({torch_cuda.detail})")
    return Component(True, f"{module} {version}")


def _faiss() -> Component:
    mod, reason = _import("faiss")
    if mod is None:
        return Component(False, reason)
    return Component(True, f"faiss {getattr(mod, '__version__', 'unknown version')} (CPU)")


def _denoisers() -> dict[str, dict[str, Any]]:
    """Every registered denoiser backend (:mod:`rissole_trt.runtime.registry`): its declared
    capabilities, and whether what it needs is here (``detail``: the versions, or why not)."""
    from rissole_trt.runtime import registry

    out = {}
    for name, backend in registry.backends().items():
        ok, detail = backend.probe()
        out[name] = {"available": ok, "detail": detail, "description": backend.description,
                     **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(backend.capabilities).items()}}
    return out


def info(as_text: bool = False) -> dict[str, Any] | str:
    """Build information, the optional components and every denoiser backend.

    Returns a dict with ``version``, ``python``, ``platform``, ``torch``, ``build`` (the compiled
    core's ``build_info()``, or None with ``build_error`` when it cannot be imported),
    ``components`` (name -> {available, detail}), ``backends`` (name -> {available, detail,
    description and every field of its :class:`~rissole_trt.runtime.backend.Capabilities`}) and
    ``auto_order``; with ``as_text=True`` a readable report instead.
    """
    import torch

    from rissole_trt import __version__

    build: dict[str, Any] | None
    try:
        from rissole_trt import _C

        build, build_error = _C.build_info(), None
    except ImportError as exc:
        build, build_error = None, f"{type(exc).__name__}: {exc}"

    from rissole_trt.runtime import AUTO_ORDER

    torch_cuda = _torch_cuda()
    components = {
        "cuda_ops": _cuda_ops(build),
        "torch_cuda": torch_cuda,
        "cuvs": _gpu_package("cuvs", torch_cuda, note=" (GPU retrieval: pip install 'rissole-trt[gpu]')"),
        "faiss": _faiss(),
    }
    result: dict[str, Any] = {
        "version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "build": build,
        "components": {name: asdict(c) for name, c in components.items()},
        "backends": _denoisers(),
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
    lines += ["", "components:"]
    width = max(len(name) for name in result["components"])
    for name, component in result["components"].items():
        mark = "yes" if component["available"] else "no "
        lines.append(f"  {name:<{width}}  {mark}  {component['detail']}")
    lines += ["", "backends:", "  (Engine(backend=...), --backend; run: auto may pick it, build: build-engine "
                             "times it, peer: bench --peers adds it)"]
    width = max(len(name) for name in result["backends"])
    for name, b in result["backends"].items():
        mark = "yes" if b["available"] else "no "
        lines.append(f"  {name:<{width}}  {mark}  {b['detail']}")
        lines.append(f"  {'':<{width}}       {_capabilities(b)}: {b['description']}")
    lines += [f"  auto on {device}: {' > '.join(order)}" for device, order in result["auto_order"].items()]
    return "\n".join(lines)



def _capabilities(backend: dict[str, Any]) -> str:
    """A backend's declared capabilities in one phrase, e.g. ``cuda, fp32/bf16, run/build, captures the loop``."""
    flags = [text for key, text in (("captures_loop", "captures the loop"), ("reads_codes", "reads codes"),
                                    ("fused_step", "fused sampler step")) if backend[key]]
    flags += [f"needs {artifact}" for artifact in backend["needs_artifacts"]]
    return ", ".join(["/".join(backend["devices"]), "/".join(backend["precisions"]),
                      f"{'/'.join(backend['conditioning'])} models", "/".join(backend["purposes"])] + flags)


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

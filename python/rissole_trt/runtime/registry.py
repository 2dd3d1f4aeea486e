"""The one place that lists and chooses denoiser backends (:class:`~.backend.Backend` subclasses).

:func:`candidates` answers, for a device, a precision, a model's conditioning mode and a purpose
(``run``: the Engine's ``auto``; ``build``: what ``build-engine`` times; ``peer``: what ``bench
--peers`` adds), which backends apply and whether each can run here, and why not. The Engine, the
bench, ``build-engine`` and ``rissole-trt info`` all read it; a new backend is one class in a new
module listed in :data:`_BACKENDS`.

``auto`` takes the first backend of :data:`AUTO_ORDER` for the device (and the model's conditioning
mode, where the table has an entry for both) that is available and serves the precision, and warns
once, naming the reason, when it passes one over.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from ..errors import BackendUnavailableError, InvalidArgumentError
from .backend import PURPOSES, Backend

if TYPE_CHECKING:
    import torch

    from ..models.rissole import RissoleModel

__all__ = ["AUTO_ORDER", "Candidate", "backends", "get", "candidates", "select", "build"]

#: Every backend, as ``module.Class`` in ``rissole_trt.runtime``, in the order the build times them.
_BACKENDS = ("tactics.TunedBackend", "torch_backend.TorchBackend", "eager_backend.EagerBackend",
             "compile_backend.CompileBackend", "onnxruntime_backend.OnnxRuntimeBackend",
             "openvino_backend.OpenVinoBackend", "tensorrt_backend.TensorRTBackend",
             "cuda_graph_backend.CudaGraphBackend", "triton_backend.TritonBackend")

#: What ``auto`` tries, per device type (or "device:conditioning", which takes precedence), first to
#: last: the fastest implementation that is usually available first, the plain module (the
#: specification) last. xattn models on a GPU go to the fused gather + cross-attention kernel.
AUTO_ORDER = {
    "cpu": ("torch", "eager"),
    "cuda": ("torch", "eager"),
    "cuda:xattn": ("triton", "torch", "eager"),
}


@dataclass(frozen=True)
class Candidate:
    """One backend for a request, and whether it can serve it here (``reason``: why not, or its versions)."""

    backend: type[Backend]
    available: bool
    reason: str

    @property
    def name(self) -> str:
        return self.backend.name


@cache
def backends() -> dict[str, type[Backend]]:
    """Every registered backend class by name, in registration order."""
    out = {}
    for path in _BACKENDS:
        module, _, cls = path.rpartition(".")
        backend = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
        out[backend.name] = backend
    return out


def get(name: str) -> type[Backend]:
    table = backends()
    if name not in table:
        raise InvalidArgumentError(f"unknown backend {name!r}; choose auto or one of {', '.join(table)}")
    return table[name]


def _device_type(device: "torch.device | str") -> str:
    return device if isinstance(device, str) else device.type


def candidates(device: "torch.device | str", precision: str, conditioning: str | None = None,
               purpose: str = "run") -> list[Candidate]:
    """The backends for ``purpose`` on ``device``, in order, each with whether it can run
    ``precision`` for a model of ``conditioning`` here. ``run``: :data:`AUTO_ORDER`'s for the
    device; ``build`` and ``peer``: every backend declaring that purpose and the device type."""
    device_type = _device_type(device)
    if purpose not in PURPOSES:
        raise InvalidArgumentError(f"unknown purpose {purpose!r}; choose one of {', '.join(PURPOSES)}")
    if purpose == "run":
        if device_type not in AUTO_ORDER:
            raise InvalidArgumentError(f"no backend runs on device {device_type!r}; use cpu or cuda")
        chosen = [get(n) for n in AUTO_ORDER.get(f"{device_type}:{conditioning}", AUTO_ORDER[device_type])]
    else:
        chosen = [b for b in backends().values()
                  if purpose in b.capabilities.purposes and device_type in b.capabilities.devices]
    return [Candidate(b, *b.available(device_type, precision, conditioning)) for b in chosen]


_warned: set[tuple[str, str, str]] = set()


def select(name: str, device: "torch.device | str", precision: str, conditioning: str | None = None) -> type[Backend]:
    """The backend to use: ``name`` itself (refused with the reason if it cannot run here) or,
    for ``auto``, the first available one of :func:`candidates` for the device and ``conditioning``
    (the model's mode)."""
    device_type = _device_type(device)
    if name != "auto":
        backend = get(name)
        ok, reason = backend.available(device_type, precision, conditioning)
        if ok and "run" not in backend.capabilities.purposes:
            ok, reason = False, "it runs only inside a built engine (rissole-trt build-engine)"
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} cannot run {precision} on {device_type}: {reason}")
        return backend
    passed = []
    for candidate in candidates(device_type, precision, conditioning, "run"):
        if candidate.available:
            key = (device_type, precision, candidate.name)
            if passed and key not in _warned:
                _warned.add(key)
                warnings.warn(f"backend auto picked {candidate.name!r} for {precision} on {device_type}; passed over "
                              + "; ".join(passed), stacklevel=3)
            return candidate.backend
        passed.append(f"{candidate.name} ({candidate.reason})")
    raise BackendUnavailableError(f"no backend can run {precision} on {device_type}: " + "; ".join(passed))


def build(name: str, model: "RissoleModel", precision: str = "fp32") -> Backend:
    """Select (see :func:`select`) and build a backend for ``model`` on the model's device."""
    device = next(model.parameters()).device
    return select(name, device, precision, model.config.unet.conditioning)(model, precision)

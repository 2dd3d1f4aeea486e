"""The one place that chooses a denoiser backend.

Each backend module declares a :class:`BackendSpec` named ``SPEC``: its name, the devices and
precisions it serves, ``available() -> (ok, reason)`` and ``build(model, precision)``. The Engine,
the bench, ``rissole-trt info`` and the CLI all select through :func:`select` and build through
:func:`build`; a new backend (TensorRT, CUDA graphs, Triton, OpenVINO) is one new module listed in
``_MODULES``.

``auto`` takes the first backend of :data:`AUTO_ORDER` for the device (and the model's conditioning
mode, where the table has an entry for both) that is available and serves the precision, and warns
once, naming the reason, when it passes one over.
"""
from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Callable, Protocol

from ..errors import BackendUnavailableError, InvalidArgumentError

if TYPE_CHECKING:
    import torch

    from ..models.rissole import RissoleModel

__all__ = ["BackendSpec", "Backend", "AUTO_ORDER", "specs", "get_spec", "select", "build", "availability"]

#: Backend modules, in ``rissole_trt.runtime``.
_MODULES = ("eager_backend", "torch_backend", "onnxruntime_backend", "compile_backend", "openvino_backend",
            "cuda_graph_backend", "tensorrt_backend", "triton_backend")

#: What ``auto`` tries, per device type (or "device:conditioning", which takes precedence), first to
#: last: the fastest implementation that is usually available first, the plain module (the
#: specification) last. xattn models on a GPU go to the fused gather + cross-attention kernel.
AUTO_ORDER = {
    "cpu": ("torch", "eager"),
    "cuda": ("torch", "eager"),
    "cuda:xattn": ("triton", "torch", "eager"),
}


class Backend(Protocol):
    """A built backend: ``denoiser(cond)`` has the contract of :meth:`RissoleModel.denoiser`."""

    name: str
    precision: str

    @property
    def native(self) -> bool:  # False when the device only emulates the precision
        ...

    def denoiser(self, cond: "torch.Tensor", pos: "torch.Tensor | None" = None):
        ...


@dataclass(frozen=True)
class BackendSpec:
    name: str
    devices: tuple[str, ...]  # device types: "cpu", "cuda"
    precisions: tuple[str, ...]
    description: str
    available: Callable[[], tuple[bool, str]]  # (ok, reason when not ok / version when ok)
    build: Callable[["RissoleModel", str], Backend]


@cache
def specs() -> dict[str, BackendSpec]:
    """Every registered backend by name, in registration order."""
    out = {}
    for module in _MODULES:
        spec = importlib.import_module(f"{__package__}.{module}").SPEC
        out[spec.name] = spec
    return out


def get_spec(name: str) -> BackendSpec:
    table = specs()
    if name not in table:
        raise InvalidArgumentError(f"unknown backend {name!r}; choose auto or one of {', '.join(table)}")
    return table[name]


def availability(spec: BackendSpec, device_type: str, precision: str) -> tuple[bool, str]:
    """Whether ``spec`` can run ``precision`` on ``device_type`` here, and why not."""
    if device_type not in spec.devices:
        return False, f"runs on {', '.join(spec.devices)}, not {device_type}"
    if precision not in spec.precisions:
        return False, f"serves {', '.join(spec.precisions)}, not {precision}"
    return spec.available()


_warned: set[tuple[str, str, str]] = set()


def select(name: str, device: "torch.device | str", precision: str, conditioning: str | None = None) -> BackendSpec:
    """The backend to use: ``name`` itself (refused with the reason if it cannot run here) or,
    for ``auto``, the first available one of :data:`AUTO_ORDER` for the device and ``conditioning``
    (the model's mode)."""
    device_type = device if isinstance(device, str) else device.type
    if name != "auto":
        spec = get_spec(name)
        ok, reason = availability(spec, device_type, precision)
        if not ok:
            raise BackendUnavailableError(f"backend {name!r} cannot run {precision} on {device_type}: {reason}")
        return spec
    if device_type not in AUTO_ORDER:
        raise InvalidArgumentError(f"no backend runs on device {device_type!r}; use cpu or cuda")
    passed = []
    for candidate in AUTO_ORDER.get(f"{device_type}:{conditioning}", AUTO_ORDER[device_type]):
        spec = get_spec(candidate)
        ok, reason = availability(spec, device_type, precision)
        if ok:
            key = (device_type, precision, candidate)
            if passed and key not in _warned:
                _warned.add(key)
                warnings.warn(f"backend auto picked {candidate!r} for {precision} on {device_type}; passed over "
                              + "; ".join(passed), stacklevel=3)
            return spec
        passed.append(f"{candidate} ({reason})")
    raise BackendUnavailableError(f"no backend can run {precision} on {device_type}: " + "; ".join(passed))


def build(name: str, model: "RissoleModel", precision: str = "fp32") -> Backend:
    """Select (see :func:`select`) and build a backend for ``model`` on the model's device."""
    device = next(model.parameters()).device
    return select(name, device, precision, model.config.unet.conditioning).build(model, precision)

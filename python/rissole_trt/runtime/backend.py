"""The backend seam: every denoiser implementation is a :class:`Backend` subclass that declares what
it can do as a frozen :class:`Capabilities` and says with :meth:`Backend.available` whether it can
run here, and why not (in the style of vLLM's attention backends). :mod:`.registry` lists them and
is the only place that chooses one; the Engine, ``build-engine``, ``bench --peers`` and
``rissole-trt info`` all ask it.

A built backend runs ``forward_hoisted(x, cond_feat, time_bias, pos_bias) -> eps`` (float32 in and
out, the signature of :meth:`BlockUNet.forward_hoisted`) and hands the samplers a
:class:`BlockDenoiser` over it; the Engine reads its capabilities as attributes
(``captures_loop``, ``reads_codes``, ``fused_step``), never by probing for methods.
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ClassVar

import torch

from ..errors import InvalidArgumentError
from ..platform import precision_dtype, precision_native

if TYPE_CHECKING:
    from ..models.rissole import BlockDenoiser, RissoleModel

__all__ = ["PURPOSES", "CONDITIONINGS", "Capabilities", "Artifacts", "Backend", "ONNX_FILE", "TRT_ONNX", "TRT_PLAN",
           "TRT_CACHE"]

#: What a backend may be a candidate for: ``run`` (``Engine(backend=...)``, ``auto``), ``build``
#: (timed by ``build-engine`` at every bucket), ``peer`` (what a user would pick instead; ``bench --peers``).
PURPOSES = ("run", "build", "peer")
#: The models' conditioning modes (:data:`rissole_trt.config.CONDITIONING_MODES`).
CONDITIONINGS = ("none", "add", "xattn")

# Files of an engine directory that backends are built from (relative to it).
ONNX_FILE = Path("onnx") / "denoiser.onnx"
#: The graph a TensorRT plan of each precision is built from (fp16: fp16 with norms and softmax in fp32).
TRT_ONNX = {"fp32": ONNX_FILE, "fp16": Path("onnx") / "denoiser-fp16.onnx"}
TRT_PLAN, TRT_CACHE = Path("tensorrt") / "denoiser.plan", Path("tensorrt") / "timing.cache"


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself.

    Attributes:
        devices: device types it runs on ("cpu", "cuda").
        precisions: precisions it serves.
        conditioning: the models' conditioning modes it runs.
        purposes: what it is a candidate for (:data:`PURPOSES`).
        captures_loop: it can replay the whole sampling loop (:meth:`Backend.loop_sampler`).
        reads_codes: for xattn models it reads the neighbours through the database's codes
            (:meth:`Backend.code_denoiser`) instead of hoisted features.
        fused_step: the sampler update runs as one fused kernel per step.
        needs_artifacts: what a build must prepare before constructing it: "onnx" (the exported
            per-step graph; also needs the onnx package), "tactics" (the per-layer tactic table).
    """

    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    conditioning: tuple[str, ...] = CONDITIONINGS
    purposes: tuple[str, ...] = ("run", "build")
    captures_loop: bool = False
    reads_codes: bool = False
    fused_step: bool = False
    needs_artifacts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.purposes) - set(PURPOSES) | set(self.needs_artifacts) - {"onnx", "tactics"}
        if unknown:
            raise ValueError(f"unknown purposes or artifacts {sorted(unknown)}")


@dataclass(frozen=True)
class Artifacts:
    """An engine directory as its backends read it: ``root``, the buckets' ``rows``, the tactic
    ``table`` (CPU builds), and ``building``: ``root`` is a build's temporary directory, where a
    backend may still make its own file (a TensorRT plan); a loaded engine is never completed."""

    root: Path
    rows: tuple[int, ...]
    table: object = None
    building: bool = False

    def onnx(self, precision: str = "fp32") -> Path:
        return self.root / TRT_ONNX.get(precision, ONNX_FILE)


class Backend(ABC):
    """A denoiser implementation for one model in one precision, on the model's device.

    Subclasses set ``name``, ``description`` and ``capabilities`` and define
    :meth:`forward_hoisted`; :meth:`probe` says whether what they need (a package, a GPU) is here.
    """

    name: ClassVar[str]
    description: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def __init__(self, model: "RissoleModel", precision: str = "fp32") -> None:
        self.model = model
        self.precision = precision
        self.dtype = precision_dtype(precision)
        self.device = next(model.parameters()).device

    # -- declared, before anything is built

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        """Whether the packages and devices this backend needs are here: (True, versions) or (False, why)."""
        return True, f"torch {torch.__version__}"

    @classmethod
    def available(cls, device_type: str, precision: str, conditioning: str | None = None) -> tuple[bool, str]:
        """Whether this backend can run ``precision`` on ``device_type`` here (for a model of
        ``conditioning``), and why not."""
        caps = cls.capabilities
        if device_type not in caps.devices:
            return False, f"runs on {', '.join(caps.devices)}, not {device_type}"
        if precision not in caps.precisions:
            return False, f"serves {', '.join(caps.precisions)}, not {precision}"
        if conditioning is not None and conditioning not in caps.conditioning:
            return False, f"runs {', '.join(caps.conditioning)} models, not {conditioning}"
        if "onnx" in caps.needs_artifacts and importlib.util.find_spec("onnx") is None:
            return False, "needs onnx for the export; pip install 'rissole-trt[onnx]'"
        return cls.probe()

    @classmethod
    def from_artifacts(cls, model: "RissoleModel", precision: str, artifacts: Artifacts) -> "Backend":
        """This backend built from an engine directory's files (by default it needs none)."""
        return cls(model, precision)

    # -- capabilities of the built object, as the Engine reads them

    @property
    def captures_loop(self) -> bool:
        return self.capabilities.captures_loop

    @property
    def reads_codes(self) -> bool:
        return self.capabilities.reads_codes

    @property
    def fused_step(self) -> bool:
        return self.capabilities.fused_step

    @property
    def native(self) -> bool:
        """False when the device only emulates the precision (bf16 without bf16 arithmetic)."""
        return precision_native(self.precision, self.device)

    # -- running

    @abstractmethod
    def forward_hoisted(self, *inputs: torch.Tensor | None) -> torch.Tensor:
        """One per-step call: ``(x, cond_feat, time_bias, pos_bias) -> eps``, float32 in and out."""

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> "BlockDenoiser":
        """An ``eps_fn(x_t, t)`` over the neighbours ``cond``, as :meth:`RissoleModel.denoiser`."""
        from ..models.rissole import BlockDenoiser

        return BlockDenoiser(self.model, cond, pos, forward=self.forward_hoisted)

    def loop_sampler(self, rows: int) -> Callable | None:
        """``sample(denoiser, sampler, shape, generator, clip=None)`` running the whole loop of
        ``rows`` rows at once, where :attr:`captures_loop`; None where this backend steps in Python."""
        return None

    def code_denoiser(self, cond: torch.Tensor, ids: torch.Tensor, codes: torch.Tensor) -> "BlockDenoiser":
        """The denoiser over neighbours read through the database's codes, where :attr:`reads_codes`."""
        raise InvalidArgumentError(f"backend {self.name!r} does not read neighbours through their codes")

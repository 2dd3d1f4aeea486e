"""Loading an engine directory: the checks that it belongs to this model and machine
(:func:`load_engine`, :func:`check_machine`), and :class:`BuiltEngine`, which runs it."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ...builder import model_fingerprint
from ...errors import EngineMismatchError
from ...models.rissole import BlockDenoiser, RissoleModel
from ...platform import device_fingerprint, versions
from .. import registry
from ..backend import Artifacts
from ..base import run_in_buckets
from .manifest import EngineManifest, check_files, inside, rebuild_advice

__all__ = ["load_engine", "check_machine", "BuiltEngine"]


def _read_tactics(path: Path, manifest: EngineManifest, table_type):
    file = inside(path, manifest.tactics.get("file"))
    try:
        return table_type.from_dict(json.loads(file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EngineMismatchError(f"engine {path}: {file.name} is not a tactic table ({error!r}); "
                                  f"{rebuild_advice(path)}") from None



def load_engine(path: str | os.PathLike, model: RissoleModel, *, log=None) -> "BuiltEngine":
    """Open an engine directory for ``model`` (on the model's device), checking it belongs to both."""
    path = Path(path)
    manifest = EngineManifest.open(path)
    device = next(model.parameters()).device
    if manifest.model_fingerprint != model_fingerprint(model):
        raise EngineMismatchError(f"engine {path} was built for another model (its weights or config differ); "
                                  "build one for this model with rissole-trt build-engine")
    check_files(path, manifest)
    differences = check_machine(manifest, device_fingerprint(device), versions(), where=path)
    if differences:
        warnings.warn(f"engine {path} was tuned on another machine or setup ({'; '.join(differences)}); it runs, "
                      "but its choices may not be the fastest here: rissole-trt build-engine --rebuild re-tunes",
                      stacklevel=3)
    return BuiltEngine(path, manifest, model)


def check_machine(manifest: EngineManifest, here: dict, now: dict[str, str | None], where: object = "the engine") -> list[str]:
    """The load rules against this machine (``here``: :func:`device_fingerprint`; ``now``:
    :func:`versions`). Refuses another device type, another GPU, and a TensorRT plan from another
    TensorRT version; returns what differs but still runs correctly (warned about): the CPU model,
    ISA flags or thread count, and the versions of the libraries whose kernels the chosen
    candidates run (torch and oneDNN always; CUDA, ONNX Runtime, OpenVINO where chosen)."""
    built_on, then, chosen = manifest.device, manifest.versions, manifest.chosen
    if built_on["type"] != here["type"]:
        raise EngineMismatchError(f"engine {where} was built for {built_on['type']}, the model is on {here['type']}")
    if here["type"] == "cuda":
        if (built_on["name"], built_on["capability"]) != (here["name"], here["capability"]):
            raise EngineMismatchError(f"engine {where} was built on {built_on['name']} (sm {built_on['capability']}), "
                                      f"this is {here['name']} (sm {here['capability']}); rebuild it here")
        if "tensorrt" in chosen and then["tensorrt"] != now["tensorrt"]:
            raise EngineMismatchError(f"engine {where} holds a TensorRT {then['tensorrt']} plan; this machine has "
                                      f"TensorRT {now['tensorrt']}: rebuild it")
        machine_keys, libraries = ("driver",), ["torch", "cuda"]
    else:
        machine_keys, libraries = ("cpu_model", "isa_flags", "threads"), ["torch", "onednn"]
    libraries += [name for name in ("onnxruntime", "openvino") if name in chosen]
    differences = [f"{k} {built_on.get(k)} -> {here.get(k)}" for k in machine_keys if built_on.get(k) != here.get(k)]
    differences += [f"{lib} {then.get(lib)} -> {now.get(lib)}" for lib in libraries if then.get(lib) != now.get(lib)]
    return differences


@dataclass(frozen=True)
class _Bucket:
    batch_size: int
    rows: int
    chosen: str


class BuiltEngine:
    """A loaded engine: the Backend contract (``denoiser(cond)``), each call padded up to a bucket.

    A call of r rows runs at the smallest bucket of at least r rows, the rows padded by repeating
    the last one (every row is independent: one-group GroupNorm normalises per row); more rows than
    the largest bucket are split into largest-bucket pieces.

    Its capabilities are its chosen backends': ``captures_loop`` where one of them captures the
    whole loop (:meth:`loop_sampler` says at which rows), ``fused_step`` where all of them fuse the
    sampler update; ``reads_codes`` never (every bucket was built and timed on hoisted features).
    """

    name = "engine"
    native = True
    reads_codes = False

    def __init__(self, path: Path, manifest: EngineManifest, model: RissoleModel) -> None:
        self.path, self.manifest, self.model = path, manifest, model
        self.precision = manifest.precision
        self.buckets = [_Bucket(b["batch_size"], b["rows"], b["chosen"]) for b in manifest.buckets]
        table = None
        if manifest.tactics:
            from ..tactics import TacticTable

            table = _read_tactics(path, manifest, TacticTable)
        artifacts = Artifacts(path, tuple(b.rows for b in self.buckets), table)
        built = {name: registry.get(name).from_artifacts(model, self.precision, artifacts)
                 for name in dict.fromkeys(b.chosen for b in self.buckets)}
        self.backends = {b.rows: built[b.chosen] for b in self.buckets}  # the backend of each bucket (rows)
        self._run = {rows: backend.forward_hoisted for rows, backend in self.backends.items()}
        self.captures_loop = any(backend.captures_loop for backend in built.values())
        self.fused_step = all(backend.fused_step for backend in built.values())
        self.costs = {b["rows"]: b["ms"] for b in manifest.buckets}  # measured at build: ms per call

    def bucket_for(self, rows: int) -> int:
        """The rows of the bucket a call of ``rows`` rows runs at (the largest one if none holds it)."""
        fitting = [b.rows for b in self.buckets if b.rows >= rows]
        return min(fitting) if fitting else self.buckets[-1].rows

    @torch.no_grad()
    def forward_hoisted(self, x: torch.Tensor, cond_feat: torch.Tensor, time_bias: torch.Tensor,
                        pos_bias: torch.Tensor | None = None) -> torch.Tensor:
        return run_in_buckets(list(self._run), lambda x, *rest: self._run[x.shape[0]](x, *rest),
                              x, cond_feat, time_bias, pos_bias, costs=self.costs)

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> BlockDenoiser:
        return BlockDenoiser(self.model, cond, pos, forward=self.forward_hoisted)

    def loop_sampler(self, rows: int):
        """The whole-loop sampler of the backend that runs ``rows`` rows where it captures the loop
        (cuda_graph), else None."""
        backend = self.backends[self.bucket_for(rows)]
        return backend.loop_sampler(rows) if backend.captures_loop else None

    def describe(self) -> list[str]:
        """One line per bucket: what runs it and how fast it measured against eager."""
        lines = []
        for b in self.manifest.buckets:
            versus = "" if b["speedup_vs_eager"] is None else f"{b['speedup_vs_eager']:.2f}x eager, "
            lines.append(f"batch {b['batch_size']:>4} ({b['rows']} rows): {b['chosen']}, {b['ms']:.2f} ms per step, "
                         f"{versus}max |error| {b['max_abs_error']:.1e}")
        return lines

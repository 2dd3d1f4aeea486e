"""Built engines: ``rissole-trt build-engine`` -> an engine directory -> ``Engine(..., engine=DIR)``.

The lifecycle of TensorRT's diffusion demo, on every device: **build** once per model and machine
(time the candidates here: every backend the registry offers for building on the device, timed
interleaved per bucket; keep the fastest within the tolerance table), **load** (check that the
engine belongs to this model and this machine), **run** (any row count through the cheapest cover
of buckets by their measured times, :func:`~rissole_trt.runtime.base.cheapest_cover`).

An engine directory holds:

* ``manifest.json``: format version; the model's fingerprint (sha256 of its config and every
  weight); the device (CPU model, ISA flags and threads, or GPU name, compute capability and
  driver); the versions of torch, oneDNN, CUDA, TensorRT, ONNX Runtime and OpenVINO; the precision;
  the buckets, in images, and the rows per image (P blocks, or the 9 windows of a model that samples
  with ``overlap="half"`` by default, as the built-in one does); per bucket every candidate's measured time and error against the eager module, and
  the one chosen;
* ``tactics.json`` (CPU): the per-layer tactic table (:mod:`rissole_trt.runtime.tactics`);
* ``onnx/denoiser.onnx``: the per-step graph (what ONNX Runtime, OpenVINO and TensorRT consume),
  checked with ONNX Runtime against the eager module at build time; for an fp16 CUDA build also
  ``onnx/denoiser-fp16.onnx`` (fp16, norms and softmax in fp32: TensorRT's strongly typed input),
  checked the same way within the fp16 tolerance;
* ``tensorrt/denoiser.plan`` and ``tensorrt/timing.cache`` when TensorRT was a candidate.

A build writes into a temporary directory renamed into place at the end (a killed build leaves no
engine), and the same build run again is a cache hit; ``--rebuild`` replaces an engine and nothing
else (:func:`rissole_trt.outputs.check_output`). The manifest records every file's size and sha256;
loading refuses another model, another device type, another GPU or another TensorRT version with
the reason, and any file the manifest names that lies outside the folder, is missing, or changed
since the build (:func:`check_files`); another CPU model, ISA flags or thread count, or other versions of the libraries whose
kernels it runs (torch, oneDNN, CUDA, and ONNX Runtime / OpenVINO where chosen) only warn (rebuild
with ``--rebuild`` to re-tune): :func:`check_machine`.
"""
from __future__ import annotations

import functools
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import memory
from ..atomic import atomic_directory, write_text
from ..builder import model_fingerprint
from ..defaults import DEFAULT_BATCH_SIZES
from ..defaults import PRECISIONS as ENGINE_PRECISIONS
from ..errors import BackendUnavailableError, EngineMismatchError, InvalidArgumentError, MissingFileError, RissoleError
from ..models.rissole import BlockDenoiser, RissoleModel, file_sha256
from ..outputs import ENGINE, check_output, kind_of
from ..platform import device_fingerprint, versions
from ..timing import interleaved_within
from ..tolerances import excess
from ..windows import rows_per_image
from . import registry
from .backend import ONNX_FILE, TRT_CACHE, TRT_ONNX, TRT_PLAN, Artifacts, Backend
from .base import exact_fp32, run_in_buckets

__all__ = ["FORMAT_VERSION", "ENGINE_PRECISIONS", "build_engine", "load_engine", "read_manifest", "BuiltEngine",
           "check_machine", "check_files", "device_fingerprint", "versions", "is_engine_dir", "TRT_CACHE", "TRT_PLAN"]

#: 2: tactic tables hold residual blocks (fused GroupNorm + SiLU) and Winograd candidates.
#: 3: and the one-group norms as layers, and dense-map convolutions.
#: 4: the manifest gives each layer's choice per bucket and why (``tactics.layers``).
#: 5: rows per image and the overlap they follow.
FORMAT_VERSION = 6  # 6: the kind, and every file's size and sha256 (``files``), checked at load
MANIFEST = "manifest.json"
TACTICS = "tactics.json"


def _tolerance(precision: str) -> str:
    return {"fp32": "engine_fp32", "bf16": "bf16_eps", "fp16": "fp16_eps"}[precision]


def is_engine_dir(path: Path) -> bool:
    return kind_of(path) == ENGINE


def read_manifest(path: str | os.PathLike) -> dict:
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        if (path / ONNX_FILE).is_file():
            raise MissingFileError(f"{path} holds only the ONNX export of an engine that was not built (no GPU "
                                   f"where it ran); run rissole-trt build-engine --device cuda on a GPU machine")
        raise MissingFileError(f"{path} is not an engine directory (no {MANIFEST}); make one with rissole-trt build-engine")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as error:
        raise EngineMismatchError(f"{file} cannot be read: {error}; rebuild the engine") from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise EngineMismatchError(f"{path} has engine format {manifest.get('format_version')}, this rissole_trt reads "
                                  f"{FORMAT_VERSION}; rebuild it with rissole-trt build-engine --rebuild")
    return manifest


# --------------------------------------------------------------------------- candidates


@torch.no_grad()
def _bucket_inputs(model: RissoleModel, rows: int, seed: int) -> tuple:
    """Representative per-step inputs of ``rows`` rows: random noise and neighbours, one timestep."""
    config = model.config
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed + rows)
    bs, c = config.block_size, config.unet.latent_channels
    x = torch.randn(rows, c, bs, bs, generator=g).to(device)
    cond = torch.randn(rows, config.unet.cond_channels, bs, bs, generator=g).to(device)
    unet = model.unet
    cond_feat = unet.condition(cond)
    time_bias = unet.embed_time(torch.tensor([config.diffusion.n_steps // 2], device=device))
    pos = torch.arange(rows, device=device) % config.n_blocks
    pos_bias = unet.embed_pos(pos) if unet.pos_embed is not None else None
    return (x, cond_feat, time_bias) + ((pos_bias,) if pos_bias is not None else ())


# --------------------------------------------------------------------------- build


def _parse_buckets(batch_sizes) -> list[int]:
    sizes = sorted(set(batch_sizes))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise InvalidArgumentError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    return sizes


def _build_key(manifest: dict) -> dict:
    return {k: manifest[k] for k in ("format_version", "model_fingerprint", "device", "versions", "precision",
                                     "batch_sizes", "rows_per_image", "candidates_requested")}


def _check_request(model: RissoleModel, device: str, precision: str, batch_sizes, budget_s: float,
                   candidates: tuple[str, ...] | None) -> tuple[list[int], str, dict[str, registry.Candidate]]:
    """The buckets, the device type and the requested build candidates (the registry's for the
    device by default), every argument checked before any work."""
    if precision not in ENGINE_PRECISIONS:
        raise InvalidArgumentError(f"unknown precision {precision!r}; choose one of {', '.join(ENGINE_PRECISIONS)}")
    if not budget_s > 0:
        raise InvalidArgumentError(f"the budget must be positive, got {budget_s}")
    sizes = _parse_buckets(batch_sizes)
    device_type = torch.device(device).type
    if device_type not in registry.AUTO_ORDER:
        raise InvalidArgumentError(f"unknown device {device!r}; use cpu or cuda")
    if precision == "fp16" and device_type == "cpu":
        raise InvalidArgumentError("fp16 engines are built for CUDA only; on the CPU use fp32 or bf16")
    offered = {c.name: c for c in registry.candidates(device_type, precision, model.config.unet.conditioning, "build")}
    requested = tuple(candidates) if candidates else tuple(offered)
    unknown = [c for c in requested if c not in offered]
    if unknown:
        raise InvalidArgumentError(f"unknown candidate(s) {unknown} for {device_type}; choose from "
                                   f"{', '.join(offered)}")
    return sizes, device_type, {name: offered[name] for name in requested}


def _manifest_head(model: RissoleModel, device: str, precision: str, sizes: list[int], requested) -> dict:
    """What the manifest records before anything is timed (what a cache hit compares)."""
    # Buckets in images; rows as the model samples by default (9 windows per image with "half").
    per_image = rows_per_image(model.config.unet.block_factor, model.config.block_size, model.default_overlap)
    return {
        "kind": ENGINE,
        "format_version": FORMAT_VERSION,
        "model_fingerprint": model_fingerprint(model),
        "model_config": model.config.to_dict(),
        "device": device_fingerprint(torch.device(device)),
        "versions": versions(),
        "precision": precision,
        "batch_sizes": sizes,
        "block_positions": model.config.n_blocks,
        "overlap": model.default_overlap,
        "rows_per_image": per_image,
        "candidates_requested": list(requested),
        "tolerance": _tolerance(precision),
    }


def _existing(output: Path, manifest: dict, rebuild: bool, log: Callable[[str], None]) -> dict | None:
    """The engine already at ``output`` when it is this build (a cache hit); refuses another one
    unless ``rebuild``."""
    if is_engine_dir(output) and not rebuild:
        existing = read_manifest(output)
        if _build_key(existing) == _build_key(manifest):
            log(f"{output}: up to date (same model, machine, versions and settings); nothing to build")
            return existing
        raise EngineMismatchError(f"{output} holds an engine built for another model, machine or settings; "
                                  "pass --rebuild (rebuild=True) to replace it")
    if output.exists() and not rebuild and any(output.iterdir()):
        raise EngineMismatchError(f"{output} holds an unfinished engine export; pass --rebuild to replace it")
    return None


@dataclass
class _Build:
    """One build's shared state: the model on its device, per bucket (images) its rows, inputs and
    the eager module's output, the timing budget and the log."""

    model: RissoleModel
    precision: str
    device: torch.device
    sizes: list[int]
    rows_of: dict[int, int]
    inputs: dict[int, tuple]
    expected: dict[int, torch.Tensor]
    budget_s: float
    log: Callable[[str], None]

    @classmethod
    @torch.no_grad()
    def start(cls, model, precision, device, sizes, per_image, seed, budget_s, log) -> "_Build":
        rows_of = {b: b * per_image for b in sizes}
        inputs = {b: _bucket_inputs(model, rows_of[b], seed) for b in sizes}
        expected = {b: model.unet.forward_hoisted(*inputs[b]).float() for b in sizes}
        return cls(model, precision, device, sizes, rows_of, inputs, expected, budget_s, log)


def _prepare_artifacts(build: _Build, tmp: Path, runnable: list[type[Backend]]):
    """What the runnable candidates need in the engine directory (:attr:`Capabilities.needs_artifacts`):
    the exported ONNX graph(s), checked; the per-layer tactic table, tuned on half the budget.
    Returns the table (None when no candidate needs it)."""
    needs = {artifact for backend in runnable for artifact in backend.capabilities.needs_artifacts}
    first = build.sizes[0]
    if "onnx" in needs:
        for precision in [p for p in TRT_ONNX if p in ("fp32", build.precision)]:  # fp16 too for TensorRT
            _export_onnx(build.model, tmp, build.inputs[first], build.expected[first], build.log, precision=precision)
    if "tactics" not in needs:
        return None
    from .tactics import tune

    per_candidate = build.budget_s * 0.5 / (len(build.sizes) * 120)  # ~35 layers x 3-4 candidates
    build.log(f"tuning per-layer tactics at {len(build.sizes)} bucket(s)")
    table = tune(build.model, build.precision, {build.rows_of[b]: build.inputs[b] for b in build.sizes},
                 seconds_per_candidate=per_candidate, log=build.log)
    write_text(tmp / TACTICS, json.dumps(table.to_dict(), indent=1))
    return table


def _construct_all(build: _Build, runnable: list[type[Backend]], artifacts: Artifacts,
                   results: dict[int, dict]) -> dict[str, Callable]:
    """Every runnable candidate built from ``artifacts``; one that cannot build here is recorded as failed."""
    built = {}
    for backend in runnable:
        t = time.perf_counter()
        try:
            built[backend.name] = backend.from_artifacts(build.model, build.precision, artifacts).forward_hoisted
        except (RissoleError, RuntimeError, ImportError) as error:  # a candidate that cannot build here
            build.log(f"candidate {backend.name}: failed to build ({error})")
            for b in build.sizes:
                results[b][backend.name] = {"failed": str(error)}
            continue
        build.log(f"candidate {backend.name}: built in {time.perf_counter() - t:.1f} s")
    return built


def _time_bucket(build: _Build, b: int, fns: dict[str, Callable], budget_s: float) -> dict[str, dict]:
    """Every candidate at bucket ``b``: its first call (compiles, packs) checked against the eager
    module, then the ones that ran timed interleaved (``budget_s`` for all of them)."""
    results, checked = {}, {}
    for name, fn in fns.items():
        try:
            with torch.no_grad():
                out = fn(*build.inputs[b]).float()  # first call: compiles / packs for this shape
        except (RissoleError, RuntimeError) as error:
            build.log(f"candidate {name} at batch {b}: failed ({error})")
            results[name] = {"failed": str(error)}
            continue
        err = excess(out, build.expected[b], _tolerance(build.precision))
        checked[name] = {"max_abs_error": float((out - build.expected[b]).abs().max()), "tolerance_excess": err,
                         "within_tolerance": err <= 1.0}
    calls = {name: functools.partial(fns[name], *build.inputs[b]) for name in checked}
    with torch.no_grad():
        seconds = interleaved_within(calls, budget_s, build.device) if calls else {}
    for name, record in checked.items():
        results[name] = {"ms": seconds[name] * 1e3, **record}
        build.log(f"candidate {name} at batch {b} ({build.rows_of[b]} rows): {results[name]['ms']:.2f} ms, max "
                  f"|error| {record['max_abs_error']:.2e}"
                  + ("" if record["within_tolerance"] else " (outside tolerance: not eligible)"))
    return results


def _choose(build: _Build, results: dict[int, dict]) -> list[dict]:
    """Per bucket, the fastest candidate within tolerance, with every candidate's record."""
    buckets = []
    for b in build.sizes:
        eligible = {n: r for n, r in results[b].items() if r.get("within_tolerance")}
        if not eligible:
            raise BackendUnavailableError(f"no candidate ran within tolerance at batch {b}: {results[b]}")
        chosen = min(eligible, key=lambda n: eligible[n]["ms"])
        peers = {n: r["ms"] for n, r in eligible.items() if n not in ("tuned",)}
        buckets.append({"batch_size": b, "rows": build.rows_of[b], "chosen": chosen, "ms": eligible[chosen]["ms"],
                        "max_abs_error": eligible[chosen]["max_abs_error"], "candidates": results[b],
                        # None where eager does not run this precision (bf16, fp16)
                        "speedup_vs_eager": (results[b]["eager"]["ms"] / eligible[chosen]["ms"]
                                             if "ms" in results[b].get("eager", {}) else None),
                        "fastest_other": min(peers, key=peers.get) if peers else None})
        build.log(f"batch {b}: {chosen} ({eligible[chosen]['ms']:.2f} ms per step)")
    return buckets


def _run_candidates(build: _Build, tmp: Path, requested: dict[str, registry.Candidate]) -> tuple[list[dict], object]:
    """Prepare, build, check and time the requested candidates in ``tmp``; the buckets' records and the tactic table."""
    results: dict[int, dict] = {b: {} for b in build.sizes}
    for name, candidate in requested.items():
        if not candidate.available:
            build.log(f"candidate {name}: skipped ({candidate.reason})")
            for b in build.sizes:
                results[b][name] = {"skipped": candidate.reason}
    runnable = [c.backend for c in requested.values() if c.available]
    table = _prepare_artifacts(build, tmp, runnable)
    artifacts = Artifacts(tmp, tuple(build.rows_of[b] for b in build.sizes), table, building=True)
    fns = _construct_all(build, runnable, artifacts, results)
    per_bucket = build.budget_s * (0.5 if table is not None else 1.0) / len(build.sizes)
    for b in build.sizes:
        results[b].update(_time_bucket(build, b, fns, per_bucket))
    return _choose(build, results), table


@exact_fp32()  # the reference, every candidate's timing and check, every capture: IEEE fp32 on CUDA too
def build_engine(model: RissoleModel, output: str | os.PathLike, *, device: str = "cpu", precision: str = "fp32",
                 batch_sizes=DEFAULT_BATCH_SIZES, budget_s: float = 60.0, candidates: tuple[str, ...] | None = None,
                 rebuild: bool = False, seed: int = 0, log: Callable[[str], None] = print,
                 inputs: tuple = ()) -> dict:
    """Build an engine directory for ``model`` on ``device`` (see the module docstring); returns its manifest.

    Args:
        batch_sizes: the buckets, in images (each image is P block rows per denoiser call).
        budget_s: timing budget of the whole build, split between the per-layer tactics and the
            whole-graph candidates (compilation by torch.compile / OpenVINO / TensorRT comes on top).
        candidates: whole-graph candidates to time (default: every backend the registry offers for
            building on the device, :func:`~rissole_trt.runtime.registry.candidates`).
        rebuild: replace an existing engine at ``output`` (also one for another model or machine);
            never anything else (:func:`rissole_trt.outputs.check_output`).
        inputs: the paths the model came from, which ``output`` must not be, hold or lie in.
    """
    sizes, device_type, requested = _check_request(model, device, precision, batch_sizes, budget_s, candidates)
    output = Path(output)
    # overwrite=True: an engine may be replaced; whether this one is (--rebuild, a cache hit) is decided below
    check_output(output, overwrite=True, kind=ENGINE, inputs=inputs, flag="--rebuild")

    if device_type == "cuda" and not torch.cuda.is_available():
        written = _export_validated_onnx(model, output, sizes, precision, seed, log)
        raise BackendUnavailableError(f"--device cuda: torch sees no CUDA device here; wrote "
                                      f"{' and '.join(str(output / f) for f in written)} (validated with ONNX "
                                      "Runtime) for a build on a GPU machine")
    model = model.to(torch.device(device)).eval()
    manifest = _manifest_head(model, device, precision, sizes, requested)
    existing = _existing(output, manifest, rebuild, log)
    if existing is not None:
        return existing
    memory.check_build(model.config, sizes, manifest["rows_per_image"], device)  # before minutes end in the OOM killer
    started = time.perf_counter()
    build = _Build.start(model, precision, torch.device(device), sizes, manifest["rows_per_image"], seed, budget_s, log)
    with atomic_directory(output, replace=True) as tmp:
        manifest["buckets"], table = _run_candidates(build, tmp, requested)
        manifest["tactics"] = None if table is None else {
            "file": TACTICS, "wins": table.summary(), "layers": table.decisions(),
            "rows_per_call": {rows: record["chosen"] for rows, record in table.calls.items()}}
        manifest["onnx"] = str(ONNX_FILE) if (tmp / ONNX_FILE).is_file() else None
        manifest["build_s"] = time.perf_counter() - started
        manifest["built"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["files"] = _file_records(tmp)
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=1))
    log(f"wrote engine {output} in {manifest['build_s']:.1f} s")
    return manifest


def _export_onnx(model: RissoleModel, root: Path, inputs: tuple, expected: torch.Tensor,
                 log: Callable[[str], None], precision: str = "fp32") -> dict:
    """Export the per-step graph of ``precision`` (fp32, or fp16 for TensorRT) into ``root`` and check
    it with ONNX Runtime against the eager module, within that precision's tolerance."""
    from .onnx_export import export_denoiser_onnx

    file = TRT_ONNX[precision]
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    export_denoiser_onnx(model, root / file, precision)
    try:
        from .onnxruntime_backend import OnnxRuntimeBackend
    except ImportError:  # pragma: no cover - onnxruntime ships with onnx in our extras
        return {"validated": False}
    ok, reason = registry.get("onnxruntime").available("cpu", "fp32")
    if not ok:
        log(f"wrote {file}; not validated ({reason})")
        return {"validated": False, "reason": reason}
    cpu_model = model if next(model.parameters()).device.type == "cpu" else _cpu_copy(model)
    backend = OnnxRuntimeBackend(cpu_model, "fp32", onnx_path=root / file)  # float32 in and out either way
    out = backend.forward_hoisted(*(t.cpu() for t in inputs))
    max_abs = float((out - expected.cpu()).abs().max())
    if excess(out, expected.cpu(), "onnx_fp32" if precision == "fp32" else _tolerance(precision)) > 1.0:
        raise BackendUnavailableError(f"the exported {precision} ONNX graph disagrees with the model (max |error| "
                           f"{max_abs:.2e}); this is a bug, please report it")
    log(f"wrote {file}, checked with ONNX Runtime (max |error| {max_abs:.1e})")
    return {"validated": True}


def _cpu_copy(model: RissoleModel) -> RissoleModel:
    import copy

    return copy.deepcopy(model).cpu()


def _export_validated_onnx(model: RissoleModel, output: Path, sizes: list[int], precision: str, seed: int,
                           log) -> list[Path]:
    """Without a GPU: what a CUDA build would consume (the fp32 graph, and the fp16 one for an fp16
    build), written (atomically) and checked on the CPU; returns the files."""
    model = model.cpu().eval()
    inputs = _bucket_inputs(model, sizes[0] * model.config.n_blocks, seed)
    with torch.no_grad():
        expected = model.unet.forward_hoisted(*inputs)
    precisions = ["fp32"] + (["fp16"] if precision == "fp16" else [])
    with atomic_directory(output, replace=True) as tmp:
        for p in precisions:
            _export_onnx(model, tmp, inputs, expected, log, precision=p)
    return [TRT_ONNX[p] for p in precisions]


# --------------------------------------------------------------------------- load and run


def _file_records(root: Path) -> dict[str, dict]:
    """Size and sha256 of every file of the engine directory ``root`` but its manifest, by relative path."""
    return {file.relative_to(root).as_posix(): {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
            for file in sorted(root.rglob("*")) if file.is_file() and file.name != MANIFEST}


def _rebuild_advice(path: Path) -> str:
    return f"rebuild it with rissole-trt build-engine -o {path} --rebuild"


def _inside(path: Path, name: object) -> Path:
    """The file ``name`` of the manifest, which must be a relative path inside the engine folder."""
    if not isinstance(name, str) or not name or Path(name).is_absolute():
        raise EngineMismatchError(f"engine {path}: its manifest names the file {name!r}, not a path inside the "
                                  f"engine folder; {_rebuild_advice(path)}")
    file = path / name
    if not file.resolve().is_relative_to(path.resolve()):  # '..' or a symbolic link out of the folder
        raise EngineMismatchError(f"engine {path}: {name} lies outside the engine folder; {_rebuild_advice(path)}")
    return file


def _required_files(manifest: dict) -> set[str]:
    """The files the chosen candidates read at load."""
    chosen = {b.get("chosen") for b in manifest["buckets"]}
    tactics = manifest.get("tactics")
    required = {tactics.get("file")} if isinstance(tactics, dict) else set()
    if chosen & {"onnxruntime", "openvino"}:
        required.add(ONNX_FILE.as_posix())
    if "tensorrt" in chosen:
        required.add(TRT_PLAN.as_posix())
    return required


def check_files(path: Path, manifest: dict) -> None:
    """Every file the engine's manifest records is inside the folder, present, of its size and
    sha256, and the chosen candidates' files are among them; EngineMismatchError names the first that is not."""
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise EngineMismatchError(f"engine {path}: its manifest records no checksums of its files; "
                                  f"{_rebuild_advice(path)}")
    required = _required_files(manifest)
    for name in required:
        _inside(path, name)
    missing = sorted(str(name) for name in required if name not in files)
    if missing:
        raise EngineMismatchError(f"engine {path}: its manifest records no size and sha256 of {missing[0]}, which "
                                  f"it needs; {_rebuild_advice(path)}")
    for name, record in files.items():
        file = _inside(path, name)
        if not file.is_file():
            raise EngineMismatchError(f"engine {path} lacks {name}; {_rebuild_advice(path)}")
        if (not isinstance(record, dict) or file.stat().st_size != record.get("bytes")
                or file_sha256(file) != record.get("sha256")):
            raise EngineMismatchError(f"engine {path}: {name} was changed since the build (its size or sha256 "
                                      f"differs from the manifest's); {_rebuild_advice(path)}")


def _read_tactics(path: Path, manifest: dict, table_type):
    file = _inside(path, manifest["tactics"].get("file"))
    try:
        return table_type.from_dict(json.loads(file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise EngineMismatchError(f"engine {path}: {file.name} is not a tactic table ({error!r}); "
                                  f"{_rebuild_advice(path)}") from None



def load_engine(path: str | os.PathLike, model: RissoleModel, *, log=None) -> "BuiltEngine":
    """Open an engine directory for ``model`` (on the model's device), checking it belongs to both."""
    path = Path(path)
    manifest = read_manifest(path)
    device = next(model.parameters()).device
    if manifest["model_fingerprint"] != model_fingerprint(model):
        raise EngineMismatchError(f"engine {path} was built for another model (its weights or config differ); "
                                  "build one for this model with rissole-trt build-engine")
    check_files(path, manifest)
    differences = check_machine(manifest, device_fingerprint(device), versions(), where=path)
    if differences:
        warnings.warn(f"engine {path} was tuned on another machine or setup ({'; '.join(differences)}); it runs, "
                      "but its choices may not be the fastest here: rissole-trt build-engine --rebuild re-tunes",
                      stacklevel=3)
    return BuiltEngine(path, manifest, model)


def check_machine(manifest: dict, here: dict, now: dict[str, str | None], where: object = "the engine") -> list[str]:
    """The load rules against this machine (``here``: :func:`device_fingerprint`; ``now``:
    :func:`versions`). Refuses another device type, another GPU, and a TensorRT plan from another
    TensorRT version; returns what differs but still runs correctly (warned about): the CPU model,
    ISA flags or thread count, and the versions of the libraries whose kernels the chosen
    candidates run (torch and oneDNN always; CUDA, ONNX Runtime, OpenVINO where chosen)."""
    built_on, then = manifest["device"], manifest["versions"]
    chosen = {b["chosen"] for b in manifest["buckets"]}
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

    def __init__(self, path: Path, manifest: dict, model: RissoleModel) -> None:
        self.path, self.manifest, self.model = path, manifest, model
        self.precision = manifest["precision"]
        self.buckets = [_Bucket(b["batch_size"], b["rows"], b["chosen"]) for b in manifest["buckets"]]
        table = None
        if manifest.get("tactics"):
            from .tactics import TacticTable

            table = _read_tactics(path, manifest, TacticTable)
        artifacts = Artifacts(path, tuple(b.rows for b in self.buckets), table)
        built = {name: registry.get(name).from_artifacts(model, self.precision, artifacts)
                 for name in dict.fromkeys(b.chosen for b in self.buckets)}
        self.backends = {b.rows: built[b.chosen] for b in self.buckets}  # the backend of each bucket (rows)
        self._run = {rows: backend.forward_hoisted for rows, backend in self.backends.items()}
        self.captures_loop = any(backend.captures_loop for backend in built.values())
        self.fused_step = all(backend.fused_step for backend in built.values())
        self.costs = {b["rows"]: b["ms"] for b in manifest["buckets"]}  # measured at build: ms per call

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
        for b in self.manifest["buckets"]:
            versus = "" if b["speedup_vs_eager"] is None else f"{b['speedup_vs_eager']:.2f}x eager, "
            lines.append(f"batch {b['batch_size']:>4} ({b['rows']} rows): {b['chosen']}, {b['ms']:.2f} ms per step, "
                         f"{versus}max |error| {b['max_abs_error']:.1e}")
        return lines

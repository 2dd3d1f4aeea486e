"""``rissole-trt build-engine``: the request checked, a cache hit recognised, the candidates timed
(:mod:`.candidates`) into a temporary directory renamed into place with its manifest."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch

from ... import memory
from ...atomic import atomic_directory
from ...builder import model_fingerprint
from ...defaults import DEFAULT_BATCH_SIZES
from ...defaults import PRECISIONS as ENGINE_PRECISIONS
from ...errors import BackendUnavailableError, EngineMismatchError, InvalidArgumentError
from ...models.rissole import RissoleModel
from ...outputs import ENGINE, check_output
from ...platform import device_fingerprint, versions
from ...windows import rows_per_image
from .. import registry
from ..backend import ONNX_FILE, TRT_ONNX
from ..base import exact_fp32
from .candidates import Build, bucket_inputs, export_onnx, run_candidates
from .manifest import MANIFEST, TACTICS, EngineManifest, file_records, is_engine_dir, tolerance_of

__all__ = ["build_engine", "ENGINE_PRECISIONS"]


def _parse_buckets(batch_sizes) -> list[int]:
    sizes = sorted(set(batch_sizes))
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise InvalidArgumentError(f"batch sizes must be positive integers, got {list(batch_sizes)!r}")
    return sizes



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


def _manifest_head(model: RissoleModel, device: str, precision: str, sizes: list[int], requested) -> EngineManifest:
    """What the manifest records before anything is timed (what a cache hit compares)."""
    # Buckets in images; rows as the model samples by default (9 windows per image with "half").
    per_image = rows_per_image(model.config.unet.block_factor, model.config.block_size, model.default_overlap)
    return EngineManifest(model_fingerprint=model_fingerprint(model), model_config=model.config.to_dict(),
                          device=device_fingerprint(torch.device(device)), versions=versions(), precision=precision,
                          batch_sizes=sizes, block_positions=model.config.n_blocks, overlap=model.default_overlap,
                          rows_per_image=per_image, candidates_requested=list(requested),
                          tolerance=tolerance_of(precision))


def _existing(output: Path, head: EngineManifest, rebuild: bool, log: Callable[[str], None]) -> EngineManifest | None:
    """The engine already at ``output`` when it is this build (a cache hit); refuses another one
    unless ``rebuild``."""
    if is_engine_dir(output) and not rebuild:
        existing = EngineManifest.open(output)
        if existing.build_key() == head.build_key():
            log(f"{output}: up to date (same model, machine, versions and settings); nothing to build")
            return existing
        raise EngineMismatchError(f"{output} holds an engine built for another model, machine or settings; "
                                  "pass --rebuild (rebuild=True) to replace it")
    if output.exists() and not rebuild and any(output.iterdir()):
        raise EngineMismatchError(f"{output} holds an unfinished engine export; pass --rebuild to replace it")
    return None


def _build_into(tmp: Path, head: EngineManifest, build: Build, requested: dict, started: float) -> EngineManifest:
    """Time the candidates in ``tmp`` and write the manifest of what they chose there."""
    buckets, table = run_candidates(build, tmp, requested)
    tactics = None if table is None else {
        "file": TACTICS, "wins": table.summary(), "layers": table.decisions(),
        "rows_per_call": {rows: record["chosen"] for rows, record in table.calls.items()}}
    manifest = head.replace(buckets=buckets, tactics=tactics,
                            onnx=str(ONNX_FILE) if (tmp / ONNX_FILE).is_file() else None,
                            build_s=time.perf_counter() - started, built=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            files=file_records(tmp))
    manifest.write(tmp / MANIFEST)
    return manifest


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
    head = _manifest_head(model, device, precision, sizes, requested)
    existing = _existing(output, head, rebuild, log)
    if existing is not None:
        return existing.to_dict()
    memory.check_build(model.config, sizes, head.rows_per_image, device)  # before minutes end in the OOM killer
    started = time.perf_counter()
    build = Build.start(model, precision, torch.device(device), sizes, head.rows_per_image, seed, budget_s, log)
    with atomic_directory(output, replace=True) as tmp:
        manifest = _build_into(tmp, head, build, requested, started)
    log(f"wrote engine {output} in {manifest.build_s:.1f} s")
    return manifest.to_dict()


def _export_validated_onnx(model: RissoleModel, output: Path, sizes: list[int], precision: str, seed: int,
                           log) -> list[Path]:
    """Without a GPU: what a CUDA build would consume (the fp32 graph, and the fp16 one for an fp16
    build), written (atomically) and checked on the CPU; returns the files."""
    model = model.cpu().eval()
    inputs = bucket_inputs(model, sizes[0] * model.config.n_blocks, seed)
    with torch.no_grad():
        expected = model.unet.forward_hoisted(*inputs)
    precisions = ["fp32"] + (["fp16"] if precision == "fp16" else [])
    with atomic_directory(output, replace=True) as tmp:
        for p in precisions:
            export_onnx(model, tmp, inputs, expected, log, precision=p)
    return [TRT_ONNX[p] for p in precisions]


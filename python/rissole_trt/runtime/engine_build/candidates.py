"""What a build times: the candidates the registry offers, their artifacts (the ONNX graphs, the
per-layer tactic table), each one's first call checked against the eager module, all of them timed
interleaved per bucket, and per bucket the fastest within the tolerance."""
from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ...atomic import write_text
from ...errors import BackendUnavailableError, RissoleError
from ...models.rissole import RissoleModel
from ...timing import interleaved_within
from ...tolerances import excess
from .. import registry
from ..backend import TRT_ONNX, Artifacts, Backend
from .manifest import TACTICS, tolerance_of

__all__ = ["bucket_inputs", "Build", "run_candidates", "export_onnx"]


@torch.no_grad()
def bucket_inputs(model: RissoleModel, rows: int, seed: int) -> tuple:
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



@dataclass
class Build:
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
    def start(cls, model, precision, device, sizes, per_image, seed, budget_s, log) -> "Build":
        rows_of = {b: b * per_image for b in sizes}
        inputs = {b: bucket_inputs(model, rows_of[b], seed) for b in sizes}
        expected = {b: model.unet.forward_hoisted(*inputs[b]).float() for b in sizes}
        return cls(model, precision, device, sizes, rows_of, inputs, expected, budget_s, log)


def _prepare_artifacts(build: Build, tmp: Path, runnable: list[type[Backend]]):
    """What the runnable candidates need in the engine directory (:attr:`Capabilities.needs_artifacts`):
    the exported ONNX graph(s), checked; the per-layer tactic table, tuned on half the budget.
    Returns the table (None when no candidate needs it)."""
    needs = {artifact for backend in runnable for artifact in backend.capabilities.needs_artifacts}
    first = build.sizes[0]
    if "onnx" in needs:
        for precision in [p for p in TRT_ONNX if p in ("fp32", build.precision)]:  # fp16 too for TensorRT
            export_onnx(build.model, tmp, build.inputs[first], build.expected[first], build.log, precision=precision)
    if "tactics" not in needs:
        return None
    from ..tactics import tune

    per_candidate = build.budget_s * 0.5 / (len(build.sizes) * 120)  # ~35 layers x 3-4 candidates
    build.log(f"tuning per-layer tactics at {len(build.sizes)} bucket(s)")
    table = tune(build.model, build.precision, {build.rows_of[b]: build.inputs[b] for b in build.sizes},
                 seconds_per_candidate=per_candidate, log=build.log)
    write_text(tmp / TACTICS, json.dumps(table.to_dict(), indent=1))
    return table


def _construct_all(build: Build, runnable: list[type[Backend]], artifacts: Artifacts,
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


def _time_bucket(build: Build, b: int, fns: dict[str, Callable], budget_s: float) -> dict[str, dict]:
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
        err = excess(out, build.expected[b], tolerance_of(build.precision))
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


def _choose(build: Build, results: dict[int, dict]) -> list[dict]:
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


def run_candidates(build: Build, tmp: Path, requested: dict[str, registry.Candidate]) -> tuple[list[dict], object]:
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



def export_onnx(model: RissoleModel, root: Path, inputs: tuple, expected: torch.Tensor,
                 log: Callable[[str], None], precision: str = "fp32") -> dict:
    """Export the per-step graph of ``precision`` (fp32, or fp16 for TensorRT) into ``root`` and check
    it with ONNX Runtime against the eager module, within that precision's tolerance."""
    from ..onnx_export import export_denoiser_onnx

    file = TRT_ONNX[precision]
    (root / file).parent.mkdir(parents=True, exist_ok=True)
    export_denoiser_onnx(model, root / file, precision)
    try:
        from ..onnxruntime_backend import OnnxRuntimeBackend
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
    if excess(out, expected.cpu(), "onnx_fp32" if precision == "fp32" else tolerance_of(precision)) > 1.0:
        raise BackendUnavailableError(f"the exported {precision} ONNX graph disagrees with the model (max |error| "
                           f"{max_abs:.2e}); this is a bug, please report it")
    log(f"wrote {file}, checked with ONNX Runtime (max |error| {max_abs:.1e})")
    return {"validated": True}


def _cpu_copy(model: RissoleModel) -> RissoleModel:
    import copy

    return copy.deepcopy(model).cpu()


"""Eager vs CUDA graphs (per step and the whole loop) vs a built engine, side by side in one run (issue #11).

For one preset (random weights; the speed does not depend on them) and each batch size in images:

* **per-step call** at images × P rows: the eager UNet, the ``cuda_graph`` backend's replayed step
  and, where TensorRT is installed, the ``tensorrt`` backend: ms per call, GFLOP/s;
* **denoising loop** of one batch (each sampler given): eager, per-step CUDA graphs stepped from
  Python, and the whole loop replayed from one graph (:mod:`rissole_trt.runtime.loop_graph`);
* **end to end** ``Engine.generate`` images/s: eager, the ``cuda_graph`` backend (whole loop) and
  an engine built by ``build-engine --device cuda`` (its chosen candidate per bucket).

Every variant of a row is timed in the same process, interleaved repeat by repeat; medians. On a
machine without a GPU the CUDA rows are skipped with the reason (``--smoke`` runs the tiny preset on
the CPU with small sizes, which is what the test suite does to keep the script working).

Every row is written to DIR/bench_gpu.json and .md as soon as it is measured (a run stopped by a time
limit keeps them; its files say ``"complete": false``).

Usage: python benchmarks/bench_gpu.py --out DIR [--preset celeba64] [--images 1 256]
       [--samplers dpmpp_2m:20 ddim:50] [--repeats 5] [--repeats-for 256:1]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from rissole_trt.bench.hardware import machine_info
from rissole_trt.bench.rows import RowWriter
from rissole_trt.builder import build_database
from rissole_trt.diffusion import make_sampler, sample
from rissole_trt.engine import Engine
from rissole_trt.presets import make_preset_model
from rissole_trt.runtime import registry
from rissole_trt.runtime.base import exact_fp32
from rissole_trt.runtime.engine_build import build_engine
from rissole_trt.runtime.engine_build.candidates import bucket_inputs
from rissole_trt.runtime.loop_graph import LOOP_SAMPLERS
from rissole_trt.timing import interleaved_medians

GOAL_BATCH1_SPEEDUP = 5.0  # issue #11: the CUDA-graph engine >= 5x eager images/s at batch 1


def _backend(name: str, model, device: torch.device, **options):
    backend = registry.get(name)
    ok, reason = backend.available(device.type, "fp32", model.config.unet.conditioning)
    return (backend(model, "fp32", **options), None) if ok else (None, reason)


def _repeats(args) -> dict[int, int]:
    """Repeats per batch size: ``--repeats``, or a ``--repeats-for IMAGES:R`` override (the 256-image
    fp32 rows take seconds a call: a GPU window fits fewer repeats of them)."""
    override = dict(tuple(int(v) for v in spec.split(":")) for spec in args.repeats_for)
    return {n: override.get(n, args.repeats) for n in args.images}


@exact_fp32()  # every fp32 row in IEEE fp32, as the Engine runs it (no TF32 in cuDNN convolutions)
def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--preset", default="celeba64")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 256])
    parser.add_argument("--samplers", nargs="+", default=["dpmpp_2m:20", "ddim:50"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--repeats-for", nargs="*", default=[], metavar="IMAGES:R",
                        help="repeats for one batch size, e.g. 256:1")
    parser.add_argument("--db-size", type=int, default=512)
    parser.add_argument("--build-budget", type=float, default=20.0)
    parser.add_argument("--smoke", action="store_true", help="tiny preset, 1 image, 3 steps, on the CPU if no GPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.images, args.samplers, args.repeats, args.db_size = "tiny", [1], ["dpmpp_2m:3"], 1, 16
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make_preset_model(args.preset).to(device)
    # Every row lands in the files as soon as it is measured: a stage stopped by its limit keeps them.
    writer = RowWriter(args.out / "bench_gpu.json", {"preset": args.preset, "machine": machine_info(device),
                                                       "device": str(device), "skipped": {}},
                       markdown_path=args.out / "bench_gpu.md", render=_table)
    graph, graph_skip = _backend("cuda_graph", model, device)
    trt, trt_skip = _backend("tensorrt", model, device, buckets=[n * model.config.n_blocks for n in args.images])
    skipped = {"cuda_graph": graph_skip, "tensorrt": trt_skip}
    writer.update(skipped={k: v for k, v in skipped.items() if v})
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        size = model.config.image_size
        images = rng.integers(0, 256, size=(args.db_size, size, size, 3), dtype=np.uint8)
        db = build_database(model, images, Path(tmp) / "db", progress=False)
        engine_dir = None
        if device.type == "cuda":
            engine_dir = Path(tmp) / "engine"
            build_engine(model, engine_dir, device="cuda", batch_sizes=args.images, budget_s=args.build_budget,
                         candidates=("tensorrt", "cuda_graph", "torch", "eager"), log=print)
        else:
            writer.update(skipped={**writer.report["skipped"], "engine": "build-engine --device cuda needs a GPU"})
        with torch.no_grad():
            for n_images, repeats in _repeats(args).items():
                _measure(writer, model, db, device, n_images, repeats, args.samplers,
                         {"cuda_graph": graph, "tensorrt": trt}, engine_dir)
    report = writer.finish(goal_batch1=_goal(writer.report))
    print(_table(report))
    return report


def _measure(writer: RowWriter, model, db, device, n_images: int, repeats: int, samplers, backends: dict,
             engine_dir: Path | None) -> None:
    """The rows of one batch size: the per-step call, then per sampler its loop and end to end."""
    config = model.config
    P = config.n_blocks
    rows = n_images * P
    graph = backends["cuda_graph"]
    inputs = tuple(None if t is None else t.to(device) for t in bucket_inputs(model, rows, seed=0))
    step = {"eager": lambda: model.unet.forward_hoisted(*inputs)}
    step.update({name: (lambda b=b: b.forward_hoisted(*inputs)) for name, b in backends.items() if b is not None})
    if "flops_per_row" not in writer.report:
        with FlopCounterMode(display=False) as counter:
            model.unet.forward_hoisted(*inputs)
        writer.update(flops_per_row=counter.get_total_flops() / rows)
    flops = writer.report["flops_per_row"] * rows
    times = interleaved_medians(step, repeats, device)
    writer.add({"what": "per-step call", "images": n_images, "rows": rows, "repeats": repeats,
                "ms": {k: v * 1e3 for k, v in times.items()}, "GFLOP/s": {k: flops / v / 1e9 for k, v in times.items()}})

    ids = db.index("auto", device=str(device)).search(db.keys[:n_images], config.unet.k)[1]
    cond = db.neighbour_blocks(np.asarray(ids), device=device)
    shape = (n_images, P, config.autoencoder.latent_dim, config.block_size, config.block_size)
    for spec in samplers:
        name, steps = spec.split(":")
        sampler = make_sampler(name, model.schedule, int(steps))
        gens = lambda: Engine.image_generators(0, 0, n_images, device)  # noqa: E731
        loop = {"eager": lambda: sample(model.denoiser(cond), shape, model.schedule, sampler,
                                        generator=gens(), device=device)}
        if graph is not None:
            loop["cuda_graph per step"] = lambda: sample(graph.denoiser(cond), shape, model.schedule,
                                                         sampler, generator=gens(), device=device)
            if name in LOOP_SAMPLERS:
                whole = graph.loop_sampler(rows)
                loop["cuda_graph whole loop"] = lambda: whole(graph.denoiser(cond), sampler, shape, gens())
        times = interleaved_medians(loop, repeats, device)
        writer.add({"what": f"denoising loop {spec}", "images": n_images, "rows": rows, "repeats": repeats,
                    "ms": {k: v * 1e3 for k, v in times.items()}})

        engines = {"eager": Engine(model, db, device=device, backend="eager")}
        if graph is not None:
            engines["cuda_graph"] = Engine(model, db, device=device, backend="cuda_graph")
        if engine_dir is not None:
            engines["built engine"] = Engine(model, db, device=device, engine=engine_dir)
        run = {k: (lambda e=e: e.generate(n_images, sampler=name, steps=int(steps), batch_size=n_images,
                                          progress=False)) for k, e in engines.items()}
        times = interleaved_medians(run, repeats, device)
        writer.add({"what": f"end to end {spec}", "images": n_images, "rows": rows, "repeats": repeats,
                    "images/s": {k: n_images / v for k, v in times.items()}})


def _goal(report: dict) -> str:
    rows = [r for r in report["rows"] if r["what"].startswith("end to end") and r["images"] == 1]
    best = [r["images/s"].get("cuda_graph", 0) / r["images/s"]["eager"] for r in rows if "cuda_graph" in r["images/s"]]
    if not best:
        return "not measured: " + (report["skipped"].get("cuda_graph") or "no batch of 1 image")
    ratio = max(best)
    met = "met" if ratio >= GOAL_BATCH1_SPEEDUP else "missed"
    return f"{met}: the CUDA-graph engine is {ratio:.2f}x eager images/s at batch 1 (goal {GOAL_BATCH1_SPEEDUP}x)"


def _table(report: dict) -> str:
    m = report["machine"]["hardware"]
    hardware = m["gpu"]["name"] if m.get("gpu") else m["cpu_model"]
    lines = [f"# bench_gpu: preset {report['preset']} on {report['device']} ({hardware})", ""]
    for row in report["rows"]:
        unit = "images/s" if "images/s" in row else "ms"
        values = row[unit]
        base = values.get("eager")
        cells = ", ".join(f"{k} {v:.3g}" + ("" if base is None or k == "eager" else
                                             f" ({(base / v if unit == 'ms' else v / base):.2f}x eager)")
                          for k, v in values.items())
        lines.append(f"- {row['what']}, {row['images']} image(s) = {row['rows']} rows, {unit}: {cells}")
    state = "" if report["complete"] else " (run in progress or stopped: the rows so far)"
    lines += ["", f"skipped: {report['skipped'] or 'nothing'}", f"goal (batch 1): {_goal(report)}{state}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

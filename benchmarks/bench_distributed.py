"""Images/s of generate-dataset on a local Ray cluster with 1 and 2 workers against a single-process
Engine.generate of the same images (same model, plan and thread budget), interleaved per repeat.

    python benchmarks/bench_distributed.py -n 64 --shard-size 16 -o benchmarks/results/bench_distributed.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from rissole_trt.bench.hardware import machine_info
from rissole_trt.distributed import generate_dataset
from rissole_trt.engine import Engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    import ray

    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    cpus = int(ray.cluster_resources()["CPU"])
    plan = dict(seed=0, sampler=args.sampler, steps=args.steps, batch_size=args.batch_size)
    samples: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for threads in sorted({1, cpus}):
            torch.set_num_threads(threads)
            engine = Engine(device="cpu")
            t = time.perf_counter()
            engine.generate(args.n, progress=False, **plan)
            samples.setdefault(f"single process, {threads} thread(s)", []).append(args.n / (time.perf_counter() - t))
        for workers in sorted({1, cpus}):
            out = Path(tempfile.mkdtemp(prefix="rissole-dataset-"))
            try:
                manifest = generate_dataset(args.n, out / "run", shard_size=args.shard_size, workers=workers,
                                            format="npz", progress=False, **plan)
            finally:
                shutil.rmtree(out)
            # Steady-state rate: the run's own clock starts when shards are submitted (actors load
            # the model in parallel with the first shards; their start-up is included).
            samples.setdefault(f"generate-dataset, {workers} worker(s) x 1 thread", []).append(
                manifest["last_run"]["images_per_s"])
    ray.shutdown()
    report = {"command": "python benchmarks/bench_distributed.py " + " ".join(f"{k}={v}" for k, v in vars(args).items()),
              **machine_info(torch.device("cpu")), "n": args.n, "shard_size": args.shard_size, "plan": plan,
              "images_per_s": {k: {"median": statistics.median(v), "samples": v} for k, v in samples.items()}}
    for name, value in report["images_per_s"].items():
        print(f"{name:<44} {value['median']:8.2f} images/s")
    if args.output:
        args.output.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

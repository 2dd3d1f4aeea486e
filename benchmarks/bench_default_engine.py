"""The built-in model's default ``generate`` (shifted windows, DPM-Solver++-20) through built engines
against the torch backend and eager, every variant interleaved round by round in one process; medians.

Variants: an engine whose buckets hold the model's 9 windows per image (what ``build-engine`` makes
for it), an engine with aligned-block buckets (4 rows per image; built from a copy of the model saved
with ``default_overlap = "none"``) run through the cheapest cover of its buckets, the same engine
padding up to the next bucket or splitting (the rule before the cover), the torch backend and eager.

Usage: python benchmarks/bench_default_engine.py --windows ENGINE_DIR --aligned ENGINE_DIR -o JSON
       [--images 1 16] [--rounds 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rissole_trt.bench.hardware import machine_info
from rissole_trt.engine import Engine


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", required=True, help="engine built for the built-in model (9 rows per image)")
    parser.add_argument("--aligned", required=True, help="engine built with aligned-block buckets (4 rows per image)")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--images", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = {
        "engine, window buckets": Engine(engine=args.windows, device="cpu"),
        "engine, aligned buckets, cheapest cover": Engine(engine=args.aligned, device="cpu"),
        "engine, aligned buckets, pad or split": Engine(engine=args.aligned, device="cpu"),
        "torch backend": Engine(device="cpu", backend="torch"),
        "eager": Engine(device="cpu", backend="eager"),
    }
    variants["engine, aligned buckets, pad or split"].runtime.costs = None  # no times: pad_or_split
    report = {"machine": machine_info(torch.device("cpu")), "threads": args.threads, "sampler": "dpmpp_2m:20",
              "overlap": "half", "rounds": args.rounds, "rows": []}
    for n in args.images:
        seconds = {name: [] for name in variants}
        for engine in variants.values():
            engine.generate(n, seed=0, batch_size=n, progress=False)  # warm: packing, compiling, caches
        for _ in range(args.rounds):
            for name, engine in variants.items():
                start = time.perf_counter()
                engine.generate(n, seed=0, batch_size=n, progress=False)
                seconds[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(s) for name, s in seconds.items()}
        report["rows"].append({"images": n, "seconds": medians, "images_per_s": {k: n / v for k, v in medians.items()}})
        print(f"{n} image(s): " + ", ".join(f"{k} {n / v:.2f} images/s" for k, v in medians.items()), flush=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()

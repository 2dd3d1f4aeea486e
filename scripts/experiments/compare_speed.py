"""Images/s of every comparison row, measured side by side (issue #14's table).

The eval reports' own images/s were taken while other jobs shared the CPU; this measures every row of
``runs/compare/seed1`` (speed does not depend on the seed) in one process, interleaved rounds (each round generates with every row in
turn), 1 thread, the torch backend, DPM-Solver++(2M)-20, 64 images per call; the median round per
row. Pause other jobs on the machine while it runs.

Usage: python scripts/experiments/compare_speed.py [RUN_DIR] [OUT.json] [ROUNDS]
"""
from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from rissole_trt.bench.hardware import machine_info
from rissole_trt.engine import Engine

IMAGES = 64


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/compare/seed1")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results/compare/speed.json")
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(1)
    engines = {}
    for row in sorted(p.name for p in run.iterdir() if (p / "model" / "config.json").is_file()):
        db = run / row / "db"
        engines[row] = Engine(run / row / "model", db if db.is_dir() else None, device="cpu", backend="torch")
    seconds = {row: [] for row in engines}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for row, engine in engines.items():
            start = time.perf_counter()
            engine.generate(IMAGES, seed=0, sampler="dpmpp_2m", steps=20, batch_size=IMAGES, progress=False)
            seconds[row].append(time.perf_counter() - start)
    result = {"machine": machine_info(torch.device("cpu"))["hardware"]["cpu_model"], "python": platform.python_version(),
              "torch": torch.__version__, "threads": 1, "backend": "torch", "sampler": "dpmpp_2m-20", "images": IMAGES,
              "images_per_second": {row: IMAGES / statistics.median(s[1:]) for row, s in seconds.items()}}
    out.write_text(json.dumps(result, indent=2) + "\n")
    for row, ips in result["images_per_second"].items():
        print(f"{row:<20} {ips:6.1f} images/s")


if __name__ == "__main__":
    main()

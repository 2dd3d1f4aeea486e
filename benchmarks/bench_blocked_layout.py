"""Would oneDNN's blocked activation layout (nChw8c / nChw16c) win as a build-engine tactic?

For 3x3 convolutions of the shapes the shipped presets run (64 block rows), times side by side,
interleaved repeat by repeat, 1 thread:

* ``channels_last``: torch's convolution on channels-last tensors (what the tuned network feeds
  its layers; oneDNN underneath);
* ``blocked``: ``torch.utils.mkldnn``'s convolution with its weight reordered once, input and output
  already in oneDNN's blocked layout (the best case: a whole network kept blocked);
* ``blocked + reorders``: the same with the reorder from and to channels-last around it (what a
  per-layer tactic between GroupNorms, which torch runs on dense tensors only, would cost).

Usage: python benchmarks/bench_blocked_layout.py [--json out.json] [--repeats 30]
"""
from __future__ import annotations

import argparse
import json

import torch
from torch.utils import mkldnn

from rissole_trt.bench.hardware import machine_info
from rissole_trt.timing import interleaved_medians

SHAPES = ((48, 8), (96, 4), (256, 8), (512, 4))  # (channels, map size): tiny and celeba64 levels


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rows", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with torch.no_grad():
        for channels, size in SHAPES:
            conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval().to(memory_format=torch.channels_last)
            blocked = mkldnn.to_mkldnn(torch.nn.Sequential(conv))  # a copy with the weight reordered once
            x = torch.randn(args.rows, channels, size, size).contiguous(memory_format=torch.channels_last)
            xb = x.to_mkldnn()
            variants = {"channels_last": lambda: conv(x), "blocked": lambda: blocked(xb),
                        "blocked + reorders": lambda: blocked(x.to_mkldnn()).to_dense()}
            torch.testing.assert_close(variants["blocked + reorders"](), variants["channels_last"](), atol=1e-4, rtol=1e-4)
            medians = interleaved_medians(variants, args.repeats)
            row = {"channels": channels, "size": size, "rows": args.rows,
                   "ms": {name: seconds * 1e3 for name, seconds in medians.items()}}
            results.append(row)
            print(f"{channels:>4} ch {size}x{size}, {args.rows} rows: "
                  + ", ".join(f"{name} {ms:.3f} ms" for name, ms in row["ms"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info(torch.device("cpu")), "results": results}, f, indent=1)
    return results


if __name__ == "__main__":
    main()

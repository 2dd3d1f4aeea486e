"""The training curve of a `rissole-trt train` run from its console logs: the mean loss per window
of steps, as JSON and a PNG. The logs are what the progress bar printed (``N/TOTAL ... loss=X``);
pieces of a resumed run may be given in any order (a step logged twice keeps its last value).

Usage: python scripts/experiments/training_curve.py LOG... [--window 1000] -o OUT_PREFIX
"""
from __future__ import annotations

import argparse
import json
import re

import numpy as np

STEP_LOSS = re.compile(r"\| *(\d+)/(\d+) \[[^\]]*loss=([0-9.eE+-]+)\]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--window", type=int, default=1000, help="steps per averaged point (default 1000)")
    parser.add_argument("-o", "--output", required=True, help="writes OUTPUT.json and OUTPUT.png")
    args = parser.parse_args()
    losses: dict[int, float] = {}
    for path in args.logs:
        with open(path, errors="replace") as f:
            for step, _, loss in STEP_LOSS.findall(f.read()):
                losses[int(step)] = float(loss)
    if not losses:
        raise SystemExit("no 'N/TOTAL ... loss=X' progress lines in the logs")
    steps = np.array(sorted(losses))
    values = np.array([losses[s] for s in steps])
    windows = (steps - 1) // args.window
    points = [{"steps": f"{w * args.window + 1}-{(w + 1) * args.window}", "mean_loss": float(values[windows == w].mean()),
               "logged_steps": int((windows == w).sum())} for w in np.unique(windows)]
    with open(args.output + ".json", "w") as f:
        json.dump({"logs": args.logs, "window": args.window, "first_step": int(steps[0]), "last_step": int(steps[-1]),
                   "points": points}, f, indent=1)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([(int(p["steps"].split("-")[1])) for p in points], [p["mean_loss"] for p in points])
    ax.set_xlabel("step")
    ax.set_ylabel(f"mean loss per {args.window} steps")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.output + ".png", dpi=100)
    print(f"wrote {args.output}.json and {args.output}.png ({len(points)} points, steps {steps[0]}-{steps[-1]})")


if __name__ == "__main__":
    main()

"""The README's comparison table from the reports of scripts/experiments/eval_comparisons.sh (one row per model,
one value per report found for it) and the parameter counts of the trained models.

    python scripts/experiments/compare_table.py [benchmarks/results/compare] [runs/compare]
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ORDER = ["rissole-k10", "rdm", "patchdiffusion", "ldm", "rissole-k1", "rissole-k5", "rissole-k20", "rissole-nopos",
         "rissole-wholekey", "rissole-xattn", "rissole-xattn-all"]
WHAT = {"rissole-k10": "RISSOLE (blocks, k = 10, position, first-block key)",
        "rdm": "RDM-style (whole latent, k = 10 whole-latent neighbours)",
        "patchdiffusion": "PatchDiffusion-style (blocks, position, no retrieval)",
        "ldm": "LDM (whole latent, no retrieval)",
        "rissole-k1": "RISSOLE k = 1", "rissole-k5": "RISSOLE k = 5", "rissole-k20": "RISSOLE k = 20",
        "rissole-nopos": "RISSOLE without block-position embedding", "rissole-wholekey": "RISSOLE, whole-latent key",
        "rissole-xattn": "RISSOLE, cross-attention (xattn) at the deepest level and the middle",
        "rissole-xattn-all": "RISSOLE, cross-attention (xattn) at every level and the middle"}


def main() -> None:
    reports = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/compare")
    runs = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/compare")
    rows = defaultdict(list)
    for file in sorted(reports.glob("*-train*-eval*.json")):  # sorted: training seed 0 before seed 1
        rows[file.name.split("-train")[0]].append(json.loads(file.read_text()))
    speed_file = reports / "speed.json"
    speed = json.loads(speed_file.read_text())["images_per_second"] if speed_file.is_file() else {}
    print("Each cell: one value per training seed (0 / 1), eval seed 0"
          + ("; images/s from scripts/experiments/compare_speed.py (one quiet run, all rows interleaved)" if speed else
             "; images/s as the eval reports measured them (other jobs running)") + ".\n")
    print("| model | denoiser params | seam ratio (real 0.81) | SWD | domain FID | memorisation | images/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    floors = defaultdict(list)
    for name in [n for n in ORDER if n in rows] + sorted(set(rows) - set(ORDER)):
        group = rows[name]
        cell = lambda f, fmt: " / ".join(format(f(r), fmt) if f(r) is not None else "-" for r in group)  # noqa: E731
        params = "-"
        seeds = sorted({p.parents[2].name for p in runs.glob(f"seed*/{name}/model/model.safetensors")})
        if seeds:
            from rissole_trt.models import RissoleModel

            model = RissoleModel.load(runs / seeds[0] / name / "model")
            params = f"{model.parameter_count()['unet'] / 1e6:.2f} M"
        for r in group:
            floors["swd"].append(r["swd_training_images"]["mean"])
            if "domain_fid" in r:
                floors["fid"].append(r["domain_fid"]["training_images"])
        fid = lambda r: r["domain_fid"]["generated"] if "domain_fid" in r else None  # noqa: E731
        print(f"| {WHAT.get(name, name)} | {params} | {cell(lambda r: r['seam_ratio']['generated'], '.2f')} | "
              f"{cell(lambda r: r['swd']['mean'], '.1f')} | {cell(fid, '.1f')} | "
              f"{cell(lambda r: r['memorisation']['rate'], '.3f')} | "
              f"{format(speed[name], '.1f') if name in speed else cell(lambda r: r['images_per_second'], '.1f')} |")
    if floors:
        print(f"\nFloors (real training images against the same held-out images): SWD "
              f"{statistics.mean(floors['swd']):.1f}" + (f", domain FID {statistics.mean(floors['fid']):.1f}"
                                                         if floors["fid"] else ""))


if __name__ == "__main__":
    main()

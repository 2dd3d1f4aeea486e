"""The benchmark report: goals, terminal table, JSON file, PNG plot."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..atomic import atomic_file, write_bytes

__all__ = ["GOALS", "evaluate_goals", "format_report", "write_json", "write_plot"]

#: (key, description, (precision, sampler, steps or None for all T), metric, target), measured on
#: our fastest path in the run: the built engine's rows when the run has ``--engine``, else our torch
#: backend's. metric "speedup": images/s over the baseline's, at least target; "overhead": the share
#: of the end-to-end time spent outside the denoiser, at most target. Exact mode and DDIM-50 are
#: issue #11's goals; bf16, DPM-Solver++-20 bf16 and the overhead an earlier issue's.
GOALS = (
    ("exact", "exact mode (fp32, DDPM, all T steps) >= 1.3x the baseline", ("fp32", "ddpm", None), "speedup", 1.3),
    ("bf16", "bf16 (DDPM, all T steps) >= 2.0x the baseline", ("bf16", "ddpm", None), "speedup", 2.0),
    ("ddim50", "DDIM-50 (fp32) >= 40x the baseline", ("fp32", "ddim", 50), "speedup", 40.0),
    ("dpmpp20_bf16", "DPM-Solver++(2M)-20 with bf16 >= 80x the baseline", ("bf16", "dpmpp_2m", 20), "speedup", 80.0),
    ("overhead", "time outside the denoiser <= 5% at DDPM with all T steps (exact mode)", ("fp32", "ddpm", None),
     "overhead", 0.05),
)
#: The kinds of row a goal is measured on, in order of preference.
_OURS = ("engine", "torch")


def _find(report: dict, precision: str, sampler: str, steps: int | None) -> dict | None:
    steps = report["setup"]["n_steps"] if steps is None else steps
    for kind in _OURS:
        for c in report["configs"]:
            if (c["kind"], c["precision"], c["sampler"], c["steps"]) == (kind, precision, sampler, steps):
                return c
    return None


def evaluate_goals(report: dict) -> list[dict]:
    """Each goal: measured value, met or not, and by how much it was missed."""
    out = []
    for key, text, (precision, sampler, steps), metric, target in GOALS:
        goal = {"goal": key, "description": text, "target": target, "measured": None, "met": None, "note": ""}
        config = _find(report, precision, sampler, steps)
        if config is not None:
            goal["row"] = config["name"]
        if config is None:
            goal["note"] = "not measured (configuration not in this run)"
        elif metric == "speedup":
            value = config["speedup_vs_baseline"]
            if value is None:
                goal["note"] = "not measured (run without --baseline reference)"
            else:
                goal["measured"], goal["met"] = value, value >= target
                goal["note"] = (f"met: {value:.2f}x" if goal["met"] else
                                f"missed by {target / value:.2f}x: {value:.2f}x measured, {target:g}x needed "
                                f"({100 * value / target:.0f}% of the goal)")
        else:
            value = config["overhead_share"]
            goal["measured"], goal["met"] = value, value <= target
            goal["note"] = (f"met: {100 * value:.1f}%" if goal["met"] else
                            f"missed by {100 * (value - target):.1f} points: {100 * value:.1f}% measured, "
                            f"<= {100 * target:.0f}% needed")
        if config is not None and config.get("scaled"):
            goal["note"] += "; denoiser timed on one image's rows and scaled to the batch"
        out.append(goal)
    return out


def _fmt(value, spec: str, none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def format_report(report: dict) -> str:
    """The human-readable summary: hardware, model, table of configurations, goals."""
    hw, ver, setup, model = report["hardware"], report["versions"], report["setup"], report["model"]
    flags = " ".join(f for f, on in hw["isa_flags"].items() if on) or "none of the listed"
    lines = [
        f"rissole-trt bench: {model['source']}",
        f"  hardware: {hw['cpu_model']} ({hw['cpu_vendor']}, family/model {hw['cpu_family_model']}), "
        f"{hw['usable_cpus']} usable of {hw['logical_cpus']} CPUs"
        + (f", {hw['cpu_mhz']:.0f} MHz" if hw["cpu_mhz"] else "") + (", virtualised" if hw["hypervisor"] else ""),
        f"  ISA: {flags}; torch CPU capability {hw['torch_cpu_capability']}; "
        f"native bf16 in oneDNN: {'yes' if hw['onednn_bf16_native'] else 'no'}"
        + (f"; GPU {hw['gpu']['name']}" if hw.get("gpu") else ""),
        f"  versions: python {ver['python']}, torch {ver['torch']} (oneDNN {ver['onednn']}), numpy {ver['numpy']}, "
        f"faiss {ver['faiss']}, rissole_trt {ver['rissole_trt']}",
        f"  threads: {setup['threads']}{_probe(setup)}; device {setup['device']}; "
        f"load average start/end {_load(report['load_average'])}",
        f"  model: {model['parameters']['unet'] / 1e6:.1f} M UNet parameters, "
        f"{model['flops']['full_forward_per_row'] / 1e9:.3f} GFLOP per block (full forward), "
        f"{model['flops']['denoiser_per_row'] / 1e9:.3f} per step after hoisting; "
        f"{setup['images']} images x {setup['block_positions']} blocks = {setup['rows_per_call']} rows per call",
    ]
    peak = report["peak"]
    lines.append("  machine peak (measured): " + "; ".join(
        f"{p} GEMM {v['gemm']['gflops']:.1f} / conv {v['conv']['gflops']:.1f} GFLOP/s" for p, v in peak.items()))
    r = report["retrieval"]
    lines.append(f"  retrieval: {r['queries_per_s']:.0f} queries/s ({r['index']}, {r['database_entries']} entries, "
                 f"k = {r['k']}, batch {r['batch']}); neighbour gather {r['gather_gbps']:.2f} GB/s")
    lines.append("")
    header = (f"{'configuration':<32} {'steps(timed)':>12} {'rows x calls':>12} {'ms/call':>9} {'GFLOP/s':>8} "
              f"{'%peak':>6} {'images/s':>10} {'x base':>8} {'other%':>7} {'RSS MiB':>8}")
    lines += [header, "-" * len(header)]
    variants = {v["name"]: v for v in report["variants"]}
    for c in report["configs"]:
        v = variants[c["variant"]]
        steps = f"{c['steps']}({c['steps_timed']})" + ("*" if c["extrapolated"] else "")
        calls = f"{v['rows_per_call']}x{v['calls_per_step']}" + ("~" if c["scaled"] else "")
        lines.append(
            f"{c['name']:<32} {steps:>12} {calls:>12} {v['ms_per_call']:>9.1f} {v['gflops']:>8.1f} "
            f"{_fmt(v['peak_share'] and 100 * v['peak_share'], '.0f'):>6} {c['images_per_s']:>10.4g} "
            f"{_fmt(c['speedup_vs_baseline'], '.2f'):>8} {100 * c['overhead_share']:>7.1f} "
            f"{v['peak_rss_mib']:>8.0f}")
    lines.append("  * per-step cost timed over the steps in parentheses and extrapolated to all steps; "
                 "~ timed on one image's rows and scaled")
    lines.append("  other% = share of the end-to-end time outside denoiser calls (retrieval, gather, hoisting, "
                 "sampler updates and noise, decode, uint8)")
    for v in report["variants"]:
        extra = []
        if v.get("eps_max_abs_diff_vs_eager") is not None:
            extra.append(f"max |eps - eager eps| = {v['eps_max_abs_diff_vs_eager']:.2e}")
        psnr = v.get("psnr_vs_fp32")
        if psnr:
            extra.append(f"PSNR vs fp32 = {_fmt(psnr['db'], '.1f')} dB ({psnr['sampler']}-{psnr['steps']}, "
                         f"{psnr['images']} image(s))" if psnr["db"] is not None else f"PSNR not measured: {psnr['reason']}")
        if not v["precision_native"]:
            extra.append(f"{v['precision']} is emulated on this hardware")
        if extra:
            lines.append(f"  {v['name']}: " + "; ".join(extra))
    for ratio in report.get("peers", []):
        lines.append(f"  {ratio['precision']}: {ratio['ours']} {ratio['ours_ms']:.1f} ms per call vs the fastest peer "
                     f"{ratio['fastest_peer']} {ratio['peer_ms']:.1f} ms: {ratio['speedup']:.2f}x")
    for v in report["variants"]:
        if v.get("profile"):
            top = ", ".join(f"{e['op']} {100 * e['share']:.0f}%" for e in v["profile"][:6])
            lines.append(f"  profile of one {v['name']} call ({v['timed_rows']} rows): {top}")
    lines.append("")
    lines.append("goals:")
    for g in report["goals"]:
        state = "n/a " if g["met"] is None else ("MET " if g["met"] else "MISS")
        on = f" (on {g['row']})" if "row" in g else ""
        lines.append(f"  [{state}] {g['description']}{on}: {g['note']}")
    lines.append(f"\nbench wall time {report['wall_s']:.0f} s")
    return "\n".join(lines)


def _probe(setup: dict) -> str:
    probe = setup.get("threads_probe_s")
    if not probe:
        return ""
    return " (probed: " + ", ".join(f"{n} thread(s) {t:.2f} s" for n, t in probe.items()) + " per baseline call)"


def _load(load: dict) -> str:
    start, end = load.get("start"), load.get("end")
    return f"{start[0]:.1f}/{end[0]:.1f}" if start and end else "n/a"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as JSON (atomically; infinities as the strings "inf" / "-inf")."""
    path = Path(path)
    write_bytes(path, (json.dumps(_json_safe(report), indent=2) + "\n").encode())
    return path


def write_plot(report: dict, path: str | os.PathLike) -> Path:
    """A bar chart of images/s per configuration (log scale), each bar labelled with its ratio to the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = report["configs"]
    names = [c["name"] + (" *" if c["extrapolated"] else "") for c in configs]
    values = [c["images_per_s"] for c in configs]
    colours = ["#888888" if c["kind"] == "reference" else ("#1f77b4" if c["precision"] == "fp32" else "#ff7f0e")
               for c in configs]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(configs) + 1.6))
    bars = ax.barh(range(len(configs)), values, color=colours)
    ax.set_yticks(range(len(configs)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("images / s (log scale)")
    for bar, c in zip(bars, configs):
        label = f"{c['images_per_s']:.3g}" + (f"  ({c['speedup_vs_baseline']:.2f}x)" if c["speedup_vs_baseline"] else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label, va="center", fontsize=8)
    hw = report["hardware"]
    ax.set_title(f"{report['model']['source']}: {report['setup']['images']} images per batch\n"
                 f"{hw['cpu_model']}, threads={report['setup']['threads']}, torch {report['versions']['torch']}"
                 "  (* extrapolated from timed steps)", fontsize=9)
    ax.set_xlim(right=max(values) * 30)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path

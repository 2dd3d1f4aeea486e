"""The GPU check's stages (scripts/gpu_check.sh runs this): one table of what runs and its time
limit, a runner that stops each stage at its limit and goes on, and the summary printed last.

A lent GPU gives 15 minutes of device time and 10 minutes a command, so the whole check is one
command whose limits add up to TOTAL_LIMIT_S (under 600 s: the start-up and the copy back of the
results count too). Every stage's result is written to OUT/stages.json as soon as it ends, and the
benchmarks write their own rows as they measure them, so a stage stopped by its limit loses only the
row it was in. The exit status is non-zero when any stage failed or ran past its limit; the failed
stages are listed. Only the standard library and rissole_trt.atomic (no torch) are used: the first
stage installs the package.

Usage: python3 scripts/gpu_stages.py --out OUT [--only NAME ...] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))  # rissole_trt.atomic from the source tree: it imports no torch
from rissole_trt.atomic import write_text  # noqa: E402

TOTAL_LIMIT_S = 540  # the device's 600 s a command, less start-up and the copy back of OUT
KILL_GRACE_S = 3  # after SIGTERM at the limit, SIGKILL this much later (counted in the total)
BUILD_STAGE_S = 90  # nvcc for two architectures, or the fallback wheel when that fails
FALLBACK_INSTALL_S = 20  # of the build stage's limit, kept for installing the fallback wheel
PY = sys.executable


def pytest_counts(output: str, out: Path) -> str:
    """pytest's last summary line ("12 passed, 3 skipped in 4.2s")."""
    found = re.findall(r"^=*\s*(\d+ (?:passed|failed|error|errors|skipped|deselected)\b.*?)(?: in [\d.]+s.*)?=*$",
                       output, flags=re.M)
    return found[-1].strip() if found else "no pytest summary"


def last_line(prefix: str) -> Callable[[str, Path], str]:
    """The last output line starting with ``prefix``."""
    def headline(output: str, out: Path) -> str:
        lines = [line.strip() for line in output.splitlines() if line.strip().startswith(prefix)]
        return re.sub(r"\s+", " ", lines[-1]) if lines else f"no '{prefix}' line"
    return headline


def kernel_speedups(name: str) -> Callable[[str, Path], str]:
    def headline(output: str, out: Path) -> str:
        report = json.loads((out / name).read_text())
        cells = ", ".join(f"{r['kernel']} {r['speedup']:.2f}x" for r in report["rows"])
        return f"vs torch: {cells}" + ("" if report["complete"] else " (incomplete)")
    return headline


def bench_gpu_goal(output: str, out: Path) -> str:
    report = json.loads((out / "bench_gpu.json").read_text())
    return report["goal_batch1"] if report["complete"] else f"{len(report['rows'])} rows measured (incomplete)"


@dataclass(frozen=True)
class Stage:
    name: str
    limit_s: int
    argv: tuple[str, ...]  # "{out}" is replaced by the output folder
    headline: Callable[[str, Path], str]
    env: dict[str, str] = field(default_factory=dict)


_CUDA = {"RISSOLE_EXPECT_CUDA": "1"}
_PYTEST = (PY, "-m", "pytest", "-q", "-p", "no:cacheprovider")
#: The one table of stage budgets (seconds). The torch.compile engine candidate has its own stage:
#: inductor's compile time is the largest unknown of the run.
STAGES = (
    Stage("build", BUILD_STAGE_S, ("bash", "scripts/gpu_check.sh", "--build"), last_line("installed:"),
          {"RISSOLE_BUILD_LIMIT_S": str(BUILD_STAGE_S - FALLBACK_INSTALL_S)}),
    Stage("build report", 20, (PY, "-c", "import rissole_trt; print(rissole_trt.info(as_text=True))"),
          last_line("cuda kernels")),
    Stage("GPU tests", 90, _PYTEST + ("-m", "gpu", "-k", "not torch_compile", "tests"), pytest_counts, _CUDA),
    Stage("torch.compile engine candidate", 50, _PYTEST + ("-m", "gpu", "-k", "torch_compile",
                                                           "tests/test_build_engine.py"), pytest_counts, _CUDA),
    Stage("build tests", 25, _PYTEST + ("tests/test_build.py",), pytest_counts, _CUDA),
    Stage("Triton kernels on the GPU", 50, _PYTEST + ("tests/test_kernels.py",), pytest_counts),
    Stage("kernel benchmark bf16", 20, (PY, "benchmarks/bench_kernels.py", "--dtype", "bf16", "--min-time", "0.5",
                                        "--json", "{out}/bench_kernels_bf16.json"),
          kernel_speedups("bench_kernels_bf16.json")),
    Stage("kernel benchmark fp16", 20, (PY, "benchmarks/bench_kernels.py", "--dtype", "fp16", "--min-time", "0.5",
                                        "--json", "{out}/bench_kernels_fp16.json"),
          kernel_speedups("bench_kernels_fp16.json")),
    Stage("eager vs CUDA graphs vs a built engine", 140,
          (PY, "benchmarks/bench_gpu.py", "--out", "{out}", "--preset", "celeba64", "--images", "1", "256",
           "--samplers", "dpmpp_2m:20", "ddim:50", "--repeats", "5", "--repeats-for", "256:1"), bench_gpu_goal),
)


def total_limit_s(stages=STAGES) -> int:
    return sum(stage.limit_s + KILL_GRACE_S for stage in stages)


def _stream(pipe, lines: list[str]) -> None:
    for line in pipe:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)


def run_stage(stage: Stage, out: Path) -> dict:
    """Run one stage (its own process group, stopped at its limit); its result row."""
    print(f"== {stage.name} (at most {stage.limit_s} s)", flush=True)
    argv = [arg.replace("{out}", str(out)) for arg in stage.argv]
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **stage.env}, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=_stream, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        status = "passed" if proc.wait(timeout=stage.limit_s) == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        status = f"stopped at its {stage.limit_s} s limit"
    reader.join(timeout=KILL_GRACE_S)
    seconds = time.monotonic() - start
    try:
        headline = stage.headline("".join(lines), out)
    except (OSError, ValueError, KeyError) as exc:  # no report file, or half of one
        headline = f"no headline ({type(exc).__name__}: {exc})"
    if status != "passed":
        print(f"!! stage {status}: {stage.name}", flush=True)
    return {"stage": stage.name, "status": status, "seconds": round(seconds, 1), "limit_s": stage.limit_s,
            "headline": headline}


def summary(results: list[dict]) -> str:
    """The table printed last: stage, status, seconds (of its limit), headline; then what failed."""
    lines = ["| stage | status | seconds | headline |", "|---|---|---:|---|"]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']:.0f} / {r['limit_s']} | {r['headline']} |"
              for r in results]
    failed = failed_stages(results)
    lines.append(f"!! failed stages: {', '.join(failed)}" if failed else "== all stages passed")
    return "\n".join(lines)


def failed_stages(results: list[dict]) -> list[str]:
    return [r["stage"] for r in results if r["status"] != "passed"]


def run_stages(stages, out: Path) -> int:
    """Every stage in turn, each result saved as it ends; the summary last. Returns the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    for stage in stages:
        results.append(run_stage(stage, out))
        write_text(out / "stages.json", json.dumps(results, indent=1) + "\n")
    text = summary(results)
    write_text(out / "summary.md", text + "\n")
    print("== summary\n" + text, flush=True)
    return 1 if failed_stages(results) else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these stages (a rerun)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing")
    args = parser.parse_args(argv)
    names = [stage.name for stage in STAGES]
    unknown = set(args.only or ()) - set(names)
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; the stages are {names}")
    stages = [stage for stage in STAGES if not args.only or stage.name in args.only]
    print(f"== plan: {len(stages)} stages, at most {total_limit_s(stages)} s (of {TOTAL_LIMIT_S} s)")
    for stage in stages:
        print(f"  {stage.limit_s:4d} s  {stage.name}: {' '.join(stage.argv)}")
    return 0 if args.dry_run else run_stages(stages, args.out.resolve())


if __name__ == "__main__":
    sys.exit(main())

"""Wall-clock timing, one module for the build, the bench and the benchmarks: named phase timers,
medians, variants timed interleaved (a change in load hits them alike), memory peaks."""

from __future__ import annotations

import resource
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

__all__ = ["Timer", "median", "quartiles", "time_calls", "interleave", "interleaved_medians", "interleaved_within",
           "reset_peak_memory", "peak_memory_mib"]


class Timer:
    """Collects wall-clock samples per phase name: ``with timer("denoiser"): ...``.

    On a CUDA device the device is synchronised before each reading, so a sample covers the work
    launched inside the block.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.samples: dict[str, list[float]] = defaultdict(list)

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.samples[name].append(time.perf_counter() - start)

    def median(self, name: str) -> float:
        """Median seconds of phase ``name`` (KeyError if it was never timed)."""
        if not self.samples.get(name):
            raise KeyError(f"phase {name!r} was not timed")
        return statistics.median(self.samples[name])


def median(values: list[float]) -> float:
    return statistics.median(values)


def quartiles(values: list[float]) -> tuple[float, float]:
    """(first, third) quartile; both equal the value for a single sample."""
    if len(values) < 2:
        return values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def time_calls(fn: Callable[[], object], *, min_time: float, min_reps: int = 3, max_reps: int = 100,
               device: torch.device | str = "cpu") -> list[float]:
    """Seconds of each call of ``fn`` after one warm-up call: at least ``min_reps`` calls and
    until ``min_time`` seconds have passed (at most ``max_reps``)."""
    timer = Timer(device)
    with timer("warm-up"):
        fn()
    start = time.perf_counter()
    while len(timer.samples["call"]) < min_reps or (
            time.perf_counter() - start < min_time and len(timer.samples["call"]) < max_reps):
        with timer("call"):
            fn()
    return timer.samples["call"]


def interleave(rounds: int, steps: Iterable[Callable[[int], object]]) -> None:
    """Call each of ``steps`` in turn, round by round (``step(round)``), ``rounds`` times: the order
    of every comparison timed here, so that a change in machine load hits every variant alike."""
    steps = list(steps)
    for i in range(rounds):
        for step in steps:
            step(i)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int,
                        device: torch.device | str = "cpu", warmups: int = 1) -> dict[str, float]:
    """Median seconds per call of each of ``fns``, called in turn repeat by repeat (after ``warmups``
    untimed calls each), so that a change in machine load hits every variant alike."""
    timer = Timer(device)
    for fn in fns.values():
        for _ in range(warmups):
            fn()
    def timed(name: str, fn: Callable[[], object]) -> Callable[[int], None]:
        def step(_: int) -> None:
            with timer(name):
                fn()
        return step

    interleave(repeats, [timed(name, fn) for name, fn in fns.items()])
    return {name: timer.median(name) for name in fns}


def reset_peak_memory(device: torch.device | str = "cpu") -> bool:
    """Restart peak-memory tracking; False when the process peak cannot be reset (then the peak
    reported is the whole process's so far)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        # Linux: writing 5 to clear_refs resets VmHWM (the peak resident set size) to the current RSS.
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device | str = "cpu") -> dict[str, float | None]:
    """Peak resident set size since the last reset (MiB), and the CUDA allocator's peak on a GPU."""
    rss = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                rss = int(line.split()[1]) / 1024
    except OSError:
        pass
    if rss is None:  # no /proc: the process peak (kB on Linux, bytes on macOS; assume kB)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.device(device).type == "cuda" else None
    return {"peak_rss_mib": rss, "cuda_peak_mib": cuda}


def interleaved_within(fns: dict[str, Callable[[], object]], budget_s: float, device: torch.device | str = "cpu",
                       min_repeats: int = 3, max_repeats: int = 100) -> dict[str, float]:
    """:func:`interleaved_medians` with as many repeats as ``budget_s`` (seconds for all of ``fns``)
    allows, at least ``min_repeats``: one untimed round warms every variant up, one timed round
    sizes the rest."""
    timer = Timer(device)
    for fn in fns.values():
        fn()
    with timer("round"):
        for fn in fns.values():
            fn()
    repeats = int(budget_s / max(timer.median("round"), 1e-9))
    return interleaved_medians(fns, max(min_repeats, min(max_repeats, repeats)), device, warmups=0)

"""Running the benchmark: time each denoiser variant once, then compose every configuration.

Vocabulary:

* a **variant** is a way of running the denoiser: the ``reference`` baseline (eager fp32, one block
  position per call, full forward every step), or a backend of :mod:`rissole_trt.runtime` (built
  through its registry) in a precision it serves. Each variant is timed once, in a run of the real pipeline:
  retrieve -> gather -> prepare (hoisting) -> ``timing_steps`` sampler steps -> decode -> uint8.
* a **configuration** is a variant with a sampler and its number of steps. Its end-to-end time is
  composed from measured parts: the fixed phases of its variant (medians over ``repeats``), plus
  ``steps`` x (the variant's median denoiser call x calls per step + the sampler's own per-step
  cost, measured over all its steps on real tensors). When ``steps`` exceeds the timed steps (DDPM's
  1000), this is an explicit extrapolation of the per-step cost, and the report says so.

Variants are warmed up one by one, then timed step by step in turn (round-robin), so that the
machine's load changing during the run hits all of them alike: ratios between variants are what
this benchmark measures best on a shared machine. In its turn a backend's step first makes
``warm_calls`` untimed denoiser calls on the same input: in a sampling loop a call follows a call of
the same network, with its weights in cache, whereas round-robin alone would time every call right
after another variant's (cold caches cost most the variants with the largest weights, e.g. Winograd's
transformed ones). ``warm_calls=0`` times the cold calls. The reference baseline runs its block
positions' calls back to back already.

Budget: a variant in a precision the hardware emulates (bf16 on a CPU without bf16 arithmetic), or
whose calls are too slow for ``budget_s`` to fit three of them, is timed on one image's block rows and
scaled linearly to the full batch (the report marks it ``scaled``). The number of timed steps is
``timing_steps``, fewer if one round of all variants times that many would exceed ``budget_s`` per
variant (at least 2).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..defaults import PRECISIONS
from ..diffusion import SAMPLERS, draw_noise, make_sampler, timesteps_for
from ..errors import BackendUnavailableError, InvalidArgumentError
from ..images import from_model_output
from ..platform import precision_native, resolve_device, usable_cpus
from ..runtime import registry
from ..timing import Timer, interleave, median, peak_memory_mib, quartiles, reset_peak_memory
from .baseline import ReferenceChain
from .flops import model_flops
from .hardware import machine_info, measure_peak

__all__ = ["BenchOptions", "run_bench", "parse_sampler", "SCHEMA"]

SCHEMA = "rissole_trt.bench/1"


def parse_sampler(spec: str, n_steps: int) -> tuple[str, int]:
    """``"ddpm"``, ``"ddim:50"``, ``"dpmpp_2m:20"`` or a bare name (its default steps) -> (name, steps)."""
    name, _, steps = spec.partition(":")
    if name not in SAMPLERS:
        raise InvalidArgumentError(f"unknown sampler {name!r} in {spec!r}; choose from {', '.join(SAMPLERS)} (e.g. ddim:50)")
    try:
        count = int(steps) if steps else None
    except ValueError:
        raise InvalidArgumentError(f"sampler steps must be an integer, got {spec!r}") from None
    return name, len(timesteps_for(name, count, n_steps))  # the sampler's default and checks


@dataclass
class BenchOptions:
    """What to benchmark (the CLI's options; see ``rissole-trt bench --help``)."""

    preset: str | None = "celeba64"
    model: str | None = None
    db: str | None = None
    baseline: str | None = "reference"
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32", "bf16")
    samplers: tuple[str, ...] = ("ddpm", "ddim:50", "dpmpp_2m:20")
    images: int = 16
    timing_steps: int = 20
    repeats: int = 3
    budget_s: float = 90.0
    threads: int | None = None  # None: probe all usable CPUs against one thread
    device: str = "cpu"
    db_size: int = 10_000
    psnr_images: int = 1
    seed: int = 0
    profile: bool = False
    peak_time: float = 1.0
    peers: bool = False  # add the peers a user would pick instead (the registry's), interleaved with the rest
    warm_calls: int = 1  # untimed calls before each timed one in a variant's turn (module docstring)
    engine: str | None = None  # a built engine directory, timed beside the backends

    def validate(self) -> None:
        if (self.preset is None) == (self.model is None):
            raise InvalidArgumentError("give exactly one of a preset (--preset) or a saved model (--model)")
        if self.baseline not in (None, "reference"):
            raise InvalidArgumentError(f"unknown baseline {self.baseline!r}; the only baseline is 'reference'")
        for name in ("images", "timing_steps", "repeats", "db_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if self.psnr_images < 0:
            raise InvalidArgumentError(f"psnr_images must be >= 0, got {self.psnr_images}")
        if isinstance(self.warm_calls, bool) or not isinstance(self.warm_calls, int) or self.warm_calls < 0:
            raise InvalidArgumentError(f"warm_calls must be an integer >= 0, got {self.warm_calls!r}")
        if self.threads is not None and self.threads < 1:
            raise InvalidArgumentError(f"threads must be a positive integer, got {self.threads}")
        if not self.budget_s > 0 or not self.peak_time > 0:
            raise InvalidArgumentError("budget_s and peak_time must be positive")
        if not self.backends:
            raise InvalidArgumentError("give at least one backend")
        for backend in self.backends:
            registry.get(backend)  # refuses an unknown name
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise InvalidArgumentError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
        if not self.samplers:
            raise InvalidArgumentError("give at least one sampler")


def _peers() -> set[str]:
    """What a user would run instead of us (the registry's ``peer`` backends): ``--peers`` adds them."""
    return {name for name, backend in registry.backends().items() if "peer" in backend.capabilities.purposes}


def peer_ratios(variants: list[dict]) -> list[dict]:
    """Per precision: the built engine's (else our torch backend's) per-step call against the fastest peer."""
    out, peer_kinds = [], _peers()
    for precision in dict.fromkeys(v["precision"] for v in variants):
        ours = [v for v in variants if v["precision"] == precision and v["kind"] in ("engine", "torch")]
        peers = [v for v in variants if v["precision"] == precision and v["kind"] in peer_kinds]
        if not ours or not peers:
            continue
        mine = next((v for v in ours if v["kind"] == "engine"), ours[0])
        fastest = min(peers, key=lambda v: v["ms_per_call"])
        out.append({"precision": precision, "ours": mine["name"], "ours_ms": mine["ms_per_call"],
                    "fastest_peer": fastest["name"], "peer_ms": fastest["ms_per_call"],
                    "speedup": fastest["ms_per_call"] / mine["ms_per_call"]})
    return out


@dataclass
class _Variant:
    name: str
    kind: str  # "reference" or a registered backend name
    precision: str
    rows_per_call: int
    calls_per_step: int
    result: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- setup


def _load_model(options: BenchOptions, device: torch.device):
    from ..models.rissole import RissoleModel
    from ..presets import make_preset_model

    if options.model is not None:
        return RissoleModel.load(options.model, map_location=device).eval()
    return make_preset_model(options.preset, seed=options.seed).to(device).eval()


def _synthetic_database(model, path: Path, count: int, seed: int) -> Path:
    """A database of ``count`` random code maps for ``model``'s autoencoder (speed does not depend on content)."""
    from ..builder import autoencoder_fingerprint
    from ..retrieval.database import DatabaseWriter

    config = model.config
    latent = (config.autoencoder.latent_dim, config.latent_size, config.latent_size)
    rng = np.random.default_rng(seed)
    codebook = model.autoencoder.codebook.detach().cpu()
    with DatabaseWriter(path, count=count, codebook=codebook, latent_shape=latent,
                        block_factor=config.unet.block_factor, fingerprint=autoencoder_fingerprint(model.autoencoder),
                        key_kind="first-block", metadata={"synthetic": True}) as writer:
        for start in range(0, count, 4096):
            n = min(4096, count - start)
            writer.add(rng.integers(0, codebook.shape[0], size=(n, latent[1], latent[2]), dtype=np.int64))
    return path


# --------------------------------------------------------------------------- timing one variant


class _Bench:
    def __init__(self, options: BenchOptions, log: Callable[[str], None]) -> None:
        self.o = options
        self.log = log

    # -- the pieces every variant shares

    def setup(self, workdir: Path) -> None:
        from ..engine import Engine

        o = self.o
        self.device = resolve_device(o.device)
        t0 = time.perf_counter()
        self.model = _load_model(o, self.device)
        self.threads, self.threads_probe = (o.threads, None) if o.threads else self.pick_threads()
        torch.set_num_threads(self.threads)
        config = self.model.config
        db_path = Path(o.db) if o.db else _synthetic_database(self.model, workdir / "db", o.db_size, o.seed)
        self.engine = Engine(self.model, db_path, device=self.device)
        self.db_entries = self.engine.database.count
        self.setup_s = time.perf_counter() - t0
        self.P, self.C, self.bs = config.n_blocks, config.autoencoder.latent_dim, config.block_size
        self.T = config.diffusion.n_steps
        self.B = o.images
        self.samplers = []
        for spec in o.samplers:
            parsed = parse_sampler(spec, self.T)
            if parsed not in self.samplers:
                self.samplers.append(parsed)

    def pick_threads(self) -> tuple[int, dict | None]:
        """All usable CPUs, or one thread when that is faster: on a machine shared with other work,
        threads of one op wait for each other at every OpenMP barrier while one of them is
        descheduled, which can make small ops many times slower. Probed on the baseline's call
        (the UNet's full forward on one image per row, ``images`` rows), alternating twice."""
        usable = usable_cpus()
        if usable == 1 or self.device.type != "cpu":
            return usable, None
        config = self.model.config
        b, c, bs, k = self.o.images, config.autoencoder.latent_dim, config.block_size, config.unet.k
        x = torch.randn(b, c, bs, bs)
        cond = torch.randn(b, k * c, bs, bs)
        t = torch.full((b,), config.diffusion.n_steps - 1)
        pos = torch.zeros(b, dtype=torch.long)
        best: dict[int, float] = {}
        for threads in (usable, 1, usable, 1):
            torch.set_num_threads(threads)
            self.model.unet(x, cond, t, pos)  # warm-up at this thread count
            start = time.perf_counter()
            self.model.unet(x, cond, t, pos)
            best[threads] = min(best.get(threads, math.inf), time.perf_counter() - start)
        return min(best, key=best.get), {str(k): v for k, v in best.items()}

    def generators(self, count: int, first: int = 0) -> list[torch.Generator]:
        return self.engine.image_generators(self.o.seed, first, count, self.device)

    def retrieve(self, seed: int):
        return self.engine.retrieve(self.engine.plan(self.B, seed=seed))

    def gather(self, ids: np.ndarray) -> torch.Tensor:
        return self.engine.database.neighbour_blocks(ids, device=self.device)

    def decode(self, blocks: torch.Tensor) -> torch.Tensor:
        return self.engine.decode(blocks)

    def make_denoiser(self, variant: _Variant, cond: torch.Tensor):
        return self.backends[(variant.kind, variant.precision)].denoiser(cond)

    # -- timing

    def make_runner(self, variant: _Variant) -> "_Runner":
        flops_row = self.flops["full_forward_per_row" if variant.kind == "reference" else "denoiser_per_row"]
        peak = self.peak.get(variant.precision, {}).get("peak_gflops")
        # An emulated precision, or a call predicted (at the measured peak) to take over a third of
        # the budget, is timed on one image's rows and scaled: a warm-up and two timed calls must fit.
        predicted = flops_row * variant.rows_per_call / (peak * 1e9) if peak else 0.0
        emulated = not precision_native(variant.precision, self.device)
        scaled = variant.kind != "reference" and (emulated or predicted * 3 > self.o.budget_s) and self.B > 1
        return _Runner(self, variant, images=1 if scaled else self.B, predicted_s=predicted)

    def time_fixed(self, variant: _Variant, blocks: torch.Tensor, timer: Timer) -> None:
        """The per-batch phases, ``repeats`` times each (different queries each time)."""
        for r in range(self.o.repeats):
            with timer("retrieve"):
                retrieval = self.retrieve(self.o.seed + 1 + r)
            with timer("gather"):
                cond = self.gather(retrieval.neighbour_ids)
            if variant.kind != "reference":
                with timer("prepare"):
                    self.make_denoiser(variant, cond)
            with timer("decode"):
                images = self.decode(blocks)
            with timer("encode"):
                from_model_output(images)

    def time_variants(self, variants: list[_Variant]) -> None:
        """Warm every variant up, then time them step by step in turn (round-robin), so that a change
        of the machine's load hits every variant alike; then their per-batch phases."""
        o, log = self.o, self.log
        runners = []
        for v in variants:
            runner = self.make_runner(v)
            runner.warm_up()
            runners.append(runner)
            log(f"  {v.name}: {runner.rows} rows per call, warm-up {runner.warm_s:.2f} s per step"
                + (f" (timed on one image and scaled x{v.rows_per_call // runner.rows}: {v.precision} is emulated "
                   f"here or a full call would take ~{runner.predicted_s:.0f} s at peak)" if runner.scaled else ""))
        per_round = sum(r.warm_s * (1 if r.variant.kind == "reference" else 1 + o.warm_calls) for r in runners)
        n = max(2, min(o.timing_steps, int(o.budget_s * len(runners) // max(per_round, 1e-9))))
        log(f"timing {n} steps of each variant, interleaved" +
            (f" (budget-limited from {o.timing_steps})" if n < o.timing_steps else ""))
        interleave(n, [runner.step for runner in runners])
        for runner in runners:
            runner.finish(n)
            r = runner.variant.result
            log(f"  {r['name']}: {r['ms_per_call']:9.1f} ms per call ({r['calls_timed']} calls), "
                f"{r['gflops']:7.1f} GFLOP/s")

    def eps_difference(self, variant: _Variant, cond: torch.Tensor) -> float:
        """Max |ε - ε_eager| on one image's rows at one timestep (the eager module is the reference)."""
        gens = self.generators(1)
        x = draw_noise((1, self.P, self.C, self.bs, self.bs), gens, device=self.device)
        t = self.T // 2
        ref = self.model.denoiser(cond[:1])(x, t)
        return float((self.make_denoiser(variant, cond[:1])(x, t) - ref).abs().max())

    def profile(self, variant: _Variant, cond: torch.Tensor, shape, gens) -> list[dict]:
        """Self time of the top operators in one denoiser call (torch.profiler)."""
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        x = draw_noise(shape, gens, device=self.device)
        if variant.kind == "reference":
            b = cond.shape[0]
            t = torch.full((b,), self.T // 2, dtype=torch.long, device=self.device)
            pos = torch.zeros(b, dtype=torch.long, device=self.device)
            fn = lambda: self.model.unet(x[:, 0], cond[:, 0], t, pos if self.model.unet.pos_embed is not None else None)  # noqa: E731
        else:
            eps_fn = self.make_denoiser(variant, cond)
            fn = lambda: eps_fn(x, self.T // 2)  # noqa: E731
        fn()
        with profile(activities=activities) as prof:
            fn()
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events) or 1
        return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
                 "share": e.self_cpu_time_total / total} for e in events[:10]]

    # -- per-sampler cost outside the denoiser

    def sampler_overhead(self, name: str, steps: int) -> dict:
        """Seconds per step of the sampler's update and noise draws over all its steps, with a
        free ε (a fixed tensor), on the real batch shape and the Engine's per-image generators."""
        shape = (self.B, self.P, self.C, self.bs, self.bs)
        sampler = make_sampler(name, self.model.schedule, steps)
        gens = self.generators(self.B)
        eps = torch.randn(shape, device=self.device)
        timer = Timer(self.device)
        with timer("loop"):
            x = draw_noise(shape, gens, device=self.device)
            for i in range(sampler.num_steps):
                noise = draw_noise(shape, gens, device=self.device) if sampler.needs_noise(i) else None
                x = sampler.step(i, x, eps, noise)
        return {"steps": sampler.num_steps, "ms_per_step": timer.median("loop") * 1e3 / sampler.num_steps}

    # -- retrieval and gather on their own

    def retrieval_stats(self) -> dict:
        timer = Timer(self.device)
        reps = max(self.o.repeats, 5)
        retrieval = self.retrieve(self.o.seed)
        self.gather(retrieval.neighbour_ids)  # warm-up
        for r in range(reps):
            with timer("retrieve"):
                retrieval = self.retrieve(self.o.seed + 100 + r)
            with timer("gather"):
                cond = self.gather(retrieval.neighbour_ids)
        retrieve_s, gather_s = timer.median("retrieve"), timer.median("gather")
        nbytes = cond.numel() * cond.element_size()
        return {"batch": self.B, "k": self.model.config.unet.k, "database_entries": self.db_entries,
                "index": type(self.engine.index).__name__, "exclude_self": True,
                "queries_per_s": self.B / retrieve_s, "retrieve_ms": retrieve_s * 1e3,
                "gather_ms": gather_s * 1e3, "gather_bytes": nbytes, "gather_gbps": nbytes / gather_s / 1e9}

    # -- quality of reduced precision

    def psnr_check(self, variant: _Variant) -> dict:
        """PSNR of the images of ``variant`` against fp32 from the same noise and neighbours, with
        the first deterministic configured sampler (dpmpp_2m preferred), on ``psnr_images`` images."""
        o = self.o
        choices = [s for s in self.samplers if s[0] == "dpmpp_2m"] + [s for s in self.samplers if s[0] == "ddim"]
        if not choices or o.psnr_images == 0:
            return {"db": None, "reason": "no deterministic sampler (ddim / dpmpp_2m) configured" if not choices
                    else "psnr_images = 0"}
        name, steps = choices[0]
        per_row_s = variant.result["ms_per_call"] / 1e3 / variant.rows_per_call
        predicted = per_row_s * steps * self.P * o.psnr_images
        info = {"sampler": name, "steps": steps, "images": o.psnr_images, "predicted_s": predicted}
        if predicted > o.budget_s:
            return {**info, "db": None, "reason": f"predicted {predicted:.0f} s exceeds the budget ({o.budget_s:.0f} s)"}
        from ..diffusion import sample

        retrieval = self.retrieve(o.seed)
        cond = self.gather(retrieval.neighbour_ids)[:o.psnr_images]
        shape = (o.psnr_images, self.P, self.C, self.bs, self.bs)
        x_t = draw_noise(shape, self.generators(o.psnr_images), device=self.device)
        out = {}
        # Against the specification: the eager module in fp32.
        for precision, eps_fn in (("fp32", self.model.denoiser(cond)),
                                  (variant.precision, self.make_denoiser(variant, cond))):
            blocks = sample(eps_fn, shape, self.model.schedule, make_sampler(name, self.model.schedule, steps), noise=x_t)
            out[precision] = from_model_output(self.decode(blocks)).astype(np.float64)
        mse = float(np.mean((out["fp32"] - out[variant.precision]) ** 2))
        return {**info, "db": math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse),
                "max_abs_diff_uint8": float(np.abs(out["fp32"] - out[variant.precision]).max())}



class _Runner:
    """One variant's timing state: its neighbours, noise, denoiser and sample in progress."""

    def __init__(self, bench: _Bench, variant: _Variant, images: int, predicted_s: float) -> None:
        self.bench, self.variant = bench, variant
        self.images, self.predicted_s = images, predicted_s
        self.scaled = images < bench.B
        self.rows = bench.B if variant.kind == "reference" else images * bench.P
        self.timer = Timer(bench.device)

    def warm_up(self) -> None:
        """Build the state, run one step (excluded from the timings), record its memory peak."""
        b, v = self.bench, self.variant
        device = b.device
        before = peak_memory_mib(device)
        self.reset_ok = reset_peak_memory(device)
        retrieval = b.retrieve(b.o.seed)
        self.cond = b.gather(retrieval.neighbour_ids)[:self.images]
        self.shape = (self.images, b.P, b.C, b.bs, b.bs)
        gens = b.generators(self.images)
        start = time.perf_counter()
        if v.kind == "reference":
            gen = torch.Generator(device=device).manual_seed(b.o.seed)
            self.noise = lambda: torch.randn((b.B, b.C, b.bs, b.bs), generator=gen, device=device)  # noqa: E731
            self.chains = [ReferenceChain(b.model, self.cond[:, p], p, self.noise()) for p in range(b.P)]
            for chain in self.chains:
                chain.step(b.T - 1, self.noise)
            self.timesteps = list(range(b.T - 2, -1, -1))
        else:
            self.eps_fn = b.make_denoiser(v, self.cond)
            self.gens = gens
            self.x = draw_noise(self.shape, gens, device=device)
            self.eps_fn(self.x, b.T - 1)  # the torch backend also packs its weights here
            self.sampler = make_sampler("ddpm", b.model.schedule)
        self.warm_s = time.perf_counter() - start
        after = peak_memory_mib(device)
        self.memory = {"peak_rss_mib": after["peak_rss_mib"],
                       "call_peak_delta_mib": after["peak_rss_mib"] - before["peak_rss_mib"] if self.reset_ok else None,
                       "cuda_peak_mib": after["cuda_peak_mib"]}

    def step(self, i: int) -> None:
        b, timer = self.bench, self.timer
        if self.variant.kind == "reference":
            for chain in self.chains:
                chain.step(self.timesteps[i], self.noise, timer)
            return
        t = self.sampler.timesteps[i]
        for _ in range(b.o.warm_calls):  # untimed: the weights into cache, as in a sampling loop
            self.eps_fn(self.x, t)
        with timer("denoiser"):
            eps = self.eps_fn(self.x, t)
        with timer("step"):
            noise = draw_noise(self.shape, self.gens, device=b.device) if self.sampler.needs_noise(i) else None
            self.x = self.sampler.step(i, self.x, eps, noise)

    def blocks(self) -> torch.Tensor:
        if self.variant.kind == "reference":
            return torch.stack([chain.x for chain in self.chains], dim=1)
        return self.x

    def finish(self, n: int) -> None:
        b, v, timer = self.bench, self.variant, self.timer
        calls = timer.samples["denoiser"]
        factor = v.rows_per_call / self.rows
        flops_row = b.flops["full_forward_per_row" if v.kind == "reference" else "denoiser_per_row"]
        peak = b.peak.get(v.precision, {}).get("peak_gflops")
        blocks = self.blocks()
        b.time_fixed(v, blocks.repeat(b.B // blocks.shape[0], 1, 1, 1, 1), timer)
        q1, q3 = quartiles(calls)
        gflops = flops_row * self.rows / median(calls) / 1e9
        v.result = {
            "name": v.name,
            "kind": v.kind,
            "precision": v.precision,
            "precision_native": precision_native(v.precision, b.device),
            "rows_per_call": v.rows_per_call,
            "calls_per_step": v.calls_per_step,
            "timed_rows": self.rows,
            "scaled": self.scaled,
            "warmup_s": self.warm_s,
            "steps_timed": n,
            "calls_timed": len(calls),
            "ms_per_call": median(calls) * 1e3 * factor,
            "ms_per_call_q1_q3": [q1 * 1e3 * factor, q3 * 1e3 * factor],
            "gflops": gflops,
            "peak_share": gflops / peak if peak else None,
            "step_ms": median(timer.samples["step"]) * 1e3 * factor,
            "fixed_s": {name: median(timer.samples[name]) for name in ("retrieve", "gather", "prepare", "decode", "encode")
                        if timer.samples.get(name)},
            **self.memory,
            "peak_rss_is_process_peak": not self.reset_ok,
        }
        if v.kind != "reference" and v.kind != "eager":
            v.result["eps_max_abs_diff_vs_eager"] = b.eps_difference(v, self.cond)
        if b.o.profile:
            v.result["profile"] = b.profile(v, self.cond, self.shape, b.generators(self.images))


# --------------------------------------------------------------------------- composing configurations


def _compose(bench: _Bench, variants: list[_Variant], overheads: dict) -> list[dict]:
    configs = []
    B, P, T = bench.B, bench.P, bench.T
    for v in variants:
        r = v.result
        fixed = sum(r["fixed_s"].values())
        plans = [("ddpm", T)] if v.kind == "reference" else bench.samplers
        for name, steps in plans:
            if v.kind == "reference":
                per_step_other = r["step_ms"] / 1e3 * P  # the reference's update, once per position
            else:
                per_step_other = overheads[(name, steps)]["ms_per_step"] / 1e3
            denoiser_s = steps * r["ms_per_call"] / 1e3 * v.calls_per_step
            total = fixed + denoiser_s + steps * per_step_other
            configs.append({
                "name": f"{v.name} {name}-{steps}",
                "variant": v.name,
                "kind": v.kind,
                "precision": v.precision,
                "sampler": name,
                "steps": steps,
                "steps_timed": r["steps_timed"],
                "extrapolated": steps > r["steps_timed"],
                "scaled": r["scaled"],
                "seconds_per_batch": total,
                "images_per_s": B / total,
                "denoiser_s": denoiser_s,
                "other_s": total - denoiser_s,
                "overhead_share": (total - denoiser_s) / total,
                "speedup_vs_baseline": None,
            })
    base = next((c for c in configs if c["kind"] == "reference"), None)
    if base is not None:
        for c in configs:
            c["speedup_vs_baseline"] = c["images_per_s"] / base["images_per_s"]
    return configs


# --------------------------------------------------------------------------- entry point


def _backend_variants(bench: _Bench, options: BenchOptions, precisions: list[str]) -> list[_Variant]:
    """The built engine (``options.engine``) and every requested backend (with ``--peers``, the
    registry's peers for the device) in every precision it can run here, built into ``bench.backends``."""
    variants, conditioning = [], bench.model.config.unet.conditioning
    bench.backends = {}
    if options.engine:
        from ..runtime.engine_build import load_engine

        t = time.perf_counter()
        built = load_engine(options.engine, bench.model)
        bench.backends[("engine", built.precision)] = built
        bench.log(f"engine {options.engine} ({built.precision}): loaded in {time.perf_counter() - t:.2f} s; "
                  + "; ".join(built.describe()))
        variants.append(_Variant(f"engine {built.precision}", "engine", built.precision, bench.B * bench.P, 1))
    peers = [c.name for c in registry.candidates(bench.device, precisions[0], conditioning, "peer")]
    for name in dict.fromkeys(tuple(options.backends) + (tuple(peers) if options.peers else ())):
        for precision in precisions:
            try:
                backend = registry.select(name, bench.device, precision, conditioning)
            except BackendUnavailableError as error:
                bench.log(f"{name} {precision}: skipped ({error})")
                continue
            t = time.perf_counter()
            bench.backends[(name, precision)] = backend(bench.model, precision)
            bench.log(f"{name} backend {precision}: prepared in {time.perf_counter() - t:.2f} s")
            variants.append(_Variant(f"{name} {precision}", name, precision, bench.B * bench.P, 1))
    return variants


def run_bench(options: BenchOptions, log: Callable[[str], None] | None = None) -> dict:
    """Run the benchmark described by ``options``; returns the report (see :mod:`rissole_trt.bench`)."""
    from .report import evaluate_goals

    options.validate()
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    bench = _Bench(options, log)
    with tempfile.TemporaryDirectory(prefix="rissole-bench-") as workdir, torch.inference_mode():
        load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        bench.setup(Path(workdir))
        info = machine_info(bench.device)
        log(f"bench: {options.preset or options.model} on {info['hardware']['cpu_model']} "
            f"({bench.threads} threads), {bench.B} images = {bench.B * bench.P} block rows per call")
        precisions = list(dict.fromkeys(options.precisions))
        log("measuring the machine's peak (GEMM and conv, " + ", ".join(precisions) + ")")
        bench.peak = measure_peak(bench.device, precisions, options.peak_time)
        bench.flops = model_flops(bench.model)
        variants: list[_Variant] = []
        if options.baseline == "reference":
            variants.append(_Variant("reference fp32", "reference", "fp32", bench.B, bench.P))
        variants += _backend_variants(bench, options, precisions)
        if len(variants) == int(options.baseline == "reference"):
            raise InvalidArgumentError("none of the requested backends can run the requested precisions here")
        log(f"warming up {len(variants)} denoiser variant(s); then up to {options.timing_steps} steps each "
            f"(budget {options.budget_s:.0f} s per variant)")
        bench.time_variants(variants)
        overheads = {s: bench.sampler_overhead(*s) for s in bench.samplers}
        retrieval = bench.retrieval_stats()
        quality = {}
        for v in variants:
            if v.precision != "fp32":
                log(f"image difference of {v.name} against fp32")
                v.result["psnr_vs_fp32"] = quality[v.name] = bench.psnr_check(v)
        configs = _compose(bench, variants, overheads)
        load_end = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

    config = bench.model.config
    params = bench.model.parameter_count()
    report = {
        "schema": SCHEMA,
        "command": " ".join(sys.argv) if sys.argv else None,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(options).items()},
        "model": {
            "source": options.model or f"preset {options.preset} (random weights)",
            "config": config.to_dict(),
            "parameters": params,
            "flops": bench.flops,
            "gflop_per_block_call": bench.flops["full_forward_per_row"] / 1e9,
        },
        "setup": {
            "device": str(bench.device), "threads": torch.get_num_threads(),
            "threads_probe_s": bench.threads_probe,
            "interop_threads": torch.get_num_interop_threads(), "images": bench.B, "block_positions": bench.P,
            "rows_per_call": bench.B * bench.P, "n_steps": bench.T, "timing_steps": options.timing_steps,
            "warm_calls": options.warm_calls,
            "database_entries": bench.db_entries, "database": options.db or "synthetic (random codes)",
            "setup_s": bench.setup_s,
        },
        **info,
        "load_average": {"start": load_start, "end": load_end},
        "peak": bench.peak,
        "variants": [v.result for v in variants],
        "samplers": {f"{n}-{s}": overheads[(n, s)] for n, s in bench.samplers},
        "retrieval": retrieval,
        "configs": configs,
        "quality": quality,
        "peers": peer_ratios([v.result | {"kind": v.kind, "precision": v.precision} for v in variants]),
    }
    report["goals"] = evaluate_goals(report)
    report["wall_s"] = time.perf_counter() - started
    return report

"""``rissole-trt bench``: images/s of the denoiser backends against the reference baseline."""
from __future__ import annotations

import argparse

from ..defaults import PRECISIONS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="measure throughput against the reference sampler",
        description="Time the denoiser backends and samplers on a model (a preset with random weights, or a "
                    "saved model), side by side with the authors' way of sampling (--baseline reference), and "
                    "print a table; optionally write it as JSON and as a PNG plot. Per-step costs are timed "
                    "over --timing-steps steps and extrapolated to the full number of steps (the table marks "
                    "which numbers are extrapolated).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=["celeba64", "tiny"],
                     help="model geometry with random weights (default celeba64 unless --model is given)")
    src.add_argument("--model", metavar="DIR", help="a saved model directory instead of a preset")
    p.add_argument("--db", metavar="DIR", help="the model's database (default: a synthetic one of --db-size entries)")
    p.add_argument("--baseline", choices=["reference", "none"], default="reference",
                   help="time the authors' sampling procedure as the baseline (default) or not")
    p.add_argument("--backend", nargs="+", default=["torch"], metavar="NAME",
                   help="denoiser backends to time (rissole-trt info lists them; default torch)")
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS,
                   help="precisions to time each backend in, where it serves them (default: fp32 bf16)")
    p.add_argument("--sampler", nargs="+", default=["ddpm", "ddim:50", "dpmpp_2m:20"], metavar="NAME[:STEPS]",
                   help="samplers to compose with each backend (default: ddpm ddim:50 dpmpp_2m:20)")
    p.add_argument("--images", type=int, default=16,
                   help="images per batch; each denoiser call runs images x P block rows (default 16 = 64 rows)")
    p.add_argument("--timing-steps", type=int, default=20,
                   help="sampler steps timed per backend; per-step costs are extrapolated to all steps (default 20)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of the per-batch phases (default 3)")
    p.add_argument("--warm-calls", type=int, default=1, metavar="N",
                   help="untimed denoiser calls before each timed one in a backend's turn of the round-robin, "
                        "so that it is timed with its weights in cache as in a sampling loop (0: cold; default 1)")
    p.add_argument("--budget", type=float, default=90.0, metavar="SECONDS",
                   help="time budget per backend: fewer timed steps, or one image's rows scaled up, when a "
                        "backend is too slow to fit (default 90)")
    p.add_argument("--threads", type=int, help="torch threads (default: the CPUs this process may use)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--db-size", type=int, default=10_000, help="entries of the synthetic database (default 10000)")
    p.add_argument("--psnr-images", type=int, default=1,
                   help="images generated in fp32 and in reduced precision to compare them (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peers", action="store_true",
                   help="also time what a user would run instead: eager, torch.compile, ONNX Runtime, OpenVINO "
                        "(those installed), and print our fastest against the fastest of them")
    p.add_argument("--engine", metavar="DIR", help="also time a built engine (rissole-trt build-engine) for the model")
    p.add_argument("--profile", action="store_true", help="add each backend's top operators (torch.profiler)")
    p.add_argument("-o", "--output", metavar="JSON", help="write the full report as JSON")
    p.add_argument("--plot", metavar="PNG", help="write a plot of images/s per configuration")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchOptions, format_report, run_bench, write_json, write_plot
    from ..outputs import check_output

    for path, suffix in ((args.output, ".json"), (args.plot, ".png")):
        if path:  # before minutes of timing, not after
            check_output(path, overwrite=True, kind=f"{suffix} file", directory=False, inputs=(args.model, args.db),
                         recognise=lambda p, suffix=suffix: p.suffix == suffix)
    options = BenchOptions(
        preset=None if args.model else (args.preset or "celeba64"), model=args.model, db=args.db,
        baseline=None if args.baseline == "none" else args.baseline, backends=tuple(args.backend),
        precisions=tuple(args.precision), samplers=tuple(args.sampler), images=args.images,
        timing_steps=args.timing_steps, repeats=args.repeats, warm_calls=args.warm_calls,
        budget_s=args.budget, threads=args.threads,
        device=args.device, db_size=args.db_size, psnr_images=args.psnr_images, seed=args.seed,
        profile=args.profile, peers=args.peers, engine=args.engine)
    report = run_bench(options)
    print(format_report(report))
    if args.output:
        print(f"wrote {write_json(report, args.output)}")
    if args.plot:
        print(f"wrote {write_plot(report, args.plot)}")
    return 0

"""``rissole-trt build-engine``: time the candidate implementations here and keep the fastest."""
from __future__ import annotations

import argparse

from ..defaults import DEFAULT_BATCH_SIZES, PRECISIONS
from . import set_threads


def _batch_sizes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are comma-separated integers, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-engine", help="build a tuned engine for a model on this machine",
        description="Build an engine directory for a model on this machine: per batch-size bucket, time every "
                    "candidate (every registered backend that builds for the device: per-layer CPU tactics, the "
                    "torch backend, eager, torch.compile, ONNX Runtime, OpenVINO; TensorRT, CUDA graphs and Triton "
                    "on a GPU; rissole-trt info lists them), check each against the eager module within the "
                    "tolerance table and keep the fastest. The same build run again is a cache hit. Use it with "
                    "generate --engine DIR or Engine(..., engine=DIR).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="DIR", help="a saved model directory (default: the built-in model)")
    src.add_argument("--preset", choices=["celeba64", "tiny"], help="a benchmark preset (random weights, seed 0)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS, help="default fp32")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=list(DEFAULT_BATCH_SIZES), metavar="B1,B2,...",
                   help=f"buckets in images (default {','.join(map(str, DEFAULT_BATCH_SIZES))}); other batches "
                        "are padded up to the next one")
    p.add_argument("--budget", type=float, default=60.0, metavar="SECONDS",
                   help="timing budget of the whole build (default 60; compilation comes on top)")
    p.add_argument("--candidates", nargs="+", metavar="NAME",
                   help="whole-graph candidates to time (default: all for the device)")
    p.add_argument("--threads", type=int, help="torch CPU threads the engine is tuned for (default: torch's choice)")
    p.add_argument("--rebuild", action="store_true", help="replace an existing engine (re-tune)")
    p.add_argument("-o", "--output", required=True, metavar="ENGINE_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..disk import translate_disk_full
    from ..engine import default_asset_paths
    from ..memory import largest_bucket, translate_oom
    from ..models.rissole import RissoleModel
    from ..presets import make_preset_model
    from ..runtime.engine_build import build_engine
    from ..windows import rows_per_image

    set_threads(args.threads)
    source = None if args.preset else (args.model or default_asset_paths()[0])
    model = make_preset_model(args.preset, seed=0) if args.preset else RissoleModel.load(source)
    per_image = rows_per_image(model.config.unet.block_factor, model.config.block_size, model.default_overlap)
    advice = lambda: f"the largest bucket that fits now is {largest_bucket(model.config, per_image, args.device)}"  # noqa: E731
    with translate_oom("the build", advice), translate_disk_full(args.output):
        build_engine(model, args.output, device=args.device, precision=args.precision, batch_sizes=args.batch_sizes,
                     budget_s=args.budget, candidates=tuple(args.candidates) if args.candidates else None,
                     rebuild=args.rebuild, inputs=(source,))
    return 0

"""``rissole-trt info``: what was built and which optional backends are available, or why not."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="show build information and optional backend availability",
        description="Show how the compiled core was built, whether each optional component (CUDA kernels, "
        "torch CUDA, cuVS, FAISS) is available, and every denoiser backend with its capabilities "
        "(devices, precisions, what it is a candidate for) and whether it is available here, and if not, why.",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--engine", metavar="DIR", help="describe a built engine instead: what runs each bucket, "
                                                        "what every candidate measured, which tactics won")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rissole_trt.info import format_engine, format_info, info

    if args.engine:
        from rissole_trt.runtime.engine_build import read_manifest

        manifest = read_manifest(args.engine)
        print(json.dumps(manifest, indent=2) if args.json else format_engine(manifest))
        return 0
    report = info()
    print(json.dumps(report, indent=2) if args.json else format_info(report))
    return 0

"""The tuning loop: every candidate of every tunable layer timed on the layer's captured input at
each bucket, the fastest within tolerance kept; then the rows per call of each bucket."""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ...errors import InvalidArgumentError
from ...models.rissole import RissoleModel
from ...platform import precision_dtype
from ...timing import median, time_calls
from ...tolerances import excess
from .rewriter import convert_inputs, in_calls, tunable_unet
from .table import TacticTable


def layer_tolerance(precision: str) -> str:
    """The tolerance-table entry a layer's candidate must meet against the float32 layer."""
    return "tactic_fp32" if precision == "fp32" else "bf16_eps"


def _median_seconds(fn: Callable[[], object], min_time: float) -> float:
    """Median seconds of a call of ``fn`` after a warm-up: at least 3 calls, until ``min_time`` (at most 50)."""
    return median(time_calls(fn, min_time=min_time, min_reps=3, max_reps=50))


@torch.no_grad()
def tune(model: RissoleModel, precision: str, inputs_per_bucket: dict[int, tuple], *, seconds_per_candidate: float,
         log: Callable[[str], None] = lambda _: None) -> TacticTable:
    """Time every candidate of every tunable layer at each bucket and keep the fastest within tolerance.

    Args:
        inputs_per_bucket: rows -> the per-step network's float32 inputs (``step_spec`` order).
        seconds_per_candidate: timing budget of one candidate at one layer and bucket (at least 3 calls).
    """
    unet, tunables = tunable_unet(model.unet, precision)
    dtype = precision_dtype(precision)
    kind = layer_tolerance(precision)
    table = TacticTable(precision)
    reference_unet = copy.deepcopy(model.unet).float().eval()  # the plain float32 layers
    for rows, inputs in inputs_per_bucket.items():
        for tunable in tunables.values():
            tunable.capture = {}
        unet.forward_hoisted(*convert_inputs(inputs, dtype))
        captured = {name: tunable.capture[rows] for name, tunable in tunables.items()}
        for tunable in tunables.values():
            tunable.capture = None
        for name, tunable in tunables.items():  # inner layers first (see tunable_unet)
            args = captured[name]
            expected = reference_unet.get_submodule(name)(*(None if a is None else a.float() for a in args))
            record: dict = {"candidates": {}}
            for candidate, module in tunable.candidates.items():
                if hasattr(module, "applies_to") and not module.applies_to(*args):
                    continue  # e.g. the dense-map convolution on a large map
                out = module(*args)
                err = excess(out.float(), expected, kind)
                seconds = _median_seconds(lambda: module(*args), seconds_per_candidate)
                record["candidates"][candidate] = {"ms": seconds * 1e3, "excess": err}
            ok = {c: r for c, r in record["candidates"].items() if r["excess"] <= 1.0}
            if not ok:
                raise InvalidArgumentError(f"no candidate of layer {name} at {rows} rows is within tolerance")
            record["chosen"] = min(ok, key=lambda c: ok[c]["ms"])
            tunable.choice[rows] = record["chosen"]  # layers around this one are timed with it
            table.layers.setdefault(name, {})[str(rows)] = record
        log(f"tactics at {rows} rows: " + ", ".join(f"{c} x{n}" for c, n in _count(table, rows).items()))
    for rows, inputs in inputs_per_bucket.items():  # every bucket's layers are tuned: now the splits
        converted = convert_inputs(inputs, dtype)
        splits = [rows] + sorted((r for r in inputs_per_bucket if r < rows), reverse=True)
        ms = {str(r): 1e3 * _median_seconds(lambda: in_calls(unet, converted, r), seconds_per_candidate)
              for r in splits}
        chosen = min(splits, key=lambda r: ms[str(r)])
        table.calls[str(rows)] = {"chosen": chosen, "ms": ms}
        if chosen != rows:
            log(f"{rows} rows run as calls of {chosen} rows")
    return table


def _count(table: TacticTable, rows: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for per_rows in table.layers.values():
        chosen = per_rows[str(rows)]["chosen"]
        counts[chosen] = counts.get(chosen, 0) + 1
    return counts

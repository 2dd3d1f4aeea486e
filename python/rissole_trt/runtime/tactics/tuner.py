"""The tuning loop: every candidate of every tunable layer timed on the layer's captured input at
each bucket, the fastest within tolerance kept; then the rows per call of each bucket."""
from __future__ import annotations

import copy
from typing import Callable

import torch

from ...errors import InvalidArgumentError
from ...models.rissole import RissoleModel
from ...models.unet import BlockUNet
from ...platform import precision_dtype
from ...timing import median, time_calls
from ...tolerances import excess
from .rewriter import Tunable, convert_inputs, in_calls, tunable_unet
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
        captured = _capture(unet, tunables, convert_inputs(inputs, dtype), rows)
        for name, tunable in tunables.items():  # inner layers first (see tunable_unet)
            expected = reference_unet.get_submodule(name)(*(None if a is None else a.float() for a in captured[name]))
            record = _time_candidates(tunable, captured[name], expected, kind, seconds_per_candidate)
            if "chosen" not in record:
                raise InvalidArgumentError(f"no candidate of layer {name} at {rows} rows is within tolerance")
            tunable.choice[rows] = record["chosen"]  # layers around this one are timed with it
            table.layers.setdefault(name, {})[str(rows)] = record
        log(f"tactics at {rows} rows: " + ", ".join(f"{c} x{n}" for c, n in _count(table, rows).items()))
    # Every bucket's layers are tuned: now the splits.
    _tune_rows_per_call(unet, inputs_per_bucket, dtype, seconds_per_candidate, table, log)
    return table


def _capture(unet: BlockUNet, tunables: dict[str, Tunable], inputs: tuple, rows: int) -> dict[str, tuple]:
    """Per tunable layer, its real input when ``unet`` runs on ``inputs`` (``rows`` rows)."""
    for tunable in tunables.values():
        tunable.capture = {}
    unet.forward_hoisted(*inputs)
    captured = {name: tunable.capture[rows] for name, tunable in tunables.items()}
    for tunable in tunables.values():
        tunable.capture = None
    return captured


def _time_candidates(tunable: Tunable, args: tuple, expected: torch.Tensor, kind: str, seconds: float) -> dict:
    """Every candidate of one layer that applies, timed on ``args`` and compared with the float32
    layer's ``expected``; ``chosen``: the fastest within tolerance (none there: no ``chosen``)."""
    record: dict = {"candidates": {}}
    for candidate, module in tunable.candidates.items():
        if hasattr(module, "applies_to") and not module.applies_to(*args):
            continue  # e.g. the dense-map convolution on a large map
        err = excess(module(*args).float(), expected, kind)
        record["candidates"][candidate] = {"ms": _median_seconds(lambda: module(*args), seconds) * 1e3, "excess": err}
    ok = {c: r for c, r in record["candidates"].items() if r["excess"] <= 1.0}
    if ok:
        record["chosen"] = min(ok, key=lambda c: ok[c]["ms"])
    return record


def _tune_rows_per_call(unet: BlockUNet, inputs_per_bucket: dict[int, tuple], dtype: torch.dtype, seconds: float,
                        table: TacticTable, log: Callable[[str], None]) -> None:
    """Per bucket, the whole network timed as one call and as calls of each smaller bucket's rows;
    the fastest split goes into ``table.calls``."""
    for rows, inputs in inputs_per_bucket.items():
        converted = convert_inputs(inputs, dtype)
        splits = [rows] + sorted((r for r in inputs_per_bucket if r < rows), reverse=True)
        ms = {str(r): 1e3 * _median_seconds(lambda: in_calls(unet, converted, r), seconds) for r in splits}
        chosen = min(splits, key=lambda r: ms[str(r)])
        table.calls[str(rows)] = {"chosen": chosen, "ms": ms}
        if chosen != rows:
            log(f"{rows} rows run as calls of {chosen} rows")


def _count(table: TacticTable, rows: int) -> dict[str, int]:
    counts: dict[str, int] = {}
    for per_rows in table.layers.values():
        chosen = per_rows[str(rows)]["chosen"]
        counts[chosen] = counts.get(chosen, 0) + 1
    return counts

"""What the per-step backends share: fp32 arithmetic on CUDA, running any row count through fixed
buckets, and a private copy of the UNet (:class:`PerStepBackend`)."""
from __future__ import annotations

import copy
import functools
import importlib
import math
from contextlib import contextmanager
from typing import Callable, ClassVar, Iterator, Sequence

import torch

from ..models.unet import BlockUNet
from .backend import Artifacts, Backend


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 arithmetic on CUDA inside: torch lets cuDNN convolutions use TF32 (10-bit mantissas)
    by default, too coarse for a reference that fp32 candidates are checked against."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pad_or_split(rows: int, buckets: Sequence[int]) -> list[int]:
    """The buckets that run ``rows`` rows without timings: pieces of the largest bucket, and the
    remainder padded up to the smallest bucket that holds it."""
    largest = max(buckets)
    pieces = [largest] * (rows // largest)
    if rows % largest:
        pieces.append(min(b for b in buckets if b >= rows % largest))
    return pieces


@functools.lru_cache(maxsize=256)
def cheapest_cover(rows: int, costs: tuple[tuple[int, float], ...]) -> list[int]:
    """The buckets that run ``rows`` rows at the least total measured time (``costs``: (bucket
    rows, ms per call) pairs): each piece fills its bucket except the last, which is padded. Dynamic
    programming over the row count, once per row count. E.g. with 4, 64 and 256 rows at 4, 35 and
    135 ms, 9 rows run as 4 + 4 + 4 (12 ms, not one padded 64-row call) and 144 as 64 + 64 + 4 x 4."""
    best, choice = [0.0] + [math.inf] * rows, [0] * (rows + 1)
    for r in range(1, rows + 1):
        for bucket, ms in costs:
            total = ms + best[max(0, r - bucket)]
            if total < best[r]:
                best[r], choice[r] = total, bucket
    pieces = []
    while rows > 0:
        pieces.append(choice[rows])
        rows -= choice[rows]
    return pieces


def run_in_buckets(buckets: Sequence[int], run: Callable[..., torch.Tensor], x: torch.Tensor, cond_feat: torch.Tensor,
                   time_bias: torch.Tensor, pos_bias: torch.Tensor | None = None, *,
                   costs: dict[int, float] | None = None) -> torch.Tensor:
    """A per-step call of any number of rows through ``run``, which takes only rows in ``buckets``
    (fixed shapes: a plan's profiles, a captured graph, a tuned network). With the buckets' measured
    ``costs`` (ms per call) the rows go through the cheapest cover (:func:`cheapest_cover`), else
    :func:`pad_or_split`. A padded piece repeats its last row, and its extra outputs are cut off;
    a ``time_bias`` of one row (the samplers' shared timestep) is passed as it is."""
    rows = x.shape[0]
    pieces = cheapest_cover(rows, tuple(sorted(costs.items()))) if costs else pad_or_split(rows, buckets)
    outputs, start = [], 0
    for bucket in pieces:
        part = slice(start, min(rows, start + bucket))
        taken = part.stop - part.start

        def pad(t: torch.Tensor | None) -> torch.Tensor | None:
            if t is None:
                return None
            t = t[part]
            return t if taken == bucket else torch.cat([t, t[-1:].expand(bucket - taken, *t.shape[1:])])

        outputs.append(run(pad(x), pad(cond_feat), time_bias if time_bias.shape[0] == 1 else pad(time_bias),
                           pad(pos_bias))[:taken])
        start = part.stop
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


class PerStepBackend(Backend):
    """A :class:`Backend` that runs a private copy of the model's UNet: helpers to make and feed it."""

    def private_unet(self) -> BlockUNet:
        """An eval-mode, gradient-free copy of the model's UNet in this backend's dtype."""
        return copy.deepcopy(self.model.unet).eval().requires_grad_(False).to(self.dtype)

    def cast(self, inputs: tuple) -> tuple:
        return tuple(None if t is None else t.to(self.dtype) for t in inputs)


class OnnxGraphBackend(PerStepBackend):
    """A backend that runs the exported per-step ONNX graph (an engine's, else a private export)
    with the runtime package ``package`` (installed by the extra ``extra``)."""

    package: ClassVar[str]
    extra: ClassVar[str]

    @classmethod
    def probe(cls) -> tuple[bool, str]:
        try:
            import onnx  # noqa: F401  (the exporter's checker)
            module = importlib.import_module(cls.package)
        except ImportError as error:
            return False, f"needs onnx and {cls.package} ({error}); pip install 'rissole-trt[{cls.extra}]'"
        return True, f"{cls.package} {module.__version__}"

    @classmethod
    def from_artifacts(cls, model, precision: str, artifacts: Artifacts) -> "OnnxGraphBackend":
        return cls(model, precision, onnx_path=artifacts.onnx())

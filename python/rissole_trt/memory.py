"""Memory checked before work, in one place.

Every command that allocates in proportion to its arguments asks here first: ``generate`` and
``eval`` (:meth:`Engine.generate_plan`: the output array and one batch), ``Engine.generate_iter``
(one batch), ``build-engine`` (every bucket's inputs and references plus the largest bucket's
step), ``generate-dataset`` (per worker: one batch and one shard). A request beyond the memory
available here (MemAvailable, within the cgroup's limit; the GPU's free memory on CUDA) is refused
as one :class:`OutOfMemoryError` naming the largest batch or bucket that fits. An allocation that
still fails (the estimate is per model, the machine is shared) is turned into the same error by
:func:`translate_oom`.

The estimates are calibrated, not guessed: peak resident memory (VmHWM) of the built-in model at two
sizes, each in a fresh process (``OMP_NUM_THREADS=1 python scripts/measure_step_memory.py 16 128``;
torch 2.13 CPU), gives the bytes per image of a generated batch and per row of a denoiser step.
Other models scale by their width: the UNet's channels times the block area for a step, the
autoencoder's channels times the image area for the decode.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutOfMemoryError

__all__ = ["available", "batch_bytes", "check", "check_build", "check_generate", "check_workers", "cluster_workers", "image_bytes",
           "largest_batch", "largest_bucket", "step_bytes_per_row", "translate_oom", "worker_bytes"]

# Measured (scripts/measure_step_memory.py 16 128): a denoiser step over a row, at its peak; what a
# row's inputs and output hold after the step (build-engine keeps them for every bucket); a
# generated image at the batch's peak (its P windows' steps, retrieval and decode).
STEP_PEAK_PER_ROW = 143_000
STEP_HELD_PER_ROW = 101_000
GENERATE_PEAK_PER_IMAGE = 2_690_000
_BUILTIN_ROWS_PER_IMAGE = 9  # the built-in model's windows per image with overlap "half"
# The part of an image's peak that is not the denoiser: decode and retrieval.
DECODE_PER_IMAGE = GENERATE_PEAK_PER_IMAGE - _BUILTIN_ROWS_PER_IMAGE * STEP_PEAK_PER_ROW
# The built-in model's widths, the unit of the scaling.
_BUILTIN_STEP_WIDTH = (48 + 96) * 8 * 8
_BUILTIN_DECODE_WIDTH = (16 + 32) * 64 * 64
# A build-engine candidate (ONNX Runtime, OpenVINO, torch.compile) runs the step beside the eager
# reference with its own arena: two steps' activations at once.
CANDIDATE_WORKSPACE = 2


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1), None without one."""
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text != "max" and int(text) < 2**60:
                return int(text) - int(Path(usage).read_text())
        except (OSError, ValueError):
            continue
    return None


def available(device: str = "cpu") -> int:
    """Bytes this process can still allocate on ``device`` without swapping or the OOM killer."""
    if str(device).startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    room = _cgroup_room()
    return free if room is None else min(free, room)


def _step_scale(config) -> float:
    return sum(config.unet.channels) * config.block_size ** 2 / _BUILTIN_STEP_WIDTH


def step_bytes_per_row(config) -> int:
    """Peak bytes of one denoiser step per row for a model of ``config`` (a RissoleConfig)."""
    return int(STEP_PEAK_PER_ROW * _step_scale(config))


def image_bytes(config) -> int:
    """The uint8 pixels of one generated image."""
    return config.image_size ** 2 * 3


def batch_bytes(config, batch_size: int, rows_per_image: int) -> int:
    """Peak bytes of generating one batch of ``batch_size`` images."""
    decode = DECODE_PER_IMAGE * sum(config.autoencoder.channels) * config.image_size ** 2 / _BUILTIN_DECODE_WIDTH
    return int(batch_size * (rows_per_image * step_bytes_per_row(config) + decode))


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check(what: str, need: int, largest: Callable[[int], int], unit: str, device: str = "cpu") -> None:
    """Refuse ``what`` (``need`` bytes) before any work when it cannot fit on ``device``.

    ``largest(bytes)`` is the largest ``unit`` (batch, bucket, n) that fits in that many bytes: the
    error's advice.
    """
    room = available(device)
    if need > room:
        raise OutOfMemoryError(f"{what} needs about {_gib(need)} and {_gib(room)} is available on {device}; "
                               f"the largest {unit} that fits is {largest(room)}")


def _largest(per_unit: int, fixed: int = 0) -> Callable[[int], int]:
    return lambda room: max(0, (room - fixed) // max(1, per_unit))


def largest_batch(config, rows_per_image: int, device: str = "cpu") -> int:
    """The largest batch of images whose generation fits in the memory available now."""
    return available(device) // max(1, batch_bytes(config, 1, rows_per_image))


def check_generate(config, n: int, batch_size: int, rows_per_image: int, device: str = "cpu", *,
                   keep: bool) -> None:
    """Generating ``n`` images in batches of ``batch_size``: one batch on ``device`` and, with ``keep``,
    all ``n`` images in one host array (generate_iter keeps one batch at a time)."""
    batch_size = min(batch_size, n)
    batch = batch_bytes(config, batch_size, rows_per_image)
    check(f"a batch of {batch_size} images", batch, _largest(batch // batch_size), "batch size", device)
    if keep:
        beside = 0 if str(device).startswith("cuda") else batch
        check(f"{n} images of {config.image_size}x{config.image_size} in one array", n * image_bytes(config) + beside,
              _largest(image_bytes(config), beside), "n (Engine.generate_iter streams any n)")


def _build_per_row(config) -> tuple[int, int]:
    """build-engine's bytes per row: held for the whole build (inputs, reference output) and at the step."""
    return int(STEP_HELD_PER_ROW * _step_scale(config)), step_bytes_per_row(config) * CANDIDATE_WORKSPACE


def largest_bucket(config, rows_per_image: int, device: str = "cpu") -> int:
    """The largest bucket (in images) that build-engine can build alone in the memory available now."""
    held, step = _build_per_row(config)
    return available(device) // (rows_per_image * (held + step))


def check_build(config, buckets: list[int], rows_per_image: int, device: str = "cpu") -> None:
    """build-engine: every bucket's inputs and reference outputs are kept for the whole build, and the
    largest bucket's step runs beside a candidate's."""
    held, step = _build_per_row(config)
    need = sum(buckets) * rows_per_image * held + max(buckets) * rows_per_image * step
    check(f"building buckets {','.join(map(str, buckets))} ({rows_per_image} rows per image)", need,
          _largest(rows_per_image * (held + step)), "bucket (alone)", device)


def worker_bytes(config, batch_size: int, shard_size: int, rows_per_image: int) -> int:
    """A generate-dataset worker's peak: one batch being generated and a shard's images, raw and encoded."""
    return batch_bytes(config, batch_size, rows_per_image) + shard_size * image_bytes(config) * 2


def check_workers(config, workers: int, batch_size: int, shard_size: int, rows_per_image: int) -> None:
    """generate-dataset on this machine: each worker runs a batch and holds a shard's images."""
    per_worker = worker_bytes(config, batch_size, shard_size, rows_per_image)
    check(f"{workers} workers (batch {batch_size}, shard {shard_size})", workers * per_worker,
          _largest(per_worker), "number of workers")


def cluster_workers(node_memory: list[float], workers: int, per_worker: int, *, asked: bool) -> int:
    """generate-dataset on a Ray cluster it joined: how many workers of ``per_worker`` bytes its nodes
    hold (``node_memory``: each alive node's schedulable memory, Ray's ``memory`` resource). Workers
    ``asked`` for beyond that are refused; a default number is lowered to what fits."""
    fits = sum(int(room // per_worker) for room in node_memory)
    if fits == 0:
        raise OutOfMemoryError(f"a worker needs about {_gib(per_worker)} (one batch and one shard) and the largest "
                               f"node of the Ray cluster offers {_gib(max(node_memory, default=0))}; "
                               "lower batch_size or shard_size")
    if asked and workers > fits:
        raise OutOfMemoryError(f"{workers} workers need about {_gib(workers * per_worker)} and the Ray cluster's "
                               f"nodes hold at most {fits} workers of {_gib(per_worker)}: use workers={fits} or fewer")
    return min(workers, fits)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, OutOfMemoryError):
        return False
    text = str(error)
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or "can't allocate memory" in text or "out of memory" in text.lower())


@contextmanager
def translate_oom(what: str, advice: Callable[[], str]) -> Iterator[None]:
    """An allocation that fails inside the block (torch's ``DefaultCPUAllocator: can't allocate
    memory``, ``torch.cuda.OutOfMemoryError``, numpy's ``MemoryError``) becomes one
    :class:`OutOfMemoryError` with ``advice()`` (e.g. the largest batch that fits)."""
    try:
        yield
    except (RuntimeError, MemoryError) as error:
        if not _is_oom(error):
            raise
        raise OutOfMemoryError(f"{what} ran out of memory ({str(error).splitlines()[0][:120]}); {advice()}") from error

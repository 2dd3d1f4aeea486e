"""What decides a run's images: the :class:`GenerationPlan`, the checks of its settings, and the
per-image seeds that make image i depend on (seed, i) alone."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..diffusion import SAMPLERS, make_sampler
from ..diffusion.schedules import NoiseSchedule
from ..errors import InvalidArgumentError, OutOfRangeError
from ..windows import check_overlap

#: ``clip``: ``none`` (the reference) or ``codebook`` (each step's implied clean latent clamped to the
#: per-channel range of the codebook rows, i.e. of every latent the decoder can see).
CLIPS = ("none", "codebook")
#: The sampler a user gets without asking: DPM-Solver++(2M) with 20 steps gave the best SWD per
#: second of compute on the built-in model (README, "Quality"); ``ddpm`` is the exact one.
DEFAULT_SAMPLER, DEFAULT_STEPS = "dpmpp_2m", 20


def positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def image_seed(seed: int, image: int, stream: int) -> int:
    """A 63-bit seed for one image's stream (0: noise, 1: query) from (seed, image number)."""
    return int(np.random.SeedSequence([seed, image, stream]).generate_state(1, np.uint64)[0] >> 1)


def image_generators(seed: int, first: int, count: int, device: torch.device) -> list[torch.Generator]:
    """One noise generator per image, seeded by (seed, image number): batch-independent noise."""
    return [torch.Generator(device=device).manual_seed(image_seed(seed, i, 0))
            for i in range(first, first + count)]


def query_draws(seed: int, images: np.ndarray, size: int) -> np.ndarray:
    """Per image number, its query's position in a pool of ``size`` entries, drawn from (seed, image)."""
    return np.array([np.random.default_rng(image_seed(seed, int(i), 1)).integers(size) for i in images],
                    dtype=np.int64)


@dataclass(frozen=True, eq=False)
class GenerationPlan:
    """Everything that decides the images of one run; small and picklable, whatever ``n``.

    Image i's query and noise follow from (``seed``, i) alone. ``query_pool`` holds the database
    ids queries are drawn from (None: the whole database), ``query_keys`` the retrieval keys of
    user query images (image i uses row i mod m). Make one with :meth:`Engine.plan`.
    """

    n: int
    seed: int
    sampler: str
    steps: int | None
    eta: float | None
    batch_size: int
    k: int | None
    exclude_self: bool
    clip: str = "none"
    overlap: str = "none"
    query_pool: np.ndarray | None = field(default=None, repr=False)
    query_keys: np.ndarray | None = field(default=None, repr=False)

    def batches(self, start: int = 0, count: int | None = None) -> list[tuple[int, int]]:
        """``(first, count)`` of the aligned batches that images ``start .. start+count-1`` lie in."""
        count = self.n - start if count is None else count
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or start < 0:
            raise InvalidArgumentError(f"start must be a non-negative integer, got {start!r}")
        positive_int(count, "count")
        if start + count > self.n:
            raise OutOfRangeError(f"images {start}..{start + count - 1} lie outside the plan's {self.n} images")
        first = start - start % self.batch_size
        return [(b, min(self.batch_size, self.n - b)) for b in range(first, start + count, self.batch_size)]


def check_sampling(schedule: NoiseSchedule, block_factor: int, block_size: int, *, seed: int, sampler: str,
                   steps: int | None, batch_size: int, eta: float | None, clip: str,
                   overlap: str) -> tuple[int | None, int]:
    """Check a plan's sampling settings (one clear line for each bad one); the steps to run
    (``DEFAULT_STEPS`` for the default sampler when none are given) and the batch size as an int."""
    if clip not in CLIPS:
        raise InvalidArgumentError(f"unknown clip {clip!r}; choose one of {', '.join(CLIPS)}")
    check_overlap(overlap, block_factor, block_size)
    if sampler not in SAMPLERS:
        raise InvalidArgumentError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == DEFAULT_SAMPLER and steps is None:
        steps = DEFAULT_STEPS
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidArgumentError(f"seed must be a non-negative integer, got {seed!r}")
    make_sampler(sampler, schedule, steps, eta=eta)  # validates steps and eta
    return steps, batch_size


def check_query_pool(query_ids, count: int) -> np.ndarray:
    """``query_ids`` as int64 database ids, each inside a database of ``count`` entries."""
    pool = np.asarray(query_ids)
    if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer):
        raise InvalidArgumentError("query_ids must be a non-empty 1-D sequence of database ids")
    if pool.min() < 0 or pool.max() >= count:
        bad = pool[(pool < 0) | (pool >= count)][0]
        raise OutOfRangeError(f"query id {int(bad)} is outside the database [0, {count})")
    return pool.astype(np.int64)

"""The Engine: query -> retrieve -> gather neighbour blocks -> denoise all blocks -> decode.

The plan (what decides the images) is :mod:`.plan`; this module runs one.

    engine = rissole_trt.Engine("model_dir", "db_dir")
    images = engine.generate(16, seed=0)                      # uint8 [16, H, W, 3]

    plan = engine.plan(1_000_000, seed=0)                      # small, picklable, O(1) in n
    part = engine.generate_batch(plan, 5000, 100)             # images 5000..5099 of that run
    for start, images in engine.generate_iter(plan): ...      # any n, one batch at a time

Image i of a plan depends on (seed, i) alone: its query is drawn from its own generator and its
noise from another, so any slice of a plan can be generated anywhere (another process, another
machine) and gives bitwise the images of the full run. Batches are aligned to the plan's
``batch_size``: a slice runs the whole batches it touches, because GEMMs and convolutions of other
shapes round differently on some CPUs. Per batch, retrieval, the neighbour gather and every
timestep-independent part of the denoiser run once; each sampler step is one denoiser call over all
P blocks of all images in the batch.
"""
from __future__ import annotations

import itertools
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import memory, ops
from ..builder import autoencoder_fingerprint
from ..defaults import PRECISIONS
from ..diffusion import clip_x0, make_sampler, sample
from ..errors import (
    DatabaseError,
    FingerprintMismatchError,
    InvalidArgumentError,
    InvalidTypeError,
    MissingFileError,
    NonFiniteError,
)
from ..images import from_model_output, to_model_input
from ..models.rissole import RissoleModel
from ..platform import resolve_device
from ..retrieval.database import Database, compute_keys
from ..runtime import registry
from ..runtime.base import exact_fp32
from ..runtime.loop_graph import LOOP_SAMPLERS
from ..windows import ShiftedWindows, rows_per_image
from .plan import (
    DEFAULT_SAMPLER,
    GenerationPlan,
    check_query_pool,
    check_sampling,
    image_generators,
    positive_int,
    query_draws,
)

ProgressCallback = Callable[[int, int], None]


def default_asset_paths() -> tuple[Path, Path]:
    """Where the built-in default model and its database live inside the package."""
    root = Path(__file__).resolve().parents[1] / "assets" / "default"
    return root / "model", root / "db"


def _step_progress(bar: tqdm, first: int, size: int, num_steps: int) -> Callable[[], None]:
    """The per-step callback of one batch: the bar shows whole images, the batch's share of the
    sampler steps done so far (a float share would print counts like ``2.4000000000000004/36``)."""
    steps = itertools.count(1)

    def on_step() -> None:
        bar.n = first + size * min(next(steps), num_steps) // num_steps
        bar.refresh()

    return on_step


@dataclass(frozen=True)
class Retrieval:
    """What a batch conditions on: per image, the query (a database id or -1 for a user image)
    and the ids of its k neighbours."""

    query_ids: np.ndarray  # int64 [n]
    neighbour_ids: np.ndarray  # int64 [n, k]
    scores: np.ndarray  # float32 [n, k]


def _check_path_type(name: str, value: object, *objects: type) -> None:
    """``value`` is None, a path or one of ``objects``; else one clear line, not a TypeError from deep inside."""
    if value is not None and not isinstance(value, (str, os.PathLike, *objects)):
        allowed = ", ".join(["a path", *(f"a {t.__name__}" for t in objects), "or None"])
        raise InvalidTypeError(f"Engine {name} must be {allowed}, got {type(value).__name__} {value!r}")


class Engine:
    """A loaded model, its database and a denoiser backend, ready to generate.

    Args:
        model: a model directory (:meth:`RissoleModel.save`), a loaded :class:`RissoleModel`, or None
            for the built-in default model.
        database: a database directory (``rissole-trt build-db``), an opened :class:`Database`, or
            None: the built-in database with the built-in model; none at all for a model without
            retrieval (``conditioning="none"``), which must not be given one.
        device: ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
        backend: a denoiser backend of :mod:`rissole_trt.runtime` (``rissole-trt info`` lists them)
            or ``"auto"``: the first available one in the order for the device and the model's
            conditioning mode (:data:`AUTO_ORDER`).
        precision: ``"fp32"`` (exact; the default), ``"bf16"`` (fast only on hardware with bf16
            arithmetic; a warning says when it is emulated) or ``"fp16"`` (TensorRT on CUDA only);
            with ``engine``, the engine's.
        index: the search index kind (see :func:`rissole_trt.retrieval.make_index`); ``"auto"`` on
            a CUDA device searches with cuVS (brute force, CAGRA from 100k entries) when it is
            installed, and otherwise warns and searches exactly with torch on the device.
        engine: a directory made by ``rissole-trt build-engine`` for this model: its per-bucket
            choices run the denoiser (checked against the model and this machine when loaded).
    """

    def __init__(self, model: str | os.PathLike | RissoleModel | None = None,
                 database: str | os.PathLike | Database | None = None, *, device: str | torch.device = "auto",
                 backend: str = "auto", precision: str | None = None, index: str = "auto",
                 engine: str | os.PathLike | None = None) -> None:
        _check_path_type("model", model, RissoleModel)
        _check_path_type("database", database, Database)
        _check_path_type("engine", engine)
        manifest = None
        if engine is not None:  # a built engine decides the backend and the precision
            from ..runtime.engine_build import read_manifest

            manifest = read_manifest(engine)
            if backend != "auto":
                raise InvalidArgumentError(f"give a backend or an engine, not both (backend={backend!r})")
            if precision not in (None, manifest["precision"]):
                raise InvalidArgumentError(f"engine {engine} runs {manifest['precision']}, not {precision}")
            precision = manifest["precision"]
        precision = "fp32" if precision is None else precision
        if precision not in PRECISIONS:
            raise InvalidArgumentError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.device = resolve_device(device, auto=None if manifest is None else manifest["device"]["type"])
        if model is None:
            default_model, default_db = default_asset_paths()
            if not (default_model / "config.json").is_file():
                raise MissingFileError("this install has no built-in default model; give a model and a database")
            model = default_model
            database = default_db if database is None else database
        if not isinstance(model, RissoleModel):
            model = RissoleModel.load(model)
        self.model = model.to(self.device).eval()
        config = self.model.config
        chosen = (None if manifest is not None
                  else registry.select(backend, self.device, precision, config.unet.conditioning))
        self.database: Database | None = None
        self.index = None
        self.index_kind = index
        if not config.unet.uses_retrieval:
            if database is not None:
                raise InvalidArgumentError("this model uses no retrieval (conditioning 'none'); give it no database")
        elif database is None:
            raise DatabaseError("this model conditions on retrieved neighbours: it needs a database (rissole-trt build-db)")
        else:
            self.database = self._open_database(database)
            # On a GPU the index searches there (cuVS), so the queries never leave the device's side.
            self.index = self.database.index(index, device=str(self.device))
        self.precision = precision
        if manifest is not None:
            from ..runtime.engine_build import load_engine

            self.runtime = load_engine(engine, self.model)
        else:
            self.runtime = chosen(self.model, precision)
        self.backend = self.runtime.name
        if not self.runtime.native:
            warnings.warn(f"{precision} is emulated on {self.device} (no native {precision} arithmetic): "
                          "it runs many times slower than fp32 here", stacklevel=2)
        self._denoiser = self.runtime.denoiser
        self._announced: set[str] = set()  # the slower-path warnings already given

    def _open_database(self, database: str | os.PathLike | Database) -> Database:
        fingerprint = autoencoder_fingerprint(self.model.autoencoder)
        if isinstance(database, Database):
            if database.fingerprint != fingerprint:
                raise FingerprintMismatchError(f"database {database.path} was built with another autoencoder than this model's")
        else:
            database = Database.open(database, expected_fingerprint=fingerprint)
        config = self.model.config
        expected = (config.autoencoder.latent_dim, config.latent_size, config.latent_size)
        if database.latent_shape != expected or database.block_factor != config.unet.block_factor:
            raise DatabaseError(
                f"database latents {database.latent_shape} with block factor {database.block_factor} "
                f"do not match the model's {expected} with block factor {config.unet.block_factor}")
        return database

    def _require_database(self, what: str) -> Database:
        if self.database is None:
            raise InvalidArgumentError(f"{what} needs retrieval, and this model uses none (conditioning 'none')")
        return self.database

    # ------------------------------------------------------------------ validation

    def _check_query_images(self, query: np.ndarray) -> np.ndarray:
        size = self.model.config.image_size
        query = np.asarray(query)
        if query.ndim == 3:
            query = query[None]
        if query.ndim != 4 or query.shape[1:] != (size, size, 3) or query.dtype != np.uint8 or len(query) == 0:
            raise InvalidArgumentError(
                f"query images must be uint8 [m >= 1, {size}, {size}, 3], got {query.dtype} {list(query.shape)}")
        return query

    def _check_k(self, k: int | None, exclude_self: bool) -> int:
        database = self._require_database("k")
        model_k = self.model.config.unet.k
        k = model_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")
        if k > database.count - int(exclude_self):
            raise InvalidArgumentError(f"k = {k} is larger than the database allows ({database.count} entries"
                                       f"{', one of them the query itself' if exclude_self else ''})")
        if k != model_k:
            raise InvalidArgumentError(f"this model was trained with k = {model_k} neighbours; k = {k} cannot be used")
        return int(k)

    # ------------------------------------------------------------------ plan

    def plan(self, n: int, *, seed: int = 0, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
             k: int | None = None, batch_size: int = 16, exclude_self: bool = True,
             query: np.ndarray | None = None, query_ids: Sequence[int] | None = None,
             eta: float | None = None, clip: str = "none", overlap: str | None = None) -> GenerationPlan:
        """Check every setting and fix what the n images will be, without generating any.

        Args:
            n: number of images.
            seed: seeds every image's query and noise (image i: from (seed, i)).
            sampler: ``dpmpp_2m`` (default, 20 steps), ``ddim`` or ``ddpm`` (exact, all T steps).
            steps: sampler steps (ddim / dpmpp_2m; default from the sampler).
            k: neighbours per block; must be the model's k (the default).
            batch_size: images denoised together (each contributes P block rows).
            exclude_self: a database query is not its own neighbour (the reference behaviour is False).
            query: user images ``[m, H, W, 3]`` uint8 to retrieve with instead of database entries
                (image i uses ``query[i % m]``).
            query_ids: database ids to draw queries from (e.g. one category).
            eta: DDIM noise (0 deterministic).
            clip: ``none`` (the reference's sampling) or ``codebook``: every step's implied clean
                latent is clamped to the codebook's per-channel range, which keeps an imperfect
                denoiser from drifting off the codebook (see the README, "Quality").
            overlap: ``none`` (the reference: aligned blocks) or ``half``: each step also denoises
                the windows shifted by half a block and blends them, so that blocks see the blocks
                beside them (:mod:`rissole_trt.windows`; fewer seams, 9/4 the denoiser work).
                None (default): the model's :attr:`~RissoleModel.default_overlap` (``half`` for the
                built-in model, ``none`` for imported and newly trained ones).
        """
        n = positive_int(n, "n")
        if overlap is None:
            overlap = self.model.default_overlap
        config = self.model.config
        steps, batch_size = check_sampling(self.model.schedule, config.unet.block_factor, config.block_size,
                                           seed=seed, sampler=sampler, steps=steps, batch_size=batch_size,
                                           eta=eta, clip=clip, overlap=overlap)
        pool = keys = None
        if not self.model.config.unet.uses_retrieval:
            if k is not None or query is not None or query_ids is not None:
                self._require_database("k, query and query_ids")
        else:
            if query is not None and query_ids is not None:
                raise InvalidArgumentError("give query (images) or query_ids (database entries), not both")
            k = self._check_k(k, exclude_self and query is None)
            if query is not None:
                images = self._check_query_images(query)
                with torch.no_grad():
                    latents = self.model.encode(to_model_input(images, self.device))
                keys = compute_keys(latents.cpu(), self.database.key_kind, self.database.block_factor)
            elif query_ids is not None:
                pool = check_query_pool(query_ids, self.database.count)
        return GenerationPlan(n=n, seed=int(seed), sampler=sampler, steps=steps, eta=eta, batch_size=batch_size,
                              k=k, exclude_self=bool(exclude_self), clip=clip, overlap=overlap, query_pool=pool,
                              query_keys=keys)

    # ------------------------------------------------------------------ the steps

    def retrieve(self, plan: GenerationPlan, start: int = 0, count: int | None = None) -> Retrieval:
        """Queries and neighbours of images ``start .. start+count-1`` of ``plan`` (default: all)."""
        database = self._require_database("retrieve")
        count = plan.n - start if count is None else count
        plan.batches(start, count)  # range check
        images = np.arange(start, start + count)
        if plan.query_keys is not None:
            keys = plan.query_keys[images % len(plan.query_keys)]
            chosen = np.full(count, -1, dtype=np.int64)
            scores, ids = self.index.search(keys, plan.k)
        else:
            size = database.count if plan.query_pool is None else len(plan.query_pool)
            draws = query_draws(plan.seed, images, size)
            chosen = draws if plan.query_pool is None else plan.query_pool[draws]
            scores, ids = self.index.search(database.keys[chosen], plan.k,
                                            exclude=chosen if plan.exclude_self else None)
        return Retrieval(chosen, ids.astype(np.int64), scores)

    @torch.no_grad()
    def decode(self, blocks: torch.Tensor) -> torch.Tensor:
        """Denoised blocks ``[B, P, C, bs, bs]`` -> images ``[B, 3, H, W]`` in [-1, 1].

        One image at a time: torch picks its CPU convolution algorithm (oneDNN or its own) by batch
        size, and the two round differently; per image, the decoder's arithmetic does not depend on
        the batch. The decoder is a small part of the time (see ``rissole-trt bench``).
        """
        config = self.model.config
        latents = ops.merge_blocks(blocks, config.unet.block_factor) / config.diffusion.latent_scale
        return torch.cat([self.model.decode(latents[i:i + 1]) for i in range(len(latents))])

    image_generators = staticmethod(image_generators)

    @staticmethod
    def _check_finite(values: torch.Tensor, first: int, where: str) -> None:
        """Stop with :class:`NonFiniteError` when ``values`` (dim 0: the batch's images) hold NaN or inf."""
        if bool(torch.isfinite(values).all()):
            return
        bad = (~torch.isfinite(values)).flatten(1).any(1).nonzero().flatten().tolist()
        raise NonFiniteError(
            f"the denoiser returned NaN or infinite values {where} for images "
            f"{[first + i for i in bad][:8]}: the model's weights are "
            "broken (a NaN or infinity in them, or a corrupt file loaded with verify=False)")

    def _checked(self, denoiser, first: int, count: int):
        """``denoiser`` that stops with :class:`NonFiniteError` as soon as ε is NaN or infinite."""
        def eps_fn(x_t: torch.Tensor, t) -> torch.Tensor:
            eps = denoiser(x_t, t)
            self._check_finite(eps, first, f"at timestep {t.tolist() if isinstance(t, torch.Tensor) else t}")
            return eps
        return eps_fn

    def _announce_once(self, message: str) -> None:
        """Warn (once per Engine and message) that a batch takes a slower path than the backend's fastest."""
        if message not in self._announced:
            self._announced.add(message)
            warnings.warn(message, stacklevel=2)

    def _loop_sampler(self, sampler, rows: int, overlap: str = "none"):
        """The runtime's whole-loop sampler for ``rows`` rows (CUDA graphs), or None to step in Python."""
        if not self.runtime.captures_loop or sampler.name not in LOOP_SAMPLERS:
            return None
        if self.runtime.reads_codes:
            # A code-reading denoiser's neighbours are ids checked on the host at every call: no capture holds them.
            self._announce_once(f"the {self.runtime.name} backend reads the neighbours' codes, which its whole-loop "
                                f"capture cannot hold: overlap={overlap!r} steps the loop in Python (slower)")
            return None
        return self.runtime.loop_sampler(rows)

    def _batch_denoiser(self, plan: GenerationPlan, ids: np.ndarray | None, cond: torch.Tensor):
        """The batch's ε over its blocks: through the shifted windows with ``overlap="half"``, and with
        the neighbours read from the database's codes by a runtime whose fused kernel reads them."""
        config = self.model.config
        windows = ShiftedWindows(config.unet.block_factor, config.block_size) if plan.overlap == "half" else None
        if ids is not None and self.runtime.reads_codes:
            return self.runtime.code_denoiser(cond, torch.from_numpy(ids), self.database.codes_tensor(self.device),
                                              windows=windows)
        return self._denoiser(cond) if windows is None else windows.denoiser(self._denoiser, cond)

    @torch.no_grad()
    @exact_fp32()  # fp32 is IEEE fp32 on CUDA too (torch's default lets cuDNN use TF32)
    def _run_batch(self, plan: GenerationPlan, first: int, count: int, on_step: Callable[[], None] | None) -> np.ndarray:
        config = self.model.config
        p, c, bs = config.n_blocks, config.autoencoder.latent_dim, config.block_size
        if self.database is None:
            ids, cond = None, torch.empty((count, p, 0, bs, bs), device=self.device)  # no neighbours
        else:
            ids = self.retrieve(plan, first, count).neighbour_ids
            cond = self.database.neighbour_blocks(ids, device=self.device)  # [b, P, k*C, bs, bs]
        denoiser = self._batch_denoiser(plan, ids, cond)
        clip = None
        if plan.clip == "codebook":
            codebook = self.model.autoencoder.codebook.detach() * config.diffusion.latent_scale
            shape = (1, 1, -1, 1, 1)  # [B, P, C, bs, bs]
            clip = (codebook.min(0).values.view(shape), codebook.max(0).values.view(shape))
        generators = self.image_generators(plan.seed, first, count, self.device)
        sampler = make_sampler(plan.sampler, self.model.schedule, plan.steps, eta=plan.eta)
        shape = (count, p, c, bs, bs)
        rows = count * rows_per_image(config.unet.block_factor, bs, plan.overlap)
        whole_loop = self._loop_sampler(sampler, rows, plan.overlap)
        if whole_loop is not None:  # the whole loop replayed from one CUDA graph: no Python per step
            blocks = whole_loop(denoiser, sampler, shape, generators, clip=clip)
            self._check_finite(blocks, first, "the sampling loop (captured whole)")
            if on_step is not None:
                for _ in range(sampler.num_steps):
                    on_step()
        else:
            eps_fn = self._checked(denoiser, first, count)
            if clip is not None:
                eps_fn = clip_x0(eps_fn, self.model.schedule, *clip)
            blocks = sample(eps_fn, shape, self.model.schedule, sampler, generator=generators, device=self.device,
                            fused_step=self.runtime.fused_step,
                            progress=None if on_step is None else lambda done, total: on_step())
        return from_model_output(self.decode(blocks))

    def _rows(self, plan: GenerationPlan) -> int:
        return rows_per_image(self.model.config.unet.block_factor, self.model.config.block_size, plan.overlap)

    def _check_memory(self, plan: GenerationPlan, keep: bool) -> None:
        """Refuse a plan whose batch (and, with ``keep``, whole output) cannot fit, before any work."""
        memory.check_generate(self.model.config, plan.n, plan.batch_size, self._rows(plan), str(self.device),
                              keep=keep)

    def _batch_memory(self, plan: GenerationPlan, size: int):
        """A failed allocation in a batch, reported with the largest batch that fits now."""
        def advice() -> str:
            fits = memory.largest_batch(self.model.config, self._rows(plan), str(self.device))
            return f"the largest batch size that fits now is {fits}"
        return memory.translate_oom(f"a batch of {size} images", advice)

    def generate_batch(self, plan: GenerationPlan, start: int, count: int) -> np.ndarray:
        """Images ``start .. start+count-1`` of ``plan``, uint8 ``[count, H, W, 3]``, bitwise as in
        :meth:`generate` (the aligned batches the slice touches are run whole)."""
        self._check_memory(plan, keep=False)
        parts = []
        for first, size in plan.batches(start, count):
            with self._batch_memory(plan, size):
                images = self._run_batch(plan, first, size, None)
            lo, hi = max(start, first) - first, min(start + count, first + size) - first
            parts.append(images[lo:hi])
        return np.concatenate(parts)

    def generate_iter(self, plan: GenerationPlan, *, progress: bool = False,
                      callback: ProgressCallback | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first image number, uint8 images)`` batch by batch: memory stays one batch.

        ``callback(images_done, n)`` is called after each batch; ``progress`` shows a bar of images.
        """
        num_steps = make_sampler(plan.sampler, self.model.schedule, plan.steps, eta=plan.eta).num_steps
        self._check_memory(plan, keep=False)
        with tqdm(total=plan.n, disable=not progress, unit="img", desc="generating", dynamic_ncols=True) as bar:
            done = 0
            for first, size in plan.batches():
                on_step = _step_progress(bar, first, size, num_steps) if progress else None
                with self._batch_memory(plan, size):
                    images = self._run_batch(plan, first, size, on_step)
                done += size
                if progress:
                    bar.n = done
                    bar.refresh()
                if callback is not None:
                    callback(done, plan.n)
                yield first, images

    def generate(self, n: int, *, seed: int = 0, sampler: str = DEFAULT_SAMPLER, steps: int | None = None,
                 k: int | None = None, batch_size: int = 16, exclude_self: bool = True,
                 query: np.ndarray | None = None, query_ids: Sequence[int] | None = None,
                 eta: float | None = None, clip: str = "none", overlap: str | None = None, progress: bool = True,
                 callback: ProgressCallback | None = None) -> np.ndarray:
        """Generate ``n`` images, uint8 ``[n, H, W, 3]``: :meth:`plan` then every batch of it.

        Arguments as in :meth:`plan`; ``progress`` shows a bar, ``callback(images_done, n)`` is called
        after each batch. An output that cannot fit in memory is refused before any work (use
        :meth:`generate_iter`).
        """
        plan = self.plan(n, seed=seed, sampler=sampler, steps=steps, k=k, batch_size=batch_size,
                         exclude_self=exclude_self, query=query, query_ids=query_ids, eta=eta, clip=clip,
                         overlap=overlap)
        return self.generate_plan(plan, progress=progress, callback=callback)

    def generate_plan(self, plan: GenerationPlan, *, progress: bool = True,
                      callback: ProgressCallback | None = None) -> np.ndarray:
        """Every image of ``plan`` in one uint8 array (what :meth:`generate` returns); refused
        before any work when it cannot fit in memory."""
        size = self.model.config.image_size
        self._check_memory(plan, keep=True)
        out = np.empty((plan.n, size, size, 3), dtype=np.uint8)
        for first, images in self.generate_iter(plan, progress=progress, callback=callback):
            out[first:first + len(images)] = images
        return out

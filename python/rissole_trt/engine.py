"""The Engine: query -> retrieve -> gather neighbour blocks -> denoise all blocks -> decode.

    engine = rissole_trt.Engine("model_dir", "db_dir")
    images = engine.generate(16, seed=0, sampler="dpmpp_2m", steps=20)   # uint8 [16, H, W, 3]

Per batch of images, retrieval, the neighbour gather and every timestep-independent part of the
denoiser (neighbour conv, position and time embeddings) run once; each sampler step is one denoiser
call over all P blocks of all images in the batch. Each image draws its noise from its own generator
seeded by (seed, image number), so the same seed gives the same images whatever the batch size.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import ops
from .builder import autoencoder_fingerprint
from .diffusion import SAMPLERS, make_sampler, sample
from .errors import RissoleError
from .images import from_model_output, to_model_input
from .models.rissole import RissoleModel
from .retrieval.database import Database, compute_keys

#: Denoiser backends an Engine can be asked for; ``auto`` is ``torch``. TensorRT is planned.
#: ``eager`` runs the plain model module (the specification), ``torch`` its prepacked twin.
BACKENDS = ("auto", "torch", "eager", "onnxruntime")
PRECISIONS = ("fp32", "bf16")


def default_asset_paths() -> tuple[Path, Path]:
    """Where the built-in default model and its database live inside the package."""
    root = Path(__file__).resolve().parent / "assets" / "default"
    return root / "model", root / "db"


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RissoleError("device 'cuda' was requested but torch sees no CUDA device")
    return device


def _check_count(n: object) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")


@dataclass(frozen=True)
class Retrieval:
    """What generation conditions on: per image, the query (a database id or -1 for a user image)
    and the ids of its k neighbours."""

    query_ids: np.ndarray  # int64 [n]
    neighbour_ids: np.ndarray  # int64 [n, k]
    scores: np.ndarray  # float32 [n, k]


class Engine:
    """A loaded model and database, ready to generate.

    Args:
        model: a model directory (:meth:`RissoleModel.save`), a loaded :class:`RissoleModel`, or None
            for the built-in default model.
        database: a database directory (``rissole-trt build-db``), an opened :class:`Database`, or
            None: the built-in database with the built-in model; none at all for a model without
            retrieval (``conditioning="none"``), which must not be given one.
        device: ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"`` or ``"cuda[:i]"``.
        backend: the denoiser backend: ``"torch"`` (``"auto"``; weights prepacked once, channels-last,
            fused adds), ``"eager"`` (the plain module) or ``"onnxruntime"`` (CPU; the per-step UNet
            is exported to ONNX once, when the Engine is created).
        precision: ``"fp32"`` (exact) or ``"bf16"`` (torch backend only; fast only on hardware
            with bf16 arithmetic, which a warning says when it is missing).
        index: the search index kind (see :func:`rissole_trt.retrieval.make_index`).
    """

    def __init__(self, model: str | os.PathLike | RissoleModel | None = None,
                 database: str | os.PathLike | Database | None = None, *, device: str | torch.device = "auto",
                 backend: str = "auto", precision: str = "fp32", index: str = "auto") -> None:
        if backend not in BACKENDS:
            raise RissoleError(
                f"backend {backend!r} is not available: this version implements {', '.join(BACKENDS)} "
                "(a TensorRT denoiser is planned, see the README)")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.backend = "torch" if backend == "auto" else backend
        if precision != "fp32" and self.backend != "torch":
            raise ValueError(f"precision {precision!r} needs the torch backend, not {self.backend!r}")
        self.precision = precision
        self.device = _resolve_device(device)
        if model is None:
            default_model, default_db = default_asset_paths()
            if not (default_model / "config.json").is_file():
                raise RissoleError("this install has no built-in default model; pass model= and database=")
            model = default_model
            database = default_db if database is None else database
        if not isinstance(model, RissoleModel):
            model = RissoleModel.load(model)
        self.model = model.to(self.device).eval()
        config = self.model.config
        self.database: Database | None = None
        self.index = None
        self.index_kind = index
        if not config.unet.uses_retrieval:
            if database is not None:
                raise RissoleError("this model uses no retrieval (conditioning 'none'); pass no database")
        elif database is None:
            raise RissoleError("this model conditions on retrieved neighbours: pass database= (rissole-trt build-db)")
        else:
            self.database = self._open_database(database)
            self.index = self.database.index(index)
        if self.backend == "onnxruntime":
            from .runtime.onnxruntime_backend import OnnxRuntimeBackend

            self._denoiser = OnnxRuntimeBackend(self.model).denoiser
        elif self.backend == "torch":
            from .runtime.torch_backend import TorchBackend

            fast = TorchBackend(self.model, precision)
            if not fast.native:
                warnings.warn(f"{precision} is emulated on {self.device} (no native bf16 arithmetic): "
                              "it runs many times slower than fp32 here", stacklevel=2)
            self._denoiser = fast.denoiser
        else:
            self._denoiser = self.model.denoiser

    def _open_database(self, database: str | os.PathLike | Database) -> Database:
        fingerprint = autoencoder_fingerprint(self.model.autoencoder)
        if isinstance(database, Database):
            if database.fingerprint != fingerprint:
                raise RissoleError(f"database {database.path} was built with another autoencoder than this model's")
        else:
            database = Database.open(database, expected_fingerprint=fingerprint)
        config = self.model.config
        expected = (config.autoencoder.latent_dim, config.latent_size, config.latent_size)
        if database.latent_shape != expected or database.block_factor != config.unet.block_factor:
            raise RissoleError(
                f"database latents {database.latent_shape} with block factor {database.block_factor} "
                f"do not match the model's {expected} with block factor {config.unet.block_factor}")
        return database

    def _require_database(self, what: str) -> Database:
        if self.database is None:
            raise RissoleError(f"{what} needs retrieval, and this model uses none (conditioning 'none')")
        return self.database

    # ------------------------------------------------------------------ validation

    def _check_query_images(self, query: np.ndarray) -> np.ndarray:
        size = self.model.config.image_size
        query = np.asarray(query)
        if query.ndim == 3:
            query = query[None]
        if query.ndim != 4 or query.shape[1:] != (size, size, 3) or query.dtype != np.uint8:
            raise ValueError(f"query images must be uint8 [m, {size}, {size}, 3], got {query.dtype} {list(query.shape)}")
        return query

    def _check_k(self, k: int | None, exclude_self: bool) -> int:
        database = self._require_database("k")
        model_k = self.model.config.unet.k
        k = model_k if k is None else k
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if k > database.count - int(exclude_self):
            raise ValueError(f"k = {k} is larger than the database allows ({database.count} entries"
                             f"{', one of them the query itself' if exclude_self else ''})")
        if k != model_k:
            raise ValueError(f"this model was trained with k = {model_k} neighbours; k = {k} cannot be used")
        return int(k)

    # ------------------------------------------------------------------ the steps

    def retrieve(self, n: int, *, seed: int = 0, k: int | None = None, exclude_self: bool = True,
                 query: np.ndarray | None = None, query_ids: Sequence[int] | None = None) -> Retrieval:
        """Choose n queries and search their neighbours (the retrieval half of :meth:`generate`).

        Queries: user images ``query`` (image i uses ``query[i % m]``), else database entries drawn
        with ``seed`` from ``query_ids`` (e.g. one category) or from the whole database.
        ``exclude_self`` removes a database query from its own neighbours (the reference keeps it).
        """
        _check_count(n)
        if query is not None and query_ids is not None:
            raise ValueError("pass query (images) or query_ids (database entries), not both")
        self._require_database("retrieve")
        k = self._check_k(k, exclude_self and query is None)
        if query is not None:
            images = self._check_query_images(query)
            with torch.no_grad():
                latents = self.model.encode(to_model_input(images, self.device))
            keys = compute_keys(latents.cpu(), self.database.key_kind, self.database.block_factor)
            keys = keys[np.arange(n) % len(keys)]
            chosen = np.full(n, -1, dtype=np.int64)
            scores, ids = self.index.search(keys, k)
        else:
            pool = np.arange(self.database.count) if query_ids is None else np.asarray(query_ids)
            if pool.ndim != 1 or pool.size == 0 or not np.issubdtype(pool.dtype, np.integer):
                raise ValueError("query_ids must be a non-empty 1-D sequence of database ids")
            if pool.min() < 0 or pool.max() >= self.database.count:
                bad = pool[(pool < 0) | (pool >= self.database.count)][0]
                raise IndexError(f"query id {int(bad)} is outside the database [0, {self.database.count})")
            chosen = np.random.default_rng(seed).choice(pool.astype(np.int64), size=n, replace=True)
            scores, ids = self.index.search(self.database.keys[chosen], k, exclude=chosen if exclude_self else None)
        return Retrieval(chosen, ids.astype(np.int64), scores)

    @torch.no_grad()
    def decode(self, blocks: torch.Tensor) -> torch.Tensor:
        """Denoised blocks ``[B, P, C, bs, bs]`` -> images ``[B, 3, H, W]`` in [-1, 1].

        One image at a time: torch picks its CPU convolution algorithm (oneDNN or its own) by batch
        size, and the two round differently; per image, the same seed gives the same pixels whatever
        the batch size. The decoder is a small part of the time (see ``rissole-trt bench``).
        """
        latents = ops.merge_blocks(blocks, self.model.config.unet.block_factor)
        return torch.cat([self.model.decode(latents[i:i + 1]) for i in range(len(latents))])

    @staticmethod
    def image_generators(seed: int, first: int, count: int, device: torch.device) -> list[torch.Generator]:
        """One generator per image, seeded by (seed, image number): batch-size independent noise."""
        gens = []
        for i in range(first, first + count):
            state = int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0] >> 1)
            gens.append(torch.Generator(device=device).manual_seed(state))
        return gens

    @torch.no_grad()
    def generate(self, n: int, seed: int = 0, sampler: str = "ddpm", steps: int | None = None,
                 k: int | None = None, batch_size: int = 16, exclude_self: bool = True,
                 query: np.ndarray | None = None, query_ids: Sequence[int] | None = None,
                 eta: float | None = None, progress: bool = True) -> np.ndarray:
        """Generate ``n`` images, uint8 ``[n, H, W, 3]``.

        Args:
            n: number of images.
            seed: seeds the choice of queries and every image's noise.
            sampler: ``ddpm`` (exact, all T steps), ``ddim`` or ``dpmpp_2m``.
            steps: sampler steps (ddim / dpmpp_2m; default from the sampler).
            k: neighbours per block; must be the model's k (the default).
            batch_size: images denoised together (each contributes P block rows).
            exclude_self: a database query is not its own neighbour (the reference behaviour is False).
            query: user images ``[m, H, W, 3]`` uint8 to retrieve with instead of database entries.
            query_ids: database ids to draw queries from (e.g. one category).
            eta: DDIM noise (0 deterministic).
            progress: show a progress bar.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        config = self.model.config
        schedule = self.model.schedule
        plan = make_sampler(sampler, schedule, steps, eta=eta)  # validates steps and eta before any work
        if config.unet.uses_retrieval:
            retrieval = self.retrieve(n, seed=seed, k=k, exclude_self=exclude_self, query=query, query_ids=query_ids)
        else:
            if k is not None or query is not None or query_ids is not None:
                self._require_database("k, query and query_ids")
            _check_count(n)
            retrieval = None

        p, c, bs = config.n_blocks, config.autoencoder.latent_dim, config.block_size
        out = np.empty((n, config.image_size, config.image_size, 3), dtype=np.uint8)
        bar = tqdm(total=n * plan.num_steps, disable=not progress, unit="step", desc="generating", dynamic_ncols=True)
        try:
            for start in range(0, n, batch_size):
                count = min(batch_size, n - start)
                if retrieval is None:
                    cond = torch.empty((count, p, 0, bs, bs), device=self.device)  # no neighbours
                else:
                    ids = retrieval.neighbour_ids[start:start + count]
                    cond = self.database.neighbour_blocks(ids, device=self.device)  # [b, P, k*C, bs, bs]
                denoiser = self._denoiser(cond)
                generators = self.image_generators(int(seed), start, count, self.device)
                blocks = sample(denoiser, (count, p, c, bs, bs), schedule, plan,
                                generator=generators, device=self.device,
                                progress=lambda done, total: bar.update(count))
                out[start:start + count] = from_model_output(self.decode(blocks))
        finally:
            bar.close()
        return out

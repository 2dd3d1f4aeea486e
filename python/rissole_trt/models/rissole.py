"""RissoleModel: autoencoder + block UNet + noise schedule, with import, save and load."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import torch
from torch import nn

from ..atomic import atomic_directory
from ..config import ModelConfig
from ..diffusion.schedules import NoiseSchedule, as_int
from ..errors import InvalidArgumentError, InvalidTypeError, MissingFileError, OutOfRangeError, RissoleModelError
from ..formats import Manifest, file_sha256
from ..outputs import MODEL, check_output
from ..windows import check_overlap
from .autoencoder import VQAutoencoder
from .reference import PathOrDict, ReferenceImport, import_reference
from .unet import BlockUNet

__all__ = ["RissoleModel", "BlockDenoiser", "ModelFile", "CONFIG_FILE", "WEIGHTS_FILE", "FORMAT", "FORMAT_VERSION"]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "rissole_trt.model"
FORMAT_VERSION = 1
_WEIGHT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}  # storage of saved weights


def _key_list(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


class RissoleModel(nn.Module):
    """A RISSOLE model: the VQ autoencoder, the block UNet and its DDPM noise schedule.

    The model is created in eval mode (dropout off); ``eps``, ``encode``, ``decode`` run without
    gradients. The schedule's tensors are non-persistent buffers (``betas``, ``alphas``,
    ``alpha_bars``, ``alpha_bars_prev``, ``posterior_variance``; float32, they follow ``.to()``),
    and ``schedule`` is the :class:`rissole_trt.diffusion.NoiseSchedule` for the samplers.
    """

    #: What :meth:`from_reference` found (variant, k, position embedding, dropped keys); else None.
    reference_import: ReferenceImport | None = None

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise InvalidTypeError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        self._default_overlap = "none"
        self.autoencoder = VQAutoencoder(config.autoencoder)
        self.unet = BlockUNet(config.unet, config.block_size)
        d = config.diffusion
        self.schedule = NoiseSchedule(d.schedule, d.n_steps, d.beta_1, d.beta_2)
        for name in ("betas", "alphas", "alpha_bars", "alpha_bars_prev", "posterior_variance"):
            self.register_buffer(name, getattr(self.schedule, name).clone(), persistent=False)
        self.eval()

    @property
    def default_overlap(self) -> str:
        """The sampling overlap an :class:`rissole_trt.Engine` uses when none is asked for, saved
        with the model (``"sampling"`` in ``config.json``): ``none``, the reference's aligned blocks,
        unless the model was saved with ``half`` (the built-in model)."""
        return self._default_overlap

    @default_overlap.setter
    def default_overlap(self, overlap: str) -> None:
        check_overlap(overlap, self.config.unet.block_factor, self.config.block_size)
        self._default_overlap = overlap

    # ----------------------------------------------------------------- inference

    def _check_rows(self, x_t: torch.Tensor, cond: torch.Tensor) -> None:
        unet = self.config.unet
        c, bs = unet.latent_channels, self.config.block_size
        if x_t.ndim != 4 or x_t.shape[1:] != (c, bs, bs):
            raise InvalidArgumentError(f"x_t must be [N, {c}, {bs}, {bs}] (noisy latent blocks), got {list(x_t.shape)}")
        if cond.shape != (x_t.shape[0], unet.cond_channels, bs, bs):
            what = (f"k={unet.k} neighbour blocks stacked on channels" if unet.uses_retrieval
                    else "this model uses no retrieval: no neighbour channels")
            raise InvalidArgumentError(f"cond must be [N={x_t.shape[0]}, k*C={unet.cond_channels}, {bs}, {bs}] ({what}), "
                             f"got {list(cond.shape)}")

    def _row_tensor(self, value: int | torch.Tensor, n: int, limit: int, name: str) -> torch.Tensor:
        """An int or a [n] integer tensor -> [n] int64 on the model's device, range-checked."""
        device = self.betas.device
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point or value.dtype == torch.bool:
                raise InvalidArgumentError(f"{name} must hold integers, got {value.dtype}")
            if value.ndim == 0:
                value = value.reshape(1).expand(n)
            if value.shape != (n,):
                raise InvalidArgumentError(f"{name} must be an int or a tensor of shape [{n}], got {list(value.shape)}")
            rows = value.to(device=device, dtype=torch.long)
        else:
            rows = torch.full((n,), as_int(value, name), dtype=torch.long, device=device)
        if n and (int(rows.min()) < 0 or int(rows.max()) >= limit):
            raise OutOfRangeError(f"{name} values must lie in 0..{limit - 1}, got {int(rows.min())}..{int(rows.max())}")
        return rows

    @torch.no_grad()
    def eps(self, x_t: torch.Tensor, cond: torch.Tensor, t: int | torch.Tensor,
            pos: int | torch.Tensor | None = None) -> torch.Tensor:
        """ε prediction of the UNet.

        Args:
            x_t: noisy latent blocks [N, C, bs, bs].
            cond: their k neighbour blocks stacked on channels [N, k*C, bs, bs]
                (channel n*C + c = neighbour n, channel c).
            t: timestep(s) 0..T-1, an int or [N].
            pos: block position(s) 0..P-1, an int or [N]; required when the model uses the
                position embedding, ignored otherwise.
        """
        self._check_rows(x_t, cond)
        n = x_t.shape[0]
        t_rows = self._row_tensor(t, n, self.config.diffusion.n_steps, "t")
        pos_rows = None
        if self.unet.pos_embed is not None:
            if pos is None:
                raise InvalidArgumentError("this model uses the block-position embedding: pos is required")
            pos_rows = self._row_tensor(pos, n, self.config.n_blocks, "pos")
        return self.unet(x_t, cond, t_rows, pos_rows)

    @torch.no_grad()
    def eps_batched(self, x_t: torch.Tensor, cond: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε for all P blocks of B images in one denoiser call.

        Args:
            x_t: [B, P, C, bs, bs], block p of image b at [b, p] (p in row-major block order).
            cond: [B, P, k*C, bs, bs], the neighbours of each block.
            t: one timestep for everything, or [B] (one per image).
        Returns:
            [B, P, C, bs, bs]; row (b, p) was evaluated at block position p.
        """
        p = self.config.n_blocks
        if x_t.ndim != 5 or x_t.shape[1] != p or cond.ndim != 5 or cond.shape[:2] != x_t.shape[:2]:
            raise InvalidArgumentError(
                f"x_t and cond must be [B, P={p}, ...] with the same B and P, got {list(x_t.shape)} and {list(cond.shape)}"
            )
        b = x_t.shape[0]
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            t = self._row_tensor(t, b, self.config.diffusion.n_steps, "t").repeat_interleave(p)
        pos = torch.arange(p, device=x_t.device).repeat(b)
        eps = self.eps(x_t.flatten(0, 1), cond.flatten(0, 1), t, pos)
        return eps.unflatten(0, (b, p))

    def denoiser(self, cond: torch.Tensor, pos: torch.Tensor | None = None) -> "BlockDenoiser":
        """An ``eps_fn(x_t, t)`` for a sampler, with the step-invariant work done once here.

        ``cond`` is either rows [N, k*C, bs, bs] (with ``pos`` [N] when the model uses the
        position embedding, or float weights [N, P] that mix the positions' embeddings, as the
        shifted windows of :mod:`rissole_trt.windows` do) or blocks [B, P, k*C, bs, bs] (positions 0..P-1 implied, ``pos`` must
        be None); ``x_t`` passed to the returned function has the same layout.
        """
        return BlockDenoiser(self, cond, pos)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] [B, 3, S, S] -> quantised latents [B, C, S/2**L, S/2**L]."""
        return self.autoencoder.encode(images)

    @torch.no_grad()
    def encode_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> codebook indices [B, S/2**L, S/2**L] (int64)."""
        return self.autoencoder.encode_indices(images)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """The forward process: x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) noise, for t an int or one per row of x0."""
        ab = self.alpha_bars[t].view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (quantised first, as the reference does) -> images in [-1, 1]."""
        return self.autoencoder.decode(z)

    def parameter_count(self) -> dict[str, int]:
        """Parameters actually used: {"autoencoder": ..., "unet": ..., "total": ...}."""
        ae = sum(p.numel() for p in self.autoencoder.parameters())
        unet = sum(p.numel() for p in self.unet.parameters())
        return {"autoencoder": ae, "unet": unet, "total": ae + unet}

    # ----------------------------------------------------------------- weights

    def _load_checked(self, state: Mapping[str, torch.Tensor], source: str,
                      names: Mapping[str, str] | None = None) -> None:
        """Load a full state dict; missing, unexpected or mis-shaped keys raise RissoleModelError."""
        names = names or {}
        label = lambda key: f"{key} ({names[key]})" if key in names else key  # noqa: E731
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise RissoleModelError(f"{source}: missing keys {_key_list(missing)}")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise RissoleModelError(f"{source}: unexpected keys {_key_list([label(k) for k in unexpected])}")
        bad = [
            f"{label(k)}: {list(state[k].shape)} instead of {list(v.shape)}"
            for k, v in expected.items() if state[k].shape != v.shape
        ]
        if bad:
            raise RissoleModelError(f"{source}: shape mismatch: {'; '.join(bad[:10])}")
        not_float = [label(k) for k, v in state.items() if not v.dtype.is_floating_point]
        if not_float:
            raise RissoleModelError(f"{source}: non-floating-point tensors {_key_list(not_float)}")
        self.load_state_dict(state, strict=True)

    @classmethod
    def from_reference(
        cls,
        checkpoint: str | os.PathLike | None = None,
        unet_config: PathOrDict | None = None,
        vqgan_config: PathOrDict | None = None,
        ddpm_config: PathOrDict | None = None,
        *,
        vqgan_checkpoint: str | os.PathLike | None = None,
        unet_checkpoint: str | os.PathLike | None = None,
        k: int | None = None,
        block_factor: int = 2,
        image_size: int = 64,
        position_embedding: bool | None = None,
    ) -> "RissoleModel":
        """Import a model trained with the authors' code (github.com/avideep/rissole).

        Args:
            checkpoint: their ``train_ddpm.py`` DDPM ``best_model.pt`` (UNet and VQ-GAN), or None
                and then both ``vqgan_checkpoint`` (``train_vqgan.py``) and ``unet_checkpoint``
                (the UNet-only file ``train_ddpm.py`` also writes).
            unet_config, vqgan_config, ddpm_config: their YAML files (paths or parsed dicts).
            k: number of neighbours; inferred from the weights (give it only to check).
            block_factor, image_size: their ``--block-factor`` / ``--img_size`` (defaults 2 and 64,
                as in their scripts); neither is stored in the files.
            position_embedding: None to infer: False for ``rissole_main`` weights (never used
                there), True for ``rissole_alt`` weights (trained with ``--use-pos``); False
                imports ``rissole_alt`` weights trained without ``--use-pos``.
        Checkpoints are read with ``torch.load(weights_only=True)``. Unused reference parameters
        are dropped by name (``model.reference_import.dropped``); other unknown or missing keys
        raise :class:`RissoleModelError`.
        """
        config, state, names, report = import_reference(
            checkpoint, unet_config, vqgan_config, ddpm_config,
            vqgan_checkpoint=vqgan_checkpoint, unet_checkpoint=unet_checkpoint, k=k,
            block_factor=block_factor, image_size=image_size, position_embedding=position_embedding,
        )
        model = cls(config)
        source = str(checkpoint) if checkpoint is not None else f"{unet_checkpoint} + {vqgan_checkpoint}"
        try:
            model._load_checked(state, source, names)
        except RissoleModelError as error:
            raise RissoleModelError(
                f"the weights do not fit the configs given (compare channels, latent_dim and n_embeddings in the "
                f"YAML files with the checkpoint's: UNet channels {list(config.unet.channels)}, autoencoder "
                f"channels {list(config.autoencoder.channels)} from the YAML): {error}") from None
        model.reference_import = report
        return model

    # ----------------------------------------------------------------- save / load

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, weights_dtype: str = "fp32") -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` atomically.

        The directory is written under a temporary name beside ``path`` and renamed into place,
        so ``path`` never holds a partial model. An existing ``path`` is replaced only with
        ``overwrite=True``, and only if it is empty or a saved model. ``config.json`` records the
        sha256 of the weights file, checked by :meth:`load`. ``weights_dtype="fp16"`` stores the
        weights rounded to float16, half the file (the built-in model ships so); :meth:`load`
        widens them to float32 again, so the loaded model computes in float32 on the rounded weights.
        """
        from safetensors.torch import save_file

        if weights_dtype not in _WEIGHT_DTYPES:
            raise InvalidArgumentError(f"weights_dtype must be one of {', '.join(_WEIGHT_DTYPES)}, got {weights_dtype!r}")
        from ..disk import check_free_space, translate_disk_full

        path = check_output(path, overwrite=overwrite, kind=MODEL, flag="overwrite=True")
        dtype = _WEIGHT_DTYPES[weights_dtype]
        state = {k: v.detach().to(dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        needed = sum(v.numel() * v.element_size() for v in state.values())
        check_free_space(path, needed, "the model")
        with translate_disk_full(path, needed), atomic_directory(path, replace=overwrite) as tmp:
            save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "version": str(FORMAT_VERSION)})
            doc = ModelFile(config=self.config.to_dict(), sampling={"overlap": self.default_overlap},
                            weights_sha256=file_sha256(tmp / WEIGHTS_FILE))
            (tmp / CONFIG_FILE).write_text(doc.to_json() + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
             verify: bool = True) -> "RissoleModel":
        """Load a model written by :meth:`save` (in eval mode, on ``map_location``).

        ``verify`` checks the weights file against the sha256 recorded in ``config.json`` (a flipped
        byte is refused); models saved before checksums were recorded load unchecked.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_dir():
            raise MissingFileError(f"model directory not found: {path}")
        config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
        for file in (config_path, weights_path):
            if not file.is_file():
                raise MissingFileError(f"{path} is not a saved model: {file.name} is missing")
        doc = ModelFile.read(config_path)
        config = _config_of(doc, config_path)
        expected = doc.weights_sha256
        if verify and expected is not None and file_sha256(weights_path) != expected:
            raise RissoleModelError(f"{weights_path} does not match the sha256 recorded in {config_path.name}: "
                                    "the file is corrupt or was changed (verify=False loads it anyway)")
        try:
            state = load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise RissoleModelError(f"{weights_path}: corrupt or truncated safetensors file ({exc})") from exc
        model = cls(config)
        model._load_checked(state, str(weights_path))
        _apply_sampling(model, doc, config_path)
        return model.to(map_location)


@dataclass(frozen=True, kw_only=True)
class ModelFile(Manifest):
    """A saved model's ``config.json``. Its version is recorded as ``"version"`` (the other manifests
    say ``"format_version"``; kept so that every saved model reads as before). ``kind`` was added
    without a version change, ``sampling`` and ``weights_sha256`` too: files without them load
    (the reference's sampling, no checksum to verify)."""

    KIND: ClassVar[str] = MODEL
    FORMAT_VERSION: ClassVar[int] = FORMAT_VERSION
    VERSION_KEY: ClassVar[str] = "version"
    ERROR: ClassVar[type[Exception]] = RissoleModelError
    INDENT: ClassVar[int] = 2
    UNREADABLE: ClassVar[str] = "{where}: invalid JSON ({error})"

    kind: str = MODEL
    format: str = FORMAT
    version: int = FORMAT_VERSION
    config: dict
    sampling: dict = field(default_factory=dict)
    weights_sha256: str | None = None

    @classmethod
    def refusal(cls, where: object, version: object) -> Exception:
        return RissoleModelError(f"{where}: format version {version!r} is not supported (this is version "
                                 f"{FORMAT_VERSION})")

    @classmethod
    def from_dict(cls, doc: dict, where: object = CONFIG_FILE) -> "ModelFile":
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise RissoleModelError(f"{where}: not a rissole_trt model config (no \"format\": \"{FORMAT}\")")
        return super().from_dict(doc, where)


def _config_of(doc: ModelFile, file: Path) -> ModelConfig:
    try:
        return ModelConfig.from_dict(doc.config)
    except (ValueError, TypeError) as exc:
        raise RissoleModelError(f"{file}: invalid model config: {exc}") from exc


def _apply_sampling(model: RissoleModel, doc: ModelFile, file: Path) -> None:
    """The optional ``"sampling"`` entry: the model's default sampling settings (models saved
    before it existed sample as the reference does)."""
    sampling = doc.sampling
    if not isinstance(sampling, dict) or set(sampling) - {"overlap"}:
        raise RissoleModelError(f"{file}: \"sampling\" must be an object with at most an \"overlap\" entry, "
                                f"got {sampling!r}")
    try:
        model.default_overlap = sampling.get("overlap", "none")
    except InvalidArgumentError as exc:
        raise RissoleModelError(f"{file}: invalid \"sampling\": {exc}") from exc


class BlockDenoiser:
    """``eps_fn(x_t, t)`` over fixed neighbours, for the samplers of :mod:`rissole_trt.diffusion`.

    Created by :meth:`RissoleModel.denoiser`. At creation it runs, once, everything that does not
    change across timesteps: the neighbour conv, the position embedding and the time embedding
    (with every residual block's projection) for all T timesteps. Each call then runs only
    :meth:`BlockUNet.forward_hoisted`.
    """

    def __init__(self, model: RissoleModel, cond: torch.Tensor, pos: torch.Tensor | None = None, *,
                 forward: Callable[..., torch.Tensor] | None = None,
                 condition: Callable[[torch.Tensor], object] | None = None) -> None:
        self.model = model
        # The per-step network: the UNet itself, or another backend's equivalent with the
        # signature of BlockUNet.forward_hoisted (ONNX Runtime, a prepacked UNet, ...).
        self.forward = model.unet.forward_hoisted if forward is None else forward
        # What the per-step network gets for the neighbours (BlockUNet.condition, or a backend's
        # own form of them, such as the Triton backend's database codes).
        condition = model.unet.condition if condition is None else condition
        unet = model.unet
        p = model.config.n_blocks
        self.blocks = cond.ndim == 5
        if self.blocks:
            if pos is not None:
                raise InvalidArgumentError("with cond as blocks [B, P, ...] the positions are implied; pass pos=None")
            if cond.shape[1] != p:
                raise InvalidArgumentError(f"cond as blocks must be [B, P={p}, k*C, bs, bs], got {list(cond.shape)}")
            self.batch = cond.shape[0]
            cond = cond.flatten(0, 1)
            pos = torch.arange(p, device=cond.device).repeat(self.batch)
        n = cond.shape[0]
        self.rows = n
        probe = cond.new_zeros((n, model.config.unet.latent_channels) + tuple(cond.shape[2:]))
        model._check_rows(probe, cond)
        with torch.no_grad():
            self.cond_feat = condition(cond)
            self.pos_bias = None
            if unet.pos_embed is not None:
                if pos is None:
                    raise InvalidArgumentError("this model uses the block-position embedding: pos is required")
                if self.blocks:  # one row per position, repeated: no batch-size dependent GEMM shapes
                    self.pos_bias = unet.embed_pos(torch.arange(p, device=cond.device)).repeat(self.batch, 1)
                elif pos.is_floating_point():  # [rows, P] weights: a mix of the positions' embeddings
                    if tuple(pos.shape) != (n, p):
                        raise InvalidArgumentError(f"position weights must be [rows={n}, P={p}], got {list(pos.shape)}")
                    self.pos_bias = pos.to(cond) @ unet.embed_pos(torch.arange(p, device=cond.device))
                else:
                    self.pos_bias = unet.embed_pos(model._row_tensor(pos, n, p, "pos"))
            steps = torch.arange(model.config.diffusion.n_steps, device=cond.device)
            self.time_table = unet.embed_time(steps)

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
        """ε for x_t (same layout as the cond given at creation) at timestep t (int, or one per row)."""
        shape = x_t.shape
        if self.blocks:
            x_t = x_t.flatten(0, 1)
        if x_t.shape[0] != self.rows:
            raise InvalidArgumentError(f"x_t has {x_t.shape[0]} rows, the neighbours given at creation {self.rows}")
        if isinstance(t, torch.Tensor) and t.ndim == 1:
            n_rows_t = self.batch if self.blocks else self.rows
            rows = self.model._row_tensor(t, n_rows_t, self.time_table.shape[0], "t")
            if self.blocks:
                rows = rows.repeat_interleave(self.model.config.n_blocks)
            time_bias = self.time_table.index_select(0, rows)
        else:
            step = as_int(t, "t")
            if not 0 <= step < self.time_table.shape[0]:
                raise OutOfRangeError(f"t must lie in 0..{self.time_table.shape[0] - 1}, got {step}")
            time_bias = self.time_table[step:step + 1]
        eps = self.forward(x_t, self.cond_feat, time_bias, self.pos_bias)
        return eps.reshape(shape)

"""Model configuration: frozen dataclasses with a strict JSON round trip.

A :class:`ModelConfig` bundles the autoencoder, the block UNet and the diffusion schedule of one
RISSOLE model, plus the image size. Every config validates itself on construction and raises
``ValueError`` naming the offending field; ``from_dict`` rejects unknown and missing keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .defaults import XATTN_CONTEXT_DIM, XATTN_HEAD_DIM, XATTN_HEADS
from .diffusion.schedules import SCHEDULES
from .errors import InvalidArgumentError

__all__ = [
    "AutoencoderConfig",
    "UNetConfig",
    "DiffusionConfig",
    "ModelConfig",
    "CONDITIONING_MODES",
    "SCHEDULES",
    "SINUSOID_ROWS",
]

#: Conditioning modes the block UNet implements. "add": neighbour conv + input conv, summed,
#: parameter-free layer norm, conv (the reference's activate_cond_layer=True, use_addition=True).
#: "none": the same network without retrieval: a learned constant stands where the neighbour
#: features were added (the no-retrieval ablation; such a model needs no database).
#: "xattn": the input path of "none", and the neighbours enter through cross-attention layers at
#: the levels ``xattn_levels`` names, over the k neighbours' block as k·bs² tokens (a token is a
#: quantised latent vector, embedded linearly plus a learned in-block position embedding).
CONDITIONING_MODES = ("add", "none", "xattn")


#: Rows of the fixed sinusoid tables for timesteps and block positions (the reference's max_len).
SINUSOID_ROWS = 5000


def _positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"{owner}.{name} must be a positive integer, got {value!r}")


def _non_negative_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{owner}.{name} must be a non-negative integer, got {value!r}")


def _channel_list(owner: str, name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InvalidArgumentError(f"{owner}.{name} must be a list of positive integers, got {value!r}")
    channels = tuple(value)
    if not channels:
        raise InvalidArgumentError(f"{owner}.{name} must not be empty")
    for i, c in enumerate(channels):
        _positive_int(owner, f"{name}[{i}]", c)
    return channels


class _JsonConfig:
    """Shared strict dict/JSON conversion for the config dataclasses."""

    _nested: ClassVar[dict[str, type]] = {}
    #: Fields added after files were first written: they may be missing, and then take the default
    #: that reproduces what those files meant.
    _added_later: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples, nested dicts for nested configs)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _JsonConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        """Build from a dict as written by :meth:`to_dict`; unknown or missing keys are errors."""
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        # Every field is required: a file never silently picks up a default.
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidArgumentError(f"{cls.__name__}: unknown keys {unknown}")
        missing = sorted(names - set(data) - cls._added_later)
        if missing:
            raise InvalidArgumentError(f"{cls.__name__}: missing keys {missing}")
        kwargs = dict(data)
        for name, sub in cls._nested.items():
            if name in kwargs:
                kwargs[name] = sub.from_dict(kwargs[name])
        return cls(**kwargs)

    def to_json(self) -> str:
        """JSON text (indented, keys in field order)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str):
        """Parse JSON text written by :meth:`to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArgumentError(f"{cls.__name__}: invalid JSON: {exc}") from exc
        return cls.from_dict(data)


@dataclass(frozen=True)
class AutoencoderConfig(_JsonConfig):
    """The light VQ-GAN: per level a stride-2 conv and a residual block, attention, quantiser.

    Attributes:
        in_channels: image channels.
        channels: channels per down level; the latent is image_size / 2**len(channels) wide.
        latent_dim: latent (and codebook vector) channels.
        n_embeddings: codebook size.
        n_heads: heads of the bottleneck self-attention.
        dim_keys: size of one attention head.
        n_groups: GroupNorm groups in the residual blocks.
    """

    in_channels: int = 3
    channels: tuple[int, ...] = (16, 32)
    latent_dim: int = 10
    n_embeddings: int = 1024
    n_heads: int = 4
    dim_keys: int = 64
    n_groups: int = 8

    def __post_init__(self) -> None:
        owner = "AutoencoderConfig"
        object.__setattr__(self, "channels", _channel_list(owner, "channels", self.channels))
        for name in ("in_channels", "latent_dim", "n_embeddings", "n_heads", "dim_keys", "n_groups"):
            _positive_int(owner, name, getattr(self, name))
        for c in self.channels:
            if c % self.n_groups:
                raise InvalidArgumentError(
                    f"{owner}: channels {list(self.channels)} must all be divisible by "
                    f"n_groups={self.n_groups} (GroupNorm), {c} is not"
                )

    @property
    def downsampling(self) -> int:
        """Image size / latent size."""
        return 2 ** len(self.channels)


@dataclass(frozen=True)
class UNetConfig(_JsonConfig):
    """The block denoiser.

    Attributes:
        latent_channels: channels of a latent block (input and output).
        channels: channels per UNet level.
        n_groups: GroupNorm groups in the residual blocks.
        n_heads, dim_keys: the reference's attention settings, as written in its YAML. The middle
            attention is built with the two swapped (``dim_keys`` heads of ``n_heads`` dims), as
            the reference does; see :class:`rissole_trt.models.unet.BlockUNet`.
        time_emb_dim: width of the time (and position) embedding after its MLP.
        pos_emb_dim: width of the fixed sinusoid fed to that MLP.
        k: retrieved neighbours per block; the conditioning input has k * latent_channels channels
            (none with ``conditioning="none"``).
        block_factor: the latent is cut into block_factor x block_factor blocks.
        conditioning: how the neighbours enter the network, one of :data:`CONDITIONING_MODES`.
        position_embedding: add a block-position embedding in every residual block
            (the paper-era ``rissole_alt`` variant).
        dropout: dropout probability in the residual blocks (training only).
        input_kernel_size, input_padding: the two convs applied to the noisy block and to the
            neighbours (stride 1).
        init_padding: padding of the 3x3 conv that follows their normalised sum.
        final_kernel_size, final_padding: the output conv.
        xattn_levels: with ``conditioning="xattn"``, where the cross-attention layers sit: level
            i < len(channels) puts one after the second residual block of down level i and one
            after that of the up level of the same width; ``len(channels)`` puts one after the
            middle self-attention. Empty for the other modes.
        xattn_heads, xattn_head_dim: heads of the cross-attention layers and the size of one head.
        xattn_context_dim: width of a context token after its (linear) embedding.
    """

    latent_channels: int = 10
    channels: tuple[int, ...] = (16, 32)
    n_groups: int = 8
    n_heads: int = 4
    dim_keys: int = 64
    time_emb_dim: int = 128
    pos_emb_dim: int = 64
    k: int = 3
    block_factor: int = 2
    conditioning: str = "add"
    position_embedding: bool = False
    dropout: float = 0.5
    input_kernel_size: int = 3
    input_padding: int = 1
    init_padding: int = 1
    final_kernel_size: int = 1
    final_padding: int = 0
    xattn_levels: tuple[int, ...] = ()
    xattn_heads: int = XATTN_HEADS
    xattn_head_dim: int = XATTN_HEAD_DIM
    xattn_context_dim: int = XATTN_CONTEXT_DIM

    _added_later: ClassVar[frozenset[str]] = frozenset(
        {"xattn_levels", "xattn_heads", "xattn_head_dim", "xattn_context_dim"})

    def __post_init__(self) -> None:
        owner = "UNetConfig"
        object.__setattr__(self, "channels", _channel_list(owner, "channels", self.channels))
        for name in (
            "latent_channels", "n_groups", "n_heads", "dim_keys", "time_emb_dim", "pos_emb_dim",
            "k", "block_factor", "input_kernel_size", "final_kernel_size",
            "xattn_heads", "xattn_head_dim", "xattn_context_dim",
        ):
            _positive_int(owner, name, getattr(self, name))
        for name in ("input_padding", "init_padding", "final_padding"):
            _non_negative_int(owner, name, getattr(self, name))
        for c in self.channels:
            if c % self.n_groups:
                raise InvalidArgumentError(
                    f"{owner}: channels {list(self.channels)} must all be divisible by "
                    f"n_groups={self.n_groups} (GroupNorm), {c} is not"
                )
        if self.channels[0] % 2:
            raise InvalidArgumentError(
                f"{owner}: channels[0]={self.channels[0]} must be even (the two input convs "
                "produce channels[0] // 2 each)"
            )
        if self.pos_emb_dim % 2:
            raise InvalidArgumentError(f"{owner}: pos_emb_dim={self.pos_emb_dim} must be even (sin/cos pairs)")
        if self.conditioning not in CONDITIONING_MODES:
            raise InvalidArgumentError(
                f"{owner}: unknown conditioning {self.conditioning!r}; known: {list(CONDITIONING_MODES)}"
            )
        if not isinstance(self.position_embedding, bool):
            raise InvalidArgumentError(f"{owner}.position_embedding must be true or false, got {self.position_embedding!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise InvalidArgumentError(f"{owner}.dropout must be a number in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "dropout", float(self.dropout))
        self._check_xattn_levels(owner)

    def _check_xattn_levels(self, owner: str) -> None:
        value = self.xattn_levels
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise InvalidArgumentError(f"{owner}.xattn_levels must be a list of level indices, got {value!r}")
        levels = tuple(value)
        object.__setattr__(self, "xattn_levels", levels)
        if self.conditioning != "xattn":
            if levels:
                raise InvalidArgumentError(f"{owner}: xattn_levels is only for conditioning 'xattn' "
                                           f"(this one is {self.conditioning!r})")
            return
        if not levels:
            raise InvalidArgumentError(f"{owner}: conditioning 'xattn' needs at least one of xattn_levels "
                                       f"(0..{len(self.channels)}; {len(self.channels)} is the middle)")
        for level in levels:
            if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= len(self.channels):
                raise InvalidArgumentError(f"{owner}.xattn_levels: {level!r} is not a level index in "
                                           f"0..{len(self.channels)} ({len(self.channels)} is the middle)")
        if len(set(levels)) != len(levels) or list(levels) != sorted(levels):
            raise InvalidArgumentError(f"{owner}.xattn_levels must be increasing without repeats, got {list(levels)}")

    @property
    def uses_retrieval(self) -> bool:
        """Whether the UNet is conditioned on retrieved neighbour blocks."""
        return self.conditioning != "none"

    @property
    def cond_channels(self) -> int:
        """Channels of the stacked neighbour blocks: k * latent_channels (0 without retrieval)."""
        return self.k * self.latent_channels if self.uses_retrieval else 0

    @property
    def n_blocks(self) -> int:
        """Blocks per latent, P = block_factor**2."""
        return self.block_factor ** 2

    def inner_size(self, block_size: int) -> int:
        """Spatial size inside the UNet levels for a block of ``block_size``."""
        after_input = block_size + 2 * self.input_padding - self.input_kernel_size + 1
        return after_input + 2 * self.init_padding - 3 + 1

    def output_size(self, block_size: int) -> int:
        """Spatial size of the UNet output for a block of ``block_size``."""
        return self.inner_size(block_size) + 2 * self.final_padding - self.final_kernel_size + 1

    def check_block_size(self, block_size: int) -> None:
        """Raise ValueError unless the UNet maps ``block_size`` blocks onto themselves."""
        inner = self.inner_size(block_size)
        levels = 2 ** len(self.channels)
        if inner < 1 or inner % levels:
            raise InvalidArgumentError(
                f"UNetConfig: a {block_size}x{block_size} block becomes {inner}x{inner} after the input "
                f"convs; it must be a positive multiple of 2**len(channels)={levels}"
            )
        out = self.output_size(block_size)
        if out != block_size:
            raise InvalidArgumentError(
                f"UNetConfig: the output conv (kernel {self.final_kernel_size}, padding "
                f"{self.final_padding}) gives {out}x{out} blocks, not {block_size}x{block_size}"
            )


@dataclass(frozen=True)
class DiffusionConfig(_JsonConfig):
    """DDPM noise schedule: ``n_steps`` betas from ``beta_1`` to ``beta_2`` shaped by ``schedule``.

    (The cosine schedule ignores beta_1/beta_2, but they are validated as the reference does.)
    """

    schedule: str = "linear"
    n_steps: int = 1000
    beta_1: float = 1e-4
    beta_2: float = 0.02
    #: The diffused variable is ``latent_scale`` x the quantised latent (LDM's scale factor): it sets
    #: the latents' spread against the unit-variance noise. 1.0 is the reference's choice.
    latent_scale: float = 1.0

    _added_later: ClassVar[frozenset[str]] = frozenset({"latent_scale"})

    def __post_init__(self) -> None:
        owner = "DiffusionConfig"
        if isinstance(self.latent_scale, bool) or not isinstance(self.latent_scale, (int, float)) \
                or not 0.0 < float(self.latent_scale) < float("inf"):
            raise InvalidArgumentError(f"{owner}.latent_scale must be a positive number, got {self.latent_scale!r}")
        object.__setattr__(self, "latent_scale", float(self.latent_scale))
        if self.schedule not in SCHEDULES:
            raise InvalidArgumentError(f"{owner}: unknown schedule {self.schedule!r}; known: {list(SCHEDULES)}")
        _positive_int(owner, "n_steps", self.n_steps)
        if self.n_steps > SINUSOID_ROWS:
            raise InvalidArgumentError(f"{owner}: n_steps={self.n_steps} exceeds the time embedding table ({SINUSOID_ROWS})")
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgumentError(f"{owner}.{name} must be a number, got {value!r}")
            object.__setattr__(self, name, float(value))
        if not 0.0 < self.beta_1 < self.beta_2 < 1.0:
            raise InvalidArgumentError(f"{owner}: need 0 < beta_1 < beta_2 < 1, got beta_1={self.beta_1}, beta_2={self.beta_2}")


@dataclass(frozen=True)
class ModelConfig(_JsonConfig):
    """A whole RISSOLE model: autoencoder + block UNet + schedule, for ``image_size`` images."""

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    image_size: int = 64

    _nested: ClassVar[dict[str, type]] = {
        "autoencoder": AutoencoderConfig,
        "unet": UNetConfig,
        "diffusion": DiffusionConfig,
    }

    def __post_init__(self) -> None:
        for name, cls in self._nested.items():
            if not isinstance(getattr(self, name), cls):
                raise InvalidArgumentError(f"ModelConfig.{name} must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        _positive_int("ModelConfig", "image_size", self.image_size)
        ae, unet = self.autoencoder, self.unet
        if self.image_size % ae.downsampling:
            raise InvalidArgumentError(
                f"ModelConfig: image_size={self.image_size} must be divisible by "
                f"2**len(autoencoder.channels)={ae.downsampling}"
            )
        if unet.latent_channels != ae.latent_dim:
            raise InvalidArgumentError(
                f"ModelConfig: unet.latent_channels={unet.latent_channels} differs from "
                f"autoencoder.latent_dim={ae.latent_dim}"
            )
        if self.latent_size % unet.block_factor:
            raise InvalidArgumentError(
                f"ModelConfig: latent size {self.latent_size} is not divisible by "
                f"block_factor={unet.block_factor}"
            )
        if unet.n_blocks > SINUSOID_ROWS:
            raise InvalidArgumentError(f"ModelConfig: {unet.n_blocks} blocks exceed the position table ({SINUSOID_ROWS})")
        unet.check_block_size(self.block_size)

    @property
    def latent_size(self) -> int:
        """Spatial size of the latent (image_size / 2**levels)."""
        return self.image_size // self.autoencoder.downsampling

    @property
    def block_size(self) -> int:
        """Spatial size of one latent block."""
        return self.latent_size // self.unet.block_factor

    @property
    def n_blocks(self) -> int:
        """Blocks per image, P."""
        return self.unet.n_blocks

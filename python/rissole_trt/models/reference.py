"""Import of checkpoints and YAML configs written by the authors' RISSOLE code.

The authors' training scripts (github.com/avideep/rissole, ``rissole_main`` / ``rissole_alt``)
save ``{'epoch', 'global_train_step', 'model_state_dict'}`` with ``torch.save``:

* ``train_ddpm.py`` writes the whole DDPM module (UNet under ``eps_model.``, VQ-GAN under
  ``vae_model.``) and, separately, the UNet alone (no prefix);
* ``train_vqgan.py`` writes the VQ-GAN alone (``encoder.``, ``vq.``, ``decoder.``).

Every reference key is translated to ours by an explicit rule. Parameters that the reference
forward never uses are dropped by name (listed in :class:`ReferenceImport.dropped`); any other
unknown key, and any key of ours left unfilled, is an error naming it.

What the import infers from the weights:

* ``k``: the neighbour conv's input channels / latent channels (the YAML's ``cond_emb_dim`` is
  ignored: the authors' training script overwrites it with k * latent_dim at run time).
* the variant: residual blocks with a ``pos_emb`` projection exist only in ``rissole_alt``
  (paper era); ``rissole_main`` (HEAD) computes a position embedding but never uses it.
* whether the position embedding is used: in ``rissole_main`` never. ``rissole_alt`` uses it only
  when trained with ``--use-pos``, which the weights cannot tell; the import assumes it was
  (``position_embedding=None`` or True) and ``position_embedding=False`` imports such a
  checkpoint as trained without ``--use-pos`` (the projections are then dropped).

Which of the YAML's ``conv_config`` entries apply depends on the variant, as in the two codes:
``rissole_main`` builds the input convs 3x3/pad 1 and pads the following conv by
``init_padding``; ``rissole_alt`` builds the input convs with ``init_kernel``/``init_padding``
and pads the following conv by 1.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Union

import torch

from ..config import SINUSOID_ROWS, AutoencoderConfig, DiffusionConfig, ModelConfig, UNetConfig
from ..errors import InvalidArgumentError, MissingFileError, RissoleModelError
from .layers import sinusoid_table

__all__ = [
    "ReferenceImport",
    "import_reference",
    "read_reference_checkpoint",
    "load_yaml",
    "unet_config_from_reference",
    "autoencoder_config_from_reference",
    "diffusion_config_from_reference",
    "translate_unet_keys",
    "translate_autoencoder_keys",
]

PathOrDict = Union[str, os.PathLike, Mapping[str, Any]]

VARIANT_MAIN = "rissole_main"
VARIANT_ALT = "rissole_alt"


@dataclass
class ReferenceImport:
    """What :func:`rissole_trt.models.RissoleModel.from_reference` found in the reference files."""

    variant: str
    k: int
    position_embedding: bool
    #: reference keys not imported, each with the reason.
    dropped: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- files


def read_reference_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint of the authors' code with ``torch.load(weights_only=True)``.

    Accepts their ``{'model_state_dict': ...}`` wrapper or a bare state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler fails on garbage with almost any exception type
        # Not torch's own text: it advises weights_only=False, which would run code from the file.
        raise RissoleModelError(f"{path}: not a readable PyTorch checkpoint of tensors (a torch.save file "
                                f"holding a state dict; {type(exc).__name__})") from None
    if isinstance(obj, Mapping) and "model_state_dict" in obj:
        obj = obj["model_state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise RissoleModelError(f"{path}: expected a state dict (or a dict with 'model_state_dict'), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise RissoleModelError(f"{path}: state dict entries that are not named tensors: {bad[:5]}")
    return dict(obj)


def load_yaml(source: PathOrDict, what: str) -> dict[str, Any]:
    """A YAML file (path) or an already-parsed dict; ``what`` names it in errors."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if not path.is_file():
        raise MissingFileError(f"{what} not found: {path}")
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml is a dependency
        raise RissoleModelError("reading the reference YAML configs needs PyYAML (pip install pyyaml)") from exc
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RissoleModelError(f"{what} {path}: invalid YAML ({exc})") from exc
    if not isinstance(data, Mapping):
        raise RissoleModelError(f"{what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def _take(cfg: Mapping[str, Any], what: str, required: tuple[str, ...], optional: Mapping[str, Any]) -> dict[str, Any]:
    """Required and optional (with the reference's defaults) entries of a config; others are errors."""
    unknown = sorted(set(cfg) - set(required) - set(optional))
    if unknown:
        raise RissoleModelError(f"{what}: unknown keys {unknown}")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise RissoleModelError(f"{what}: missing keys {missing}")
    out = dict(optional)
    out.update(cfg)
    return out


# ----------------------------------------------------------------------------- configs


def unet_config_from_reference(cfg: Mapping[str, Any], *, variant: str, k: int, block_factor: int,
                               position_embedding: bool) -> UNetConfig:
    """Our UNetConfig from the authors' UNet YAML (UNetLight's constructor arguments)."""
    what = "UNet config"
    c = _take(
        cfg, what,
        required=("in_channels", "out_channels", "time_emb_dim", "pos_emb_dim", "cond_emb_dim", "conv_config"),
        optional={"activate_cond_layer": False, "use_addition": False, "channels": [16, 32, 64],
                  "n_groups": 8, "dim_keys": 64, "n_heads": 4, "use_spatial_transformer": False},
    )
    if not (c["activate_cond_layer"] and c["use_addition"]) or c["use_spatial_transformer"]:
        raise RissoleModelError(
            f"{what}: only the 'add' conditioning is supported (activate_cond_layer: true, use_addition: true, "
            f"use_spatial_transformer: false); got activate_cond_layer={c['activate_cond_layer']}, "
            f"use_addition={c['use_addition']}, use_spatial_transformer={c['use_spatial_transformer']}"
        )
    if c["cond_emb_dim"] != k * c["in_channels"]:
        raise RissoleModelError(f"{what}: cond_emb_dim={c['cond_emb_dim']} disagrees with the checkpoint's k x C = "
                                f"{k} x {c['in_channels']} = {k * c['in_channels']}")
    if c["in_channels"] != c["out_channels"]:
        raise RissoleModelError(f"{what}: in_channels={c['in_channels']} must equal out_channels={c['out_channels']}")
    conv_required = ("init_padding", "final_kernel_size", "final_padding")
    if variant == VARIANT_ALT:
        conv = _take(c["conv_config"], f"{what} conv_config", conv_required + ("init_kernel",), {})
        geometry = dict(input_kernel_size=conv["init_kernel"], input_padding=conv["init_padding"], init_padding=1)
    else:
        # rissole_main ignores init_kernel if present.
        conv = _take(c["conv_config"], f"{what} conv_config", conv_required, {"init_kernel": None})
        geometry = dict(input_kernel_size=3, input_padding=1, init_padding=conv["init_padding"])
    try:
        return UNetConfig(
            latent_channels=c["in_channels"], channels=c["channels"], n_groups=c["n_groups"],
            n_heads=c["n_heads"], dim_keys=c["dim_keys"], time_emb_dim=c["time_emb_dim"],
            pos_emb_dim=c["pos_emb_dim"], k=k, block_factor=block_factor, conditioning="add",
            position_embedding=position_embedding, dropout=0.5,
            final_kernel_size=conv["final_kernel_size"], final_padding=conv["final_padding"], **geometry,
        )
    except ValueError as exc:
        raise RissoleModelError(f"{what}: {exc}") from exc


def autoencoder_config_from_reference(cfg: Mapping[str, Any]) -> AutoencoderConfig:
    """Our AutoencoderConfig from the authors' VQ-GAN YAML (its ``model`` section)."""
    what = "VQ-GAN config"
    top = _take(cfg, what, required=("model",), optional={"loss": None})
    model = _take(top["model"], f"{what} model", required=("latent_dim", "autoencoder_cfg"), optional={"n_embeddings": 512})
    ae = _take(model["autoencoder_cfg"], f"{what} autoencoder_cfg", required=("in_channels",),
               optional={"channels": [32, 64], "dim_keys": 64, "n_heads": 4})
    try:
        return AutoencoderConfig(
            in_channels=ae["in_channels"], channels=ae["channels"], latent_dim=model["latent_dim"],
            n_embeddings=model["n_embeddings"], n_heads=ae["n_heads"], dim_keys=ae["dim_keys"],
        )
    except ValueError as exc:
        raise RissoleModelError(f"{what}: {exc}") from exc


def diffusion_config_from_reference(cfg: Mapping[str, Any]) -> DiffusionConfig:
    """Our DiffusionConfig from the authors' DDPM YAML (``loss_function`` is training-only)."""
    what = "DDPM config"
    c = _take(cfg, what, required=("beta_1", "beta_2", "beta_schedule", "n_steps"), optional={"loss_function": "l2"})
    try:
        return DiffusionConfig(schedule=c["beta_schedule"], n_steps=c["n_steps"], beta_1=c["beta_1"], beta_2=c["beta_2"])
    except ValueError as exc:
        raise RissoleModelError(f"{what}: {exc}") from exc


# ----------------------------------------------------------------------------- key translation

# A rule maps a full reference key (regex, full match) to our key (template). Keys of residual
# blocks are translated in two steps: the block's prefix, then the name inside the block. Keys
# the reference never uses are dropped by name in translate_unet_keys, each with its reason.

_UNET_RES_PREFIXES = [
    (r"down_blocks\.(\d+)\.0", r"down.\1.res1"),
    (r"down_blocks\.(\d+)\.2", r"down.\1.res2"),
    (r"mid_block1", "mid_res1"),
    (r"mid_block2", "mid_res2"),
    (r"up_blocks\.(\d+)\.1", r"up.\1.res1"),
    (r"up_blocks\.(\d+)\.3", r"up.\1.res2"),
]

_AE_RES_PREFIXES = [
    (r"encoder\.down_blocks\.(\d+)\.2", r"encoder.down.\1.res"),
    (r"encoder\.mid_block", "encoder.mid_res"),
    (r"decoder\.mid_block", "decoder.mid_res"),
    (r"decoder\.up_blocks\.(\d+)\.0", r"decoder.up.\1.res"),
]

_AE_RES_INNER = [
    (r"block1\.0\.(weight|bias)", r"conv1.\1"),
    (r"block1\.1\.(weight|bias)", r"norm1.\1"),
    (r"block2\.0\.(weight|bias)", r"conv2.\1"),
    (r"block2\.1\.(weight|bias)", r"norm2.\1"),
    (r"shortcut\.(weight|bias)", r"skip.\1"),
]

_UNET_RES_INNER = _AE_RES_INNER + [(r"time_emb\.(weight|bias)", r"time_proj.\1")]

_UNET_RULES = [
    (r"time_embedding\.mlp\.0\.(weight|bias)", r"time_embed.linear_1.\1"),
    (r"time_embedding\.mlp\.2\.(weight|bias)", r"time_embed.linear_2.\1"),
    (r"pre_init_conv\.(weight|bias)", r"x_conv.\1"),
    (r"cond_conv\.(weight|bias)", r"cond_conv.\1"),
    (r"init_conv\.(weight|bias)", r"in_conv.\1"),
    (r"down_blocks\.(\d+)\.4\.(weight|bias)", r"down.\1.norm.\2"),
    (r"down_blocks\.(\d+)\.5\.conv\.(weight|bias)", r"down.\1.downsample.\2"),
    (r"mid_attn\.to_qkv\.weight", "mid_attn.qkv.weight"),
    (r"mid_attn\.to_out\.(weight|bias)", r"mid_attn.out.\1"),
    (r"up_blocks\.(\d+)\.0\.conv\.(weight|bias)", r"up.\1.upsample.\2"),
    (r"up_blocks\.(\d+)\.5\.(weight|bias)", r"up.\1.norm.\2"),
    (r"final_conv\.(weight|bias)", r"out_conv.\1"),
]

_AE_RULES = [
    (r"encoder\.down_blocks\.(\d+)\.0\.(weight|bias)", r"encoder.down.\1.conv.\2"),
    (r"encoder\.mid_attn\.to_qkv\.weight", "encoder.mid_attn.qkv.weight"),
    (r"encoder\.mid_attn\.to_out\.(weight|bias)", r"encoder.mid_attn.out.\1"),
    (r"encoder\.out\.(weight|bias)", r"encoder.out_conv.\1"),
    (r"vq\.embedding\.weight", "quantizer.codebook"),
    (r"decoder\.init_conv\.0\.(weight|bias)", r"decoder.in_conv.\1"),
    (r"decoder\.mid_attn\.to_qkv\.weight", "decoder.mid_attn.qkv.weight"),
    (r"decoder\.mid_attn\.to_out\.(weight|bias)", r"decoder.mid_attn.out.\1"),
    (r"decoder\.up_blocks\.(\d+)\.1\.(weight|bias)", r"decoder.up.\1.upsample.\2"),
    (r"decoder\.out\.(weight|bias)", r"decoder.out_conv.\1"),
]

# Sinusoid tables: recomputed by us, checked against the checkpoint's copy.
_TABLES = ("time_embedding.pos_embedding", "pos_embedding.pos_embedding")

_REASON_COND_EMBEDDING = "cond_embedding: used only with use_spatial_transformer"
_REASON_COND_EMB = "residual-block cond_emb: never called in the reference forward"
_REASON_POS_MLP = "position MLP: computed but never used by rissole_main / without --use-pos"
_REASON_POS_PROJ = "residual-block pos_emb: position embedding disabled (position_embedding=False)"
_REASON_TABLE = "fixed sinusoid table: recomputed (checked equal)"


def _apply(rules, key: str) -> str | None:
    for pattern, template in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(template)
    return None


@dataclass
class Translation:
    """A reference state dict in our names."""

    state: dict[str, torch.Tensor]
    #: our key -> reference key
    names: dict[str, str]
    #: dropped reference key -> reason
    dropped: dict[str, str]


# A key function returns (our key, "") to import, (None, reason) to drop, (None, "") for unknown.
KeyResult = tuple[Union[str, None], str]


def _res_key(key: str, prefixes, inner_fn: Callable[[str], KeyResult]) -> KeyResult | None:
    for pattern, template in prefixes:
        m = re.fullmatch(pattern + r"\.(.+)", key)
        if m:
            name, reason = inner_fn(m.group(m.re.groups))
            return (m.expand(template) + "." + name if name else None), reason
    return None


def _translate(state: Mapping[str, torch.Tensor], key_fn: Callable[[str], KeyResult],
               what: str) -> Translation:
    """Translate every key with ``key_fn``."""
    out: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in state.items():
        ours, reason = key_fn(key)
        if ours is not None:
            out[ours] = value
            names[ours] = key
        elif reason:
            dropped[key] = reason
        else:
            unknown.append(key)
    if unknown:
        raise RissoleModelError(f"{what}: unknown keys {unknown}")
    return Translation(out, names, dropped)


def translate_unet_keys(state: Mapping[str, torch.Tensor], *, position_embedding: bool, pos_emb_dim: int,
                        what: str = "UNet checkpoint") -> Translation:
    """The reference UNet's state dict (no prefix) -> ours."""

    def inner(name: str) -> KeyResult:
        if name.startswith("cond_emb."):
            return None, _REASON_COND_EMB
        m = re.fullmatch(r"pos_emb\.(weight|bias)", name)
        if m:
            return (f"pos_proj.{m[1]}", "") if position_embedding else (None, _REASON_POS_PROJ)
        return _apply(_UNET_RES_INNER, name), ""

    def key_fn(key: str) -> KeyResult:
        if key in _TABLES:
            expected = sinusoid_table(SINUSOID_ROWS, pos_emb_dim)
            table = state[key]
            if table.shape != expected.shape or not torch.allclose(table.float(), expected, rtol=0.0, atol=1e-5):
                raise RissoleModelError(
                    f"{what}: {key} {list(table.shape)} is not the fixed sinusoid table "
                    f"[{SINUSOID_ROWS}, {pos_emb_dim}] this model computes"
                )
            return None, _REASON_TABLE
        if re.fullmatch(r"cond_embedding\.(weight|bias)", key):
            return None, _REASON_COND_EMBEDDING
        m = re.fullmatch(r"pos_embedding\.mlp\.([02])\.(weight|bias)", key)
        if m:
            if not position_embedding:
                return None, _REASON_POS_MLP
            return f"pos_embed.linear_{1 if m[1] == '0' else 2}.{m[2]}", ""
        ours = _apply(_UNET_RULES, key)
        if ours is not None:
            return ours, ""
        return _res_key(key, _UNET_RES_PREFIXES, inner) or (None, "")

    return _translate(state, key_fn, what)


def translate_autoencoder_keys(state: Mapping[str, torch.Tensor],
                               what: str = "VQ-GAN checkpoint") -> Translation:
    """The reference VQ-GAN's state dict (no prefix) -> ours (nothing is dropped)."""

    def key_fn(key: str) -> KeyResult:
        ours = _apply(_AE_RULES, key)
        if ours is not None:
            return ours, ""
        return _res_key(key, _AE_RES_PREFIXES, lambda name: (_apply(_AE_RES_INNER, name), "")) or (None, "")

    return _translate(state, key_fn, what)


def uses_position_projections(unet_state: Mapping[str, torch.Tensor]) -> bool:
    """True for a ``rissole_alt`` UNet (its residual blocks have ``pos_emb`` projections)."""
    return any(re.search(r"(^|\.)pos_emb\.weight$", key) for key in unet_state)


# ----------------------------------------------------------------------------- whole import

_PREFIX_UNET = "eps_model."
_PREFIX_AE = "vae_model."


def _split_ddpm_checkpoint(state: Mapping[str, torch.Tensor], path: Path) -> tuple[dict, dict]:
    unet = {k[len(_PREFIX_UNET):]: v for k, v in state.items() if k.startswith(_PREFIX_UNET)}
    ae = {k[len(_PREFIX_AE):]: v for k, v in state.items() if k.startswith(_PREFIX_AE)}
    other = sorted(k for k in state if not k.startswith((_PREFIX_UNET, _PREFIX_AE)))
    if not unet or not ae:
        lacking = "'eps_model.' (UNet)" if not unet else "'vae_model.' (VQ-GAN)"
        raise RissoleModelError(
            f"{path}: no {lacking} keys, so this is not a DDPM checkpoint of the authors' train_ddpm.py; "
            "a UNet-only or VQ-GAN-only checkpoint goes to unet_checkpoint= / vqgan_checkpoint="
        )
    if other:
        raise RissoleModelError(f"{path}: unknown keys outside eps_model./vae_model.: {other[:10]}")
    return unet, ae


def _read_part(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    state = read_reference_checkpoint(path)
    if any(k.startswith((_PREFIX_UNET, _PREFIX_AE)) for k in state):
        raise RissoleModelError(f"{path}: this is a whole DDPM checkpoint, not a {what}-only one; pass it as checkpoint=")
    return state


def _read_checkpoints(checkpoint: str | os.PathLike | None, vqgan_checkpoint: str | os.PathLike | None,
                      unet_checkpoint: str | os.PathLike | None
                      ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], tuple[str, str], tuple[str, str]]:
    """The UNet's and the VQ-GAN's reference state dicts, from one DDPM checkpoint or one file each;
    with the reference key prefixes and the two sources' names (for error messages)."""
    if checkpoint is not None:
        if vqgan_checkpoint is not None or unet_checkpoint is not None:
            raise InvalidArgumentError("pass either checkpoint (a whole DDPM checkpoint) or vqgan_checkpoint and unet_checkpoint, not both")
        unet_state, ae_state = _split_ddpm_checkpoint(read_reference_checkpoint(checkpoint), Path(checkpoint))
        ref_prefix_unet, ref_prefix_ae = _PREFIX_UNET, _PREFIX_AE
        unet_what = ae_what = f"checkpoint {checkpoint}"
    else:
        if vqgan_checkpoint is None or unet_checkpoint is None:
            raise InvalidArgumentError("pass checkpoint (a whole DDPM checkpoint) or both vqgan_checkpoint and unet_checkpoint")
        unet_state = _read_part(unet_checkpoint, "UNet")
        ae_state = _read_part(vqgan_checkpoint, "VQ-GAN")
        ref_prefix_unet = ref_prefix_ae = ""
        unet_what, ae_what = f"UNet checkpoint {unet_checkpoint}", f"VQ-GAN checkpoint {vqgan_checkpoint}"
    return unet_state, ae_state, (ref_prefix_unet, ref_prefix_ae), (unet_what, ae_what)


def _variant(unet_state: dict[str, torch.Tensor], position_embedding: bool | None, unet_what: str) -> tuple[str, bool]:
    """The UNet variant and whether it uses the position embedding."""
    if uses_position_projections(unet_state):
        variant = VARIANT_ALT
        use_pos = True if position_embedding is None else bool(position_embedding)
    else:
        variant = VARIANT_MAIN
        if position_embedding:
            raise RissoleModelError(
                f"{unet_what}: position_embedding=True, but its residual blocks have no position projections "
                "(a rissole_main checkpoint, whose position embedding is never used)"
            )
        use_pos = False
    return variant, use_pos


def _neighbour_count(unet_state: dict[str, torch.Tensor], unet_yaml: dict, k: int | None, unet_what: str,
                     ref_prefix_unet: str) -> int:
    """k from the neighbour conv: its input is k stacked latent blocks (checked against a given ``k``)."""
    if "cond_conv.weight" not in unet_state:
        raise RissoleModelError(f"{unet_what}: missing key {ref_prefix_unet}cond_conv.weight (the neighbour conv)")
    cond_in = unet_state["cond_conv.weight"].shape[1]
    latent = unet_yaml.get("in_channels")
    if not isinstance(latent, int) or latent < 1:
        raise RissoleModelError(f"UNet config: in_channels must be a positive integer, got {latent!r}")
    if cond_in % latent:
        raise RissoleModelError(
            f"{unet_what}: the neighbour conv takes {cond_in} channels, not a multiple of the latent channels ({latent})"
        )
    k_found = cond_in // latent
    if k is not None and k != k_found:
        raise RissoleModelError(f"k={k} was given, but the weights of {unet_what} are for k={k_found} neighbours")
    return k_found


def import_reference(
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
) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str], ReferenceImport]:
    """Read the authors' files; see :meth:`rissole_trt.models.RissoleModel.from_reference`.

    Returns (config, state dict in our names with ``unet.`` / ``autoencoder.`` prefixes,
    our key -> reference key for error messages, import report).
    """
    from ..config import ModelConfig

    for name, value in (("unet_config", unet_config), ("vqgan_config", vqgan_config), ("ddpm_config", ddpm_config)):
        if value is None:
            raise InvalidArgumentError(f"{name} is required (the authors' YAML file or its parsed dict)")
    unet_state, ae_state, (ref_prefix_unet, ref_prefix_ae), (unet_what, ae_what) = _read_checkpoints(
        checkpoint, vqgan_checkpoint, unet_checkpoint)
    unet_yaml = load_yaml(unet_config, "UNet config")
    ae_cfg = autoencoder_config_from_reference(load_yaml(vqgan_config, "VQ-GAN config"))
    diffusion_cfg = diffusion_config_from_reference(load_yaml(ddpm_config, "DDPM config"))

    variant, use_pos = _variant(unet_state, position_embedding, unet_what)
    k_found = _neighbour_count(unet_state, unet_yaml, k, unet_what, ref_prefix_unet)
    unet_cfg = unet_config_from_reference(unet_yaml, variant=variant, k=k_found, block_factor=block_factor,
                                          position_embedding=use_pos)
    try:
        config = ModelConfig(autoencoder=ae_cfg, unet=unet_cfg, diffusion=diffusion_cfg, image_size=image_size)
    except ValueError as exc:
        raise RissoleModelError(f"reference configs: {exc}") from exc

    parts = {
        "unet.": (translate_unet_keys(unet_state, position_embedding=use_pos, pos_emb_dim=unet_cfg.pos_emb_dim,
                                      what=unet_what), ref_prefix_unet),
        "autoencoder.": (translate_autoencoder_keys(ae_state, what=ae_what), ref_prefix_ae),
    }
    state: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for our_prefix, (tr, ref_prefix) in parts.items():
        for key, value in tr.state.items():
            state[our_prefix + key] = value
            names[our_prefix + key] = ref_prefix + tr.names[key]
        dropped.update({ref_prefix + key: why for key, why in tr.dropped.items()})
    report = ReferenceImport(variant=variant, k=k_found, position_embedding=use_pos, dropped=dropped)
    return config, state, names, report

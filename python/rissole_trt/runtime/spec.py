"""The one description of the per-step denoiser's inputs, shared by every backend.

A sampler step runs only :meth:`BlockUNet.forward_hoisted`; the timestep-independent parts are
computed once per batch by :class:`rissole_trt.models.BlockDenoiser` ("hoisted"). The torch
backend calls ``forward_hoisted`` in this order, the ONNX export names its inputs and dynamic axes
from it, ONNX Runtime feeds by these names, and TensorRT's optimisation profiles are set per name.

Dynamic axes have names of their own: ``rows`` (block rows: images x P) and ``time_rows`` (1 when
every row is at the same timestep, as in the Engine's samplers, else ``rows``). TensorRT checks at
run time that axes sharing a name have one size, so they must not share one.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidArgumentError
from ..models.rissole import RissoleModel

__all__ = ["TensorSpec", "StepSpec", "step_spec"]


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: its name, shape (ints, or the name of a dynamic axis), dtype and role."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str
    hoisted: bool  # computed once per batch rather than per step
    meaning: str

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {axis: size for axis, size in enumerate(self.shape) if isinstance(size, str)}

    def concrete(self, sizes: dict[str, int]) -> tuple[int, ...]:
        """The shape with each dynamic axis replaced by ``sizes[name]``."""
        return tuple(sizes[s] if isinstance(s, str) else s for s in self.shape)


@dataclass(frozen=True)
class StepSpec:
    """Inputs (in ``forward_hoisted`` order) and output of the per-step network of one model."""

    inputs: tuple[TensorSpec, ...]
    output: TensorSpec

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor name: {axis: axis name}}``, as ``torch.onnx.export`` takes it."""
        return {spec.name: spec.dynamic_axes for spec in self.inputs + (self.output,)}

    def feeds(self, *values) -> dict:
        """Name the positional ``forward_hoisted`` arguments (a trailing None pos_bias is dropped)."""
        values = values[:len(self.inputs)]
        if len(values) != len(self.inputs) or any(v is None for v in values):
            raise InvalidArgumentError(f"the per-step network takes {', '.join(self.input_names)}")
        return dict(zip(self.input_names, values))


def step_spec(model: RissoleModel) -> StepSpec:
    """The per-step inputs of ``model``: ``pos_bias`` only for models with position embedding."""
    config = model.config
    unet = config.unet
    bs, c = config.block_size, unet.latent_channels
    width = model.unet.embedding_width
    meaning = ("every cross-attention layer's keys and values of the context tokens (BlockUNet.condition)"
               if unet.conditioning == "xattn" else "neighbour features (BlockUNet.condition)")
    inputs = [
        TensorSpec("x", ("rows", c, bs, bs), "float32", False, "noisy latent blocks"),
        TensorSpec("cond_feat", ("rows",) + model.unet.cond_feat_shape(bs), "float32", True, meaning),
        TensorSpec("time_bias", ("time_rows", width), "float32", False,
                   "rows of BlockUNet.embed_time: 1 when all rows share the timestep"),
    ]
    if model.unet.pos_embed is not None:
        inputs.append(TensorSpec("pos_bias", ("rows", width), "float32", True,
                                 "BlockUNet.embed_pos of each row's block position"))
    output = TensorSpec("eps", ("rows", c, bs, bs), "float32", False, "predicted noise")
    return StepSpec(tuple(inputs), output)

"""A small, exactly-resumable training loop shared by the autoencoder and the denoiser.

Everything that decides the next step lives in the checkpoint: parameters, optimizer moments, EMA
weights, the step counter, the global torch RNG (dropout, noise) and the data generator. So N steps,
a stop and N more steps give bitwise the same weights on the CPU as 2N steps in one run.
Checkpoints are plain tensors and numbers, loaded with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_file
from ..disk import translate_disk_full
from ..errors import InvalidArgumentError, TrainingDiverged

CHECKPOINT_NAME = "checkpoint.pt"
#: Training settings a resume may change: the budget, the checkpoint interval, the precision and the
#: memory layout (the last two change only the rounding).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "precision", "channels_last")

#: Training precisions: ``fp32``, ``bf16`` (autocast: matmuls and convolutions in bfloat16, weights,
#: optimizer state and losses in float32) and ``auto`` (bf16 where the device has bf16 arithmetic).
TRAINING_PRECISIONS = ("auto", "fp32", "bf16")


def resolve_training_precision(precision: str, device: str = "cpu") -> str:
    """``auto`` -> ``bf16`` on a device with native bf16 arithmetic (AVX-512-BF16 / AMX), else ``fp32``."""
    if precision not in TRAINING_PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {TRAINING_PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    from ..platform import bf16_native

    return "bf16" if bf16_native(device) else "fp32"


@dataclass
class TrainState:
    """What :func:`train_loop` updates and checkpoints."""

    modules: dict[str, torch.nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    data_generator: torch.Generator
    ema: dict[str, torch.nn.Module] = field(default_factory=dict)
    step: int = 0

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "ema": {k: m.state_dict() for k, m in self.ema.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "torch_rng": torch.get_rng_state(),
            "data_rng": self.data_generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        for key, module in self.modules.items():
            module.load_state_dict(state["modules"][key])
        for key, module in self.ema.items():
            module.load_state_dict(state["ema"][key])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
        torch.set_rng_state(state["torch_rng"])
        self.data_generator.set_state(state["data_rng"])


def make_ema(module: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of ``module`` that :func:`update_ema` keeps as a moving average."""
    ema = copy.deepcopy(module).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: torch.nn.Module, module: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), module.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), module.buffers()):
        e.copy_(b)


def save_checkpoint(state: TrainState, directory: Path, extra: dict | None = None) -> Path:
    """Write ``directory/checkpoint.pt`` atomically."""
    payload = state.state_dict()
    payload["extra"] = extra or {}
    with translate_disk_full(directory / CHECKPOINT_NAME), atomic_file(directory / CHECKPOINT_NAME) as tmp:
        torch.save(payload, tmp)
    return directory / CHECKPOINT_NAME


def data_fingerprint(images) -> str:
    """sha256 of the training images' bytes, shape and dtype: a resume must see the same data."""
    import hashlib

    import numpy as np

    array = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{array.dtype}{array.shape}".encode())
    digest.update(array.data)
    return digest.hexdigest()


def _flatten(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def changed_settings(saved: dict, wanted: dict) -> list[str]:
    """``name: saved -> wanted`` for every setting that differs (nested dicts flattened, e.g. ``unet.channels``)."""
    a, b = _flatten(saved), _flatten(wanted)
    return [f"{key}: {a.get(key, '(unset)')} -> {b.get(key, '(unset)')}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def load_checkpoint(state: TrainState, directory: Path, fixed: dict | None = None, *,
                    announce: bool = True) -> dict | None:
    """Restore ``state`` from ``directory`` if it holds a checkpoint; returns its ``extra`` dict.

    ``fixed`` holds the settings the checkpoint fixes (model config, training settings, data
    fingerprint). They are compared with the checkpoint's *before* anything is loaded, and a
    resume with any of them changed is refused, naming each one.
    """
    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which
        raise InvalidArgumentError(f"cannot read training checkpoint {path}: {error}") from error
    extra = payload.get("extra", {})
    if fixed is not None:
        changes = changed_settings({k: extra.get(k) for k in fixed}, fixed)
        if changes:
            raise InvalidArgumentError(
                f"cannot resume from {path} (step {payload['step']}): it was made with other settings ("
                + "; ".join(changes) + "); use the same settings or another output folder")
    state.load_state_dict(payload)
    if announce:
        print(f"resuming from step {state.step} ({path})", flush=True)
    return extra


def train_loop(
    state: TrainState,
    step_fn: Callable[[int], dict[str, torch.Tensor]],
    *,
    total_steps: int,
    directory: Path,
    max_minutes: float | None = None,
    checkpoint_every: int = 500,
    ema_decay: float = 0.999,
    grad_clip: float | None = 1.0,
    extra: dict | None = None,
    progress: bool = True,
    on_checkpoint: Callable[[TrainState], None] | None = None,
    precision: str = "fp32",
) -> TrainState:
    """Run ``step_fn`` until ``total_steps`` (counted across resumes) or the time budget.

    ``step_fn(step)`` computes and returns the losses of one batch (key ``"loss"`` is optimised);
    this loop does zero_grad / backward / clipping / optimizer step / EMA, checkpoints every
    ``checkpoint_every`` steps and at the end, and stops with :class:`TrainingDiverged` (keeping the
    last checkpoint) on a non-finite loss. Only the first optimizer in ``state.optimizers`` is stepped
    here; others (a discriminator's) belong to ``step_fn``. ``precision="bf16"`` runs ``step_fn``
    under CPU bf16 autocast (resolve ``auto`` first with :func:`resolve_training_precision`).
    """
    if precision not in ("fp32", "bf16"):
        raise InvalidArgumentError(f"train_loop precision must be 'fp32' or 'bf16', got {precision!r}")
    optimizer = next(iter(state.optimizers.values()))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    deadline = time.monotonic() + 60.0 * max_minutes if max_minutes else math.inf
    bar = tqdm(total=total_steps, initial=state.step, disable=not progress, dynamic_ncols=True, unit="step")
    try:
        while state.step < total_steps and time.monotonic() < deadline:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                losses = step_fn(state.step)
            loss = losses["loss"]
            if not torch.isfinite(loss):
                kept = (f"the last good checkpoint in {directory / CHECKPOINT_NAME} is kept"
                        if (directory / CHECKPOINT_NAME).exists() else "no checkpoint was written yet")
                raise TrainingDiverged(f"loss became {loss.item()} at step {state.step}; {kept} "
                                       "(try a lower learning rate or stronger gradient clipping)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
            for key, ema in state.ema.items():
                update_ema(ema, state.modules[key], ema_decay)
            state.step += 1
            bar.update(1)
            bar.set_postfix({k: f"{v.item():.4f}" for k, v in losses.items()}, refresh=False)
            if state.step % checkpoint_every == 0:
                save_checkpoint(state, directory, extra)
                if on_checkpoint:
                    on_checkpoint(state)
    finally:
        bar.close()
    save_checkpoint(state, directory, extra)
    if on_checkpoint:
        on_checkpoint(state)
    return state


def draw_batch(count: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of one training batch, drawn from the data generator (so resume is exact)."""
    return torch.randint(0, count, (batch_size,), generator=generator)

"""Parity fixtures made with the authors' RISSOLE code (copied from ../shared/reference) and their checks.

Two variants, both k = 3 with the CIFAR-size VQ-GAN: ``ref_add_`` (rissole_main at HEAD, position
embedding unused) and ``ref_addpos_`` (rissole_alt, position embedding in every residual block).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "reference"
VARIANTS = ("ref_add_", "ref_addpos_")
TOL = 1e-4  # absolute, float32
STEP_T = 500  # the fixture's `step` is one ancestral DDPM step at t = 500 for every row


def paths(prefix: str) -> dict[str, Path]:
    """The checkpoint and the three YAML configs of a variant."""
    return {
        "checkpoint": FIXTURES / f"{prefix}ddpm_best_model.pt",
        "unet_config": FIXTURES / f"{prefix}unet.yaml",
        "vqgan_config": FIXTURES / f"{prefix}vqgan.yaml",
        "ddpm_config": FIXTURES / f"{prefix}ddpm.yaml",
    }


def load_io(prefix: str) -> dict[str, torch.Tensor]:
    """Inputs and reference outputs of a variant."""
    with np.load(FIXTURES / f"{prefix}io.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def max_errors(model, io: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max abs error of eps, dec, enc and step against the reference outputs."""
    from rissole_trt.diffusion import ddpm_step

    eps = model.eps(io["x"], io["cond"], io["t"], io["pos"])
    dec = model.decode(io["z"])
    enc = model.encode(io["img"])
    eps_500 = model.eps(io["x"], io["cond"], STEP_T, io["pos"])
    step = ddpm_step(model.schedule, io["x"], eps_500, STEP_T, io["noise"])
    out = {"eps": eps, "dec": dec, "enc": enc, "step": step}
    return {key: (value - io[key]).abs().max().item() for key, value in out.items()}


def assert_matches_reference(model, io: dict[str, torch.Tensor]) -> None:
    errors = max_errors(model, io)
    bad = {key: err for key, err in errors.items() if not err <= TOL}
    assert not bad, f"outputs differ from the reference beyond {TOL}: {bad}"

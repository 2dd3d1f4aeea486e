"""The built-in default model and database that ship inside the package."""
from __future__ import annotations

import numpy as np
import pytest

from rissole_trt import cli
from rissole_trt.engine import Engine, default_asset_paths

MODEL_DIR, DB_DIR = default_asset_paths()
pytestmark = pytest.mark.skipif(not (MODEL_DIR / "config.json").is_file(), reason="no default model in this checkout")


def test_default_assets_fit_the_package_budget():
    total = sum(p.stat().st_size for d in (MODEL_DIR, DB_DIR) for p in d.rglob("*") if p.is_file())
    assert total <= 12 * 1024 * 1024  # the asset budget (issue: <= 12 MiB)


def test_engine_without_arguments_uses_the_default_model():
    engine = Engine(device="cpu")
    assert engine.database.count == 3400  # the train split of the emoji set
    images = engine.generate(2, sampler="dpmpp_2m", steps=5, progress=False)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8 and images.std() > 0


def test_generate_cli_without_model_arguments(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert cli.main(["generate", "-n", "2", "-o", str(out), "--sampler", "ddim", "--steps", "3", "--no-progress"]) == 0
    assert out.stat().st_size > 0
    assert "overlap=half, this model's default" in capsys.readouterr().out  # said, not silent
    assert cli.main(["generate", "-n", "2", "-o", str(out), "--sampler", "ddim", "--steps", "3", "--no-progress",
                     "--overlap", "none"]) == 0
    assert "overlap" not in capsys.readouterr().out


def test_the_default_model_samples_with_shifted_windows_unless_told_otherwise():
    engine = Engine(device="cpu")
    assert engine.model.default_overlap == "half"  # its seam ratio meets the target only with them (README)
    assert engine.plan(2).overlap == "half" and engine.plan(2, overlap="none").overlap == "none"

"""Every Python and shell example in the README runs, so the README cannot drift from the code.

The examples run in a scratch folder holding what they name: ``model_dir`` and ``db_dir`` (the
authors' fixture model and a database of smooth images), ``best_model.pt`` and the YAML configs
(the fixture checkpoint), ``data.npz`` (images, ``train_idx``, ``test_idx``, ``categories``),
``images/`` (PNG files), and for Python the variables the examples use (``my_images``,
``ids_of_one_category``, ``x_t``, ``cond``, ...). Python blocks run in order in one namespace, like
one Python session reading the README from the top. To keep the suite fast, image counts and step
counts in shell commands are cut down (``--steps 2``, ``-n 2``); nothing else is changed. A block
right after a line ``<!-- readme-test: skip REASON -->`` is skipped with that reason.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reference_fixtures import paths
from synthetic import smooth_images

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = re.compile(r"<!--\s*readme-test:\s*skip\s+(.*?)\s*-->")
FAST = [  # (pattern, replacement) applied to shell blocks only
    (re.compile(r"--steps \d+"), "--steps 2"),
    (re.compile(r"(?<=\s)-n \d+"), "-n 2"),
    (re.compile(r"--n \d+"), "--n 4"),
    (re.compile(r"--checkpoint-every \d+"), "--checkpoint-every 1"),
]


def readme_blocks() -> list[tuple[str, str, str | None, int]]:
    """(language, code, skip reason or None, line number) of every python / bash block."""
    blocks, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^\s*```(python|bash)\s*$", lines[i])
        if not match:
            i += 1
            continue
        skip = None
        for back in range(i - 1, max(i - 3, -1), -1):
            found = SKIP.search(lines[back])
            if found:
                skip = found.group(1)
                break
        start = i + 1
        end = start
        while not lines[end].strip().startswith("```"):
            end += 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        code = "\n".join(line[indent:] for line in lines[start:end])
        blocks.append((match.group(1), code, skip, i + 1))
        i = end + 1
    return blocks


BLOCKS = readme_blocks()


@pytest.fixture(scope="module")
def session(scratch) -> dict:
    """The namespace shared by the README's Python blocks."""
    return _namespace(scratch)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    from PIL import Image

    from rissole_trt.builder import build_database
    from rissole_trt.models import RissoleModel

    root = tmp_path_factory.mktemp("readme")
    fixture = paths("ref_addpos_")
    for key, name in (("checkpoint", "best_model.pt"), ("unet_config", "unet.yaml"),
                      ("vqgan_config", "vqgan.yaml"), ("ddpm_config", "ddpm.yaml")):
        shutil.copy(fixture[key], root / name)
    model = RissoleModel.from_reference(**fixture)
    model.save(root / "model_dir")
    images = smooth_images(40)
    categories = np.array(["faces", "symbols"] * 20)
    np.savez(root / "data.npz", images=images, categories=categories, train_idx=np.arange(32),
             test_idx=np.arange(32, 40))
    build_database(model, images[:32], root / "db_dir", labels=(categories[:32] == "symbols").astype(np.int64),
                   label_names=["faces", "symbols"], progress=False)
    (root / "images").mkdir()
    for i in range(6):
        Image.fromarray(images[i]).save(root / "images" / f"{i}.png")
    return root


def _namespace(root: Path) -> dict:
    from rissole_trt.models import RissoleModel

    model = RissoleModel.load(root / "model_dir")
    cfg = model.config
    n, c, bs, k = 2, cfg.autoencoder.latent_dim, cfg.block_size, cfg.unet.k
    gen = torch.Generator().manual_seed(0)
    with np.load(root / "data.npz") as data:
        images = data["images"]
    return {
        "my_images": images[:2],
        "ids_of_one_category": np.arange(0, 32, 2),
        "x_t": torch.randn(n, c, bs, bs, generator=gen),
        "cond": torch.randn(n, k * c, bs, bs, generator=gen),
        "t": torch.tensor([10, 500]),
        "pos": torch.tensor([0, 3]),
        "pixels": torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 127.5 - 1,
    }


@pytest.mark.parametrize("language,code,skip,line", BLOCKS, ids=[f"line{b[3]}-{b[0]}" for b in BLOCKS])
def test_readme_example_runs(scratch, session, language, code, skip, line, monkeypatch):
    if skip:
        pytest.skip(skip)
    monkeypatch.chdir(scratch)
    if language == "python":
        exec(compile(code, f"README.md:{line}", "exec"), session)
        return
    for pattern, replacement in FAST:
        code = pattern.sub(replacement, code)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=scratch, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"README.md:{line} failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_the_readme_has_examples_and_states_the_test_command():
    assert sum(1 for b in BLOCKS if b[2] is None) >= 8
    assert "pytest -q tests" in README.read_text()

"""Every Python and shell example in the README and in docs/*.md runs, so the documentation cannot
drift from the code.

The examples run in a scratch folder holding what they name: ``model_dir`` and ``db_dir`` (the
authors' fixture model and a database of smooth images), ``best_model.pt`` and the YAML configs
(the fixture checkpoint), ``data.npz`` (images, ``train_idx``, ``test_idx``, ``categories``),
``images/`` (PNG files), and for Python the variables the examples use (``my_images``,
``ids_of_one_category``, ``x_t``, ``cond``, ...). The Python blocks of one file run in order in one
namespace, like one Python session reading that page from the top. To keep the suite fast, image
counts and step counts in shell commands are cut down (``--steps 2``, ``-n 2``); nothing else is
changed. Shell blocks are the slow tier (each starts a process). A line right before a block,
``<!-- readme-test: KIND REASON -->``, changes what runs: ``skip`` skips it, ``slow`` puts a Python
block in the slow tier (it needs what a shell block made), ``last-command`` runs only the command
after its last ``&&`` (the set-up lines: installing is what .ci/run does).
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

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|slow|last-command)\s+(.*?)\s*-->")
FAST = [  # (pattern, replacement) applied to shell blocks only
    (re.compile(r"--steps \d+"), "--steps 2"),
    (re.compile(r"(?<=\s)-n \d+"), "-n 2"),
    (re.compile(r"--n \d+"), "--n 4"),
    (re.compile(r"--checkpoint-every \d+"), "--checkpoint-every 1"),
]


def doc_blocks(path: Path) -> list[tuple[str, str, str | None, str | None, int]]:
    """(language, code, marker kind or None, its reason, line number) of every python / bash block."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        match = re.match(r"^\s*```(python|bash)\s*$", lines[i])
        if not match:
            i += 1
            continue
        kind = reason = None
        for back in range(i - 1, max(i - 3, -1), -1):
            found = MARKER.search(lines[back])
            if found:
                kind, reason = found.groups()
                break
        start = i + 1
        end = start
        while not lines[end].strip().startswith("```"):
            end += 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        code = "\n".join(line[indent:] for line in lines[start:end])
        blocks.append((match.group(1), code, kind, reason, i + 1))
        i = end + 1
    return blocks


def _cases() -> list:
    cases = []
    for path in DOCS:
        name = path.relative_to(ROOT).as_posix()
        for language, code, kind, reason, line in doc_blocks(path):
            marks = [pytest.mark.slow] if language == "bash" or kind == "slow" else []
            cases.append(pytest.param(name, language, code, kind, reason, line, marks=marks,
                                      id=f"{name}:{line}-{language}"))
    return cases


CASES = _cases()


@pytest.fixture(scope="module")
def sessions(scratch) -> dict:
    """One namespace per documentation file, shared by that file's Python blocks."""
    return {path.relative_to(ROOT).as_posix(): _namespace(scratch) for path in DOCS}


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


@pytest.mark.parametrize("doc,language,code,kind,reason,line", CASES)
def test_documented_example_runs(scratch, sessions, doc, language, code, kind, reason, line, monkeypatch):
    if kind == "skip":
        pytest.skip(reason)
    monkeypatch.chdir(scratch)
    if language == "python":
        exec(compile(code, f"{doc}:{line}", "exec"), sessions[doc])
        return
    if kind == "last-command":
        code = code.rsplit("&&", 1)[-1].strip()
    for pattern, replacement in FAST:
        code = pattern.sub(replacement, code)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=scratch, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{doc}:{line} failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_the_documentation_has_examples_and_the_readme_states_the_commands():
    runnable = [case for case in CASES if case.values[3] != "skip"]
    assert len(runnable) >= 8
    assert any(case.values[0] == "README.md" and case.values[1] == "python" for case in runnable)
    text = README.read_text()
    assert "pytest -q tests" in text and "rissole-trt generate -n 16 -o grid.png" in text

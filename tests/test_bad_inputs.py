"""Nothing lost, round two: what each writer may replace, what an engine load checks, bad inputs.

1. The output matrix: every writer with its replace flag set, against every other kind of output,
   a folder of other files, a file and a symbolic link to each: refused, nothing changed; the same
   kind (also one written before kinds were recorded) is replaced.
2. The bad-input table: one row per case, through the CLI in-process, each a one-line error with
   exit code 2 and nothing deleted or changed.
3. Temporaries of a killed writer are removed by the next write beside them.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rissole_trt import cli
from rissole_trt.atomic import _HOST, reap_temporaries
from rissole_trt.builder import build_database
from rissole_trt.distributed import RUN_FILE, DatasetRun, generate_dataset
from rissole_trt.engine import Engine
from rissole_trt.errors import InvalidTypeError, OutputExistsError
from rissole_trt.evaluation.fid import FeatureNet, save_feature_net
from rissole_trt.models import RissoleModel
from rissole_trt.outputs import DATABASE, DATASET_RUN, ENGINE, KINDS, MODEL, kind_of
from rissole_trt.runtime.engine_build import build_engine

from reference_fixtures import paths
from synthetic import smooth_images

BUILD = dict(batch_sizes=(1,), budget_s=0.5, candidates=("tuned", "eager", "onnxruntime"), log=lambda _: None)


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    return RissoleModel.from_reference(**paths("ref_addpos_")).eval()


@pytest.fixture(scope="module")
def originals(model, tmp_path_factory) -> dict[str, Path]:
    """One real output of every kind (and the images the database was built from), never modified."""
    root = tmp_path_factory.mktemp("originals")
    images = smooth_images(12)
    np.savez(root / "data.npz", images=images)
    model.save(root / "model")
    build_database(model, images, root / "db", progress=False)
    build_engine(model, root / "engine", **BUILD)
    (root / "run").mkdir()  # a run as generate-dataset leaves it before its first shard
    DatasetRun(n=4, shard_size=2, batch_size=2, seed=0, sampler="ddim", steps=4, overlap="none", format="png",
               model_fingerprint="f").write(root / "run" / RUN_FILE)
    (root / "folder").mkdir()
    (root / "folder" / "thesis.txt").write_text("years of work")
    (root / "file.txt").write_text("a file")
    return {"model": root / "model", "database": root / "db", "engine": root / "engine", "dataset-run": root / "run",
            "folder": root / "folder", "file": root / "file.txt", "images": root / "data.npz"}


def _strip_kind(folder: Path, manifest: str, **changes) -> None:
    """Make ``folder`` look written before kinds were recorded (no "kind"; ``changes`` applied)."""
    doc = json.loads((folder / manifest).read_text())
    del doc["kind"]
    doc.update(changes)
    (folder / manifest).write_text(json.dumps(doc))


def _victim(originals: dict[str, Path], name: str, where: Path) -> Path:
    """A fresh copy of the output ``name`` at ``where``: a kind, "legacy-KIND", "folder", "file" or "link-to-X"."""
    if name.startswith("link-to-"):
        real = _victim(originals, name[len("link-to-"):], where.parent / "real")
        where.symlink_to(real, target_is_directory=real.is_dir())
        return where
    source = originals[name.removeprefix("legacy-")]
    if source.is_dir():
        shutil.copytree(source, where, symlinks=True)
    else:
        shutil.copy(source, where)
    if name == "legacy-model":
        _strip_kind(where, "config.json")
    elif name == "legacy-database":
        _strip_kind(where, "manifest.json")
    elif name == "legacy-engine":
        _strip_kind(where, "manifest.json", format_version=5)
    return where


def snapshot(path: Path) -> dict:
    """Every entry at and under ``path`` (links not followed, but their targets' folder too) with its content."""
    found = {}
    for root in {path, path.resolve()}:
        entries = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
        for p in entries:
            if p.is_symlink():
                found[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                found[str(p)] = ("file", p.read_bytes())
            else:
                found[str(p)] = ("folder",)
    return found


#: Each writer with its replace flag set: write(output, model, originals).
WRITERS = {
    "model": lambda out, model, o: model.save(out, overwrite=True),
    "database": lambda out, model, o: build_database(model, smooth_images(12), out, overwrite=True, progress=False),
    "engine": lambda out, model, o: build_engine(model, out, rebuild=True, inputs=(o["model"],), **BUILD),
    "dataset-run": lambda out, model, o: generate_dataset(4, out, model=o["model"], database=o["database"],
                                                          shard_size=2, batch_size=2, progress=False),
    "generated-images": lambda out, model, o: _cli("generate", "-n", "1", "-o", str(out.parent / "grid.png"),
                                                   "--model", str(o["model"]), "--db", str(o["database"]),
                                                   "--save-dir", str(out), "--overwrite"),
    "feature-network": lambda out, model, o: save_feature_net(FeatureNet(width=8), out),
}
WRITER_KIND = {"model": MODEL, "database": DATABASE, "engine": ENGINE, "dataset-run": DATASET_RUN}
KIND_OF_VICTIM = {"model": MODEL, "database": DATABASE, "engine": ENGINE, "dataset-run": DATASET_RUN}
VICTIMS = [*KIND_OF_VICTIM, "legacy-model", "legacy-database", "legacy-engine", "folder", "file",
           *(f"link-to-{v}" for v in (*KIND_OF_VICTIM, "folder", "file"))]
REFUSED = [(w, v) for w in WRITERS for v in VICTIMS if KIND_OF_VICTIM.get(v.removeprefix("legacy-")) !=
           WRITER_KIND.get(w, w) or v.startswith("link-to-")]
REPLACED = [(w, v) for w in ("model", "database", "engine") for v in (w, f"legacy-{w}")]


def _cli(*argv: str) -> None:
    """Run the CLI in-process; a refusal is raised as the OutputExistsError the user would read."""
    try:
        code = cli.main(["--traceback", *argv])
    except SystemExit as exit:  # argparse
        raise AssertionError(f"bad arguments {argv}") from exit
    assert code == 0


def _expected_refusal(victim: str) -> str:
    if victim.startswith("link-to-"):
        return "is a symbolic link"
    if victim == "folder":
        return "is a folder of other files"
    if victim == "file":
        return "is a file"
    kind = KINDS[KIND_OF_VICTIM[victim.removeprefix("legacy-")]]
    return f"is an? {kind}, not an? "


@pytest.mark.parametrize("writer,victim", REFUSED)
def test_a_writer_replaces_no_other_kind_of_output(writer, victim, model, originals, tmp_path):
    out = _victim(originals, victim, tmp_path / "out")
    before = snapshot(out)
    with pytest.raises(OutputExistsError, match=_expected_refusal(victim)) as refusal:
        WRITERS[writer](out, model, originals)
    assert "\n" not in str(refusal.value)
    assert "--rebuild" not in str(refusal.value) and "--overwrite" not in str(refusal.value)
    assert snapshot(out) == before


@pytest.mark.parametrize("writer,victim", REPLACED)
def test_a_writer_replaces_its_own_kind_also_one_from_before_kinds(writer, victim, model, originals, tmp_path):
    out = _victim(originals, victim, tmp_path / "out")
    (out / "stale.txt").write_text("from the old output")
    WRITERS[writer](out, model, originals)
    assert kind_of(out) == WRITER_KIND[writer] and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left


# --------------------------------------------------------------------------- the bad-input table


def _run_cli(capsys, *argv: str) -> str:
    """The CLI's exit code must be 2 with one line on stderr; returns that line."""
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("rissole-trt: error: ")
    return err


def _edit_json(file: Path, edit) -> None:
    doc = json.loads(file.read_text())
    edit(doc)
    file.write_text(json.dumps(doc))


def _set(keys: tuple, value):
    def edit(doc):
        for key in keys[:-1]:
            doc = doc[key]
        doc[keys[-1]] = value
    return edit


def _flip_a_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


def _zero_codes(db: Path) -> None:
    """Every stored code set to 65535, past the codebook: same size, so only a use of the codes finds it."""
    codes = np.load(db / "codes.npy")
    codes[...] = 65535
    np.save(db / "codes.npy", codes)


def _codes_linked_outside(db: Path) -> None:
    outside = db.parent / "elsewhere.npy"
    shutil.move(db / "codes.npy", outside)
    (db / "codes.npy").symlink_to(outside)


#: (row id, how to spoil the copies, the command (after the copies are made), what the error says).
#: ``m``, ``d``, ``e``: copies of the model, database and engine under ``proj``.
OUTPUT_ROWS = [
    ("build-engine --rebuild onto a database", None,
     ["build-engine", "--model", "{m}", "-o", "{d}", "--rebuild"], "is a retrieval database, not an engine"),
    ("build-engine --rebuild onto a saved model", None,
     ["build-engine", "--model", "{m}", "-o", "{proj}/other-model", "--rebuild"], "is a saved model, not an engine"),
    ("build-engine --rebuild onto the folder holding its model", None,
     ["build-engine", "--model", "{m}", "-o", "{proj}", "--rebuild"], "an input of this command"),
    ("build-engine --rebuild onto its own model", None,
     ["build-engine", "--model", "{m}", "-o", "{m}", "--rebuild"], "an input of this command"),
    ("build-db --overwrite onto an engine", None,
     ["build-db", "--model", "{m}", "--images", "{images}", "-o", "{e}", "--overwrite"],
     "is an engine, not a retrieval database"),
    ("build-db --overwrite onto its model", None,
     ["build-db", "--model", "{m}", "--images", "{images}", "-o", "{m}", "--overwrite"], "an input of this command"),
    ("convert --overwrite onto a database", None,
     ["convert", *(f"--{k.replace('_', '-')}={v}" for k, v in paths("ref_addpos_").items()), "-o", "{d}",
      "--overwrite"], "is a retrieval database, not a saved model"),
    ("train-autoencoder into an engine", None,
     ["train-autoencoder", "--images", "{images}", "--steps", "1", "-o", "{e}"],
     "is an engine, not a training run folder"),
    ("train into a folder whose model is a database", lambda p: shutil.copytree(p["d"], p["proj"] / "run" / "model"),
     ["train", "--images", "{images}", "--steps", "1", "--autoencoder", "{m}", "-o", "{proj}/run"],
     "is a retrieval database, not a saved model"),
    ("train into its own autoencoder's folder", None,
     ["train", "--images", "{images}", "--steps", "1", "--autoencoder", "{proj}/ae", "-o", "{proj}/ae"],
     "an input of this command"),
    ("generate-dataset into a database", None, ["generate-dataset", "-n", "2", "--model", "{m}", "-o", "{d}"],
     "is a retrieval database, not a generate-dataset run"),
    ("generate-dataset into its own database", None,
     ["generate-dataset", "-n", "2", "--model", "{m}", "--db", "{d}", "-o", "{d}"], "an input of this command"),
]
GENERATE = ["generate", "-n", "1", "--sampler", "ddim", "--steps", "2", "--no-progress", "--model", "{m}",
            "--db", "{d}", "-o", "{proj}/grid.png"]
LOAD_ROWS = [
    ("engine tactics file outside the folder", lambda p: _edit_json(p["e"] / "manifest.json", _set(
        ("tactics", "file"), "../model/config.json")), [*GENERATE, "--engine", "{e}"], "outside the engine folder"),
    ("engine tactics file an absolute path", lambda p: _edit_json(p["e"] / "manifest.json", _set(
        ("tactics", "file"), str(p["m"] / "config.json"))), [*GENERATE, "--engine", "{e}"],
     "not a path inside the engine folder"),
    ("engine tactics file emptied", lambda p: (p["e"] / "tactics.json").write_text(""),
     [*GENERATE, "--engine", "{e}"], "tactics.json was changed since the build"),
    ("engine tactics file garbled", lambda p: (p["e"] / "tactics.json").write_text('{"layers": 1}'),
     [*GENERATE, "--engine", "{e}"], "tactics.json was changed since the build"),
    ("engine recorded file deleted", lambda p: (p["e"] / "onnx" / "denoiser.onnx").unlink(),
     [*GENERATE, "--engine", "{e}"], "lacks onnx/denoiser.onnx"),
    ("engine ONNX file with a byte flipped", lambda p: _flip_a_byte(p["e"] / "onnx" / "denoiser.onnx"),
     [*GENERATE, "--engine", "{e}"], "onnx/denoiser.onnx was changed since the build"),
    ("engine chooses a candidate whose file it does not record", lambda p: _edit_json(
        p["e"] / "manifest.json", lambda doc: (doc["buckets"][0].update(chosen="tensorrt"))),
     [*GENERATE, "--engine", "{e}"], "records no size and sha256 of tensorrt/denoiser.plan"),
    ("engine built before checksums (format 5)", lambda p: _strip_kind(p["e"], "manifest.json", format_version=5),
     [*GENERATE, "--engine", "{e}"], "format 5.*--rebuild"),
    ("database codes outside the codebook", lambda p: _zero_codes(p["d"]), GENERATE, "codes.npy is corrupt"),
    ("database file linked outside its folder", lambda p: _codes_linked_outside(p["d"]), GENERATE,
     "symbolic link to .*outside the database folder"),
]


@pytest.fixture()
def proj(originals, tmp_path) -> dict[str, Path]:
    """Copies of the model, database and engine in one project folder."""
    root = tmp_path / "proj"
    root.mkdir()
    copies = {"proj": root, "images": originals["images"]}
    for key, name in (("m", "model"), ("d", "database"), ("e", "engine")):
        copies[key] = _victim(originals, name, root / name)
    _victim(originals, "model", root / "other-model")
    return copies


@pytest.mark.parametrize("row,spoil,argv,message", OUTPUT_ROWS + LOAD_ROWS, ids=[r[0] for r in OUTPUT_ROWS + LOAD_ROWS])
def test_bad_input_is_one_line_exit_2_and_nothing_is_lost(row, spoil, argv, message, proj, capsys):
    if spoil is not None:
        spoil(proj)
    before = snapshot(proj["proj"])
    line = _run_cli(capsys, *(arg.format(**proj) for arg in argv))
    assert re.search(message, line), line
    if row.startswith(("build-engine", "build-db", "convert", "generate-dataset", "train")):
        assert "--rebuild" not in line and "--overwrite" not in line  # no flag that would destroy it
    after = snapshot(proj["proj"])
    assert {k: v for k, v in after.items() if not k.endswith("grid.png")} == before


def test_engine_of_a_non_path_is_one_line():
    with pytest.raises(InvalidTypeError, match="Engine model must be a path, a RissoleModel, or None, got int 3") as e:
        Engine(3)
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------- killed writers


def test_a_killed_build_engine_leaves_a_temporary_that_the_next_write_removes(originals, tmp_path):
    exe = Path(sys.executable).parent / "rissole-trt"
    build = subprocess.Popen([str(exe), "build-engine", "--model", str(originals["model"]), "-o",
                              str(tmp_path / "engine"), "--candidates", "eager", "--batch-sizes", "1",
                              "--budget", "60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".engine.") and p.is_dir() for p in tmp_path.iterdir()):
        assert build.poll() is None and time.monotonic() < deadline, "the build ended before it was killed"
        time.sleep(0.02)
    build.send_signal(signal.SIGKILL)
    build.wait()
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".engine.{build.pid}-") and left[0].endswith(".tmp")
    (tmp_path / "notes.txt").write_text("mine")
    RissoleModel.load(originals["model"]).save(tmp_path / "model")  # any write into the same folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "notes.txt"]


def test_temporaries_of_live_or_other_writers_are_kept(tmp_path):
    kept = [tmp_path / f".out.{os.getppid()}-{_HOST}.abcdefgh.tmp",  # a live writer of this machine
            tmp_path / ".out.1-00000000.abcdefgh.tmp",  # another machine's (a shared disk)
            tmp_path / ".out.abcdefgh.tmp",  # an older rissole_trt's, made after this process started
            tmp_path / ".notes.txt"]  # not a temporary
    for p in kept:
        p.write_text("x")
    assert reap_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)

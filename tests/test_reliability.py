"""Nothing lost, nothing silent: bad inputs and faults a careless user meets, each with the fix's test."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rissole_trt import cli
from rissole_trt.builder import build_database
from rissole_trt.models import RissoleModel

from reference_fixtures import paths
from synthetic import smooth_images

#: A location no process can create files in, even as root: sysfs refuses new files.
READ_ONLY = Path("/sys/kernel")


def _rissole(*args: str, **kwargs) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "rissole-trt"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def model() -> RissoleModel:
    return RissoleModel.from_reference(**paths("ref_addpos_"))


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(model dir, database dir, images .npz) of the fixture model."""
    root = tmp_path_factory.mktemp("saved")
    images = smooth_images(12)
    np.savez(root / "data.npz", images=images, train_idx=np.arange(10), labels=np.array(["a", "b"] * 6))
    model.save(root / "model")
    build_database(model, images, root / "db", progress=False)
    return root / "model", root / "db", root / "data.npz"


# --------------------------------------------------------------------------- 1. --overwrite


@pytest.mark.parametrize("victim", ["folder", "images", "model", "file"])
def test_build_db_overwrite_replaces_only_a_database(saved, tmp_path, victim):
    model_dir, _, npz = saved
    if victim == "folder":
        target = tmp_path / "mine"
        target.mkdir()
        (target / "thesis.txt").write_text("years of work")
    elif victim == "images":
        target = tmp_path / "pngs"
        target.mkdir()
        from PIL import Image

        Image.fromarray(smooth_images(1)[0]).save(target / "0.png")
    elif victim == "model":
        target = model_dir
    else:
        target = tmp_path / "notes.txt"
        target.write_text("keep me")
    before = sorted(p.name for p in tmp_path.iterdir())
    images = str(target) if victim == "images" else str(npz)
    code = cli.main(["build-db", "--model", str(model_dir), "--images", images, "-o", str(target), "--overwrite"])
    assert code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing deleted, nothing left behind
    if victim == "folder":
        assert (target / "thesis.txt").read_text() == "years of work"
    if victim == "file":
        assert target.read_text() == "keep me"
    if victim == "model":
        RissoleModel.load(model_dir)


def test_build_db_overwrite_replaces_a_database(saved, tmp_path):
    model_dir, db, npz = saved
    out = tmp_path / "db"
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "-o", str(out)]) == 0
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "-o", str(out)]) == 2
    assert cli.main(["build-db", "--model", str(model_dir), "--images", str(npz), "-o", str(out), "--overwrite",
                     "--split", "train_idx"]) == 0
    assert json.loads((out / "manifest.json").read_text())["count"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["db"]


def test_convert_refuses_to_write_over_an_input_or_a_foreign_folder(tmp_path):
    fixture = paths("ref_add_")
    foreign = tmp_path / "stuff"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    args = ["convert", "--checkpoint", str(fixture["checkpoint"]), "--unet-config", str(fixture["unet_config"]),
            "--vqgan-config", str(fixture["vqgan_config"]), "--ddpm-config", str(fixture["ddpm_config"])]
    assert cli.main([*args, "-o", str(foreign), "--overwrite"]) == 2
    assert (foreign / "keep.txt").exists()
    assert cli.main([*args, "-o", str(fixture["checkpoint"].parent), "--overwrite"]) == 2
    assert fixture["checkpoint"].is_file()


# --------------------------------------------------------------------------- 3. training


def _train_args(npz: Path, ae: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "--images", str(npz), "--split", "train_idx", "--image-size", "32", "--batch-size", "2",
            "--autoencoder", str(ae), "--channels", "16", "32", "--k", "3", "--steps", str(steps), "--threads", "1",
            "--precision", "fp32", "--no-progress", "-o", str(out), *extra]


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    npz = root / "data.npz"
    np.savez(npz, images=smooth_images(10, size=32), train_idx=np.arange(8))
    assert cli.main(["train-autoencoder", "--images", str(npz), "--split", "train_idx", "--image-size", "32",
                     "--batch-size", "2", "--steps", "2", "--channels", "8", "16", "--latent-dim", "4",
                     "--codebook-size", "32", "--threads", "1", "--no-progress", "-o", str(root / "ae")]) == 0
    return npz, root / "ae"


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_command_trains_the_same_weights(tiny_ae, tmp_path):
    npz, ae = tiny_ae
    for name in ("a", "b"):
        assert cli.main(_train_args(npz, ae, tmp_path / name, 2)) == 0
    assert _same(_weights(tmp_path / "a"), _weights(tmp_path / "b"))


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(tiny_ae, tmp_path):
    npz, ae = tiny_ae
    steps = 60
    assert cli.main(_train_args(npz, ae, tmp_path / "whole", steps, "--checkpoint-every", "10")) == 0
    run = tmp_path / "killed"
    args = _train_args(npz, ae, run, steps, "--checkpoint-every", "10")
    process = subprocess.Popen([str(Path(sys.executable).parent / "rissole-trt"), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = run / "checkpoints" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # a real kill -9, just after the first mid-run checkpoint
    process.wait()
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < steps, "the run was not interrupted mid-way"
    result = _rissole(*args)
    assert result.returncode == 0, result.stderr
    assert f"resuming from step {step}" in result.stdout
    assert _same(_weights(run), _weights(tmp_path / "whole"))


@pytest.mark.parametrize("change,named", [(("--lr", "0.01"), "train.lr: 0.0002 -> 0.01"),
                                          (("--channels", "16", "16"), "unet.channels: [16, 32] -> [16, 16]"),
                                          (("--split", "all"), "data: ")])
def test_resuming_with_a_changed_setting_is_refused_naming_it(tiny_ae, tmp_path, change, named):
    npz, ae = tiny_ae
    with np.load(npz) as data:
        np.savez(tmp_path / "data.npz", **data, all=np.arange(10))
    npz = tmp_path / "data.npz"
    assert cli.main(_train_args(npz, ae, tmp_path / "run", 1)) == 0
    args = _train_args(npz, ae, tmp_path / "run", 2)
    if change[0] in args:  # replace the option's values
        flag = args.index(change[0])
        args[flag + 1:flag + len(change)] = change[1:]
    else:
        args += change
    result = _rissole(*args)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_autoencoder_resume_refuses_a_changed_learning_rate(tmp_path):
    npz = tmp_path / "data.npz"
    np.savez(npz, images=smooth_images(6, size=32))
    args = ["train-autoencoder", "--images", str(npz), "--image-size", "32", "--batch-size", "2", "--channels", "8",
            "16", "--latent-dim", "4", "--codebook-size", "32", "--no-progress", "-o", str(tmp_path / "ae")]
    assert cli.main([*args, "--steps", "1"]) == 0
    result = _rissole(*args, "--steps", "2", "--lr", "0.01")
    assert result.returncode == 2 and "train.lr: 0.0002 -> 0.01" in result.stderr


def test_divergence_at_the_first_step_says_no_checkpoint_exists(tiny_ae, tmp_path):
    npz, ae = tiny_ae
    result = _rissole(*_train_args(npz, ae, tmp_path / "run", 5, "--lr", "1e30"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "no checkpoint was written yet" in result.stderr
    result = _rissole(*_train_args(npz, ae, tmp_path / "run", 5, "--lr", "nan"))
    assert result.returncode == 2 and "lr must be a positive number" in result.stderr


def test_latent_scale_is_trained_saved_and_undone_before_decoding(tiny_ae, tmp_path):
    npz, ae = tiny_ae
    assert cli.main(_train_args(npz, ae, tmp_path / "run", 1, "--latent-scale", "0.5")) == 0
    model = RissoleModel.load(tmp_path / "run" / "model")
    assert model.config.diffusion.latent_scale == 0.5
    from rissole_trt.engine import Engine

    engine = Engine(model, build_database(model, smooth_images(4, size=32), tmp_path / "db", progress=False),
                    device="cpu")
    blocks = torch.randn(1, model.config.n_blocks, 4, model.config.block_size, model.config.block_size)
    from rissole_trt import ops

    expected = model.decode(ops.merge_blocks(blocks, model.config.unet.block_factor) / 0.5)
    assert torch.equal(engine.decode(blocks), expected)


# --------------------------------------------------------------------------- 4. outputs before work, 5. modes


@pytest.mark.parametrize("where", ["read-only", "file-as-folder"])
def test_generate_checks_its_outputs_before_any_work(saved, tmp_path, where, monkeypatch):
    model_dir, db, _ = saved
    if where == "read-only":
        out, extra = READ_ONLY / "grid.png", []
    else:
        (tmp_path / "taken").write_text("x")
        out, extra = tmp_path / "grid.png", ["--save-dir", str(tmp_path / "taken")]
    from rissole_trt import engine as engine_module

    monkeypatch.setattr(engine_module.Engine, "__init__", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["generate", "-n", "2", "-o", str(out), "--model", str(model_dir), "--db", str(db),
                     "--no-progress", *extra]) == 2
    assert not out.exists()


def test_eval_and_bench_check_their_outputs_before_any_work(saved, monkeypatch):
    model_dir, db, npz = saved
    from rissole_trt import engine as engine_module

    monkeypatch.setattr(engine_module.Engine, "__init__", lambda *a, **k: pytest.fail("work started"))
    assert cli.main(["eval", "--model", str(model_dir), "--db", str(db), "--real", str(npz), "--n", "2",
                     "-o", str(READ_ONLY / "r.json")]) == 2
    assert cli.main(["eval", "--model", str(model_dir), "--db", str(db), "--real", str(npz), "-o", "r.txt"]) == 2
    from rissole_trt import bench

    monkeypatch.setattr(bench, "run_bench", lambda *a: pytest.fail("work started"))
    assert cli.main(["bench", "--preset", "tiny", "-o", str(READ_ONLY / "b.json")]) == 2


def test_save_dir_is_one_folder_refused_when_it_holds_another_run(saved, tmp_path):
    model_dir, db, _ = saved
    out = tmp_path / "imgs"
    args = ["generate", "-n", "2", "--model", str(model_dir), "--db", str(db), "--sampler", "ddim", "--steps", "2",
            "--no-progress", "--save-dir", str(out), "-o", str(tmp_path / "grid.jpg")]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png"]
    from PIL import Image

    assert Image.open(tmp_path / "grid.jpg").format == "JPEG"
    args[2] = "3"
    assert cli.main(args) == 2  # would mix two runs
    assert cli.main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png"]
    (out / "notes.txt").write_text("mine")
    assert cli.main(args + ["--overwrite"]) == 2  # not a folder of generated images any more
    assert cli.main(args[:-1] + [str(tmp_path / "grid.gif")]) == 2


def test_outputs_get_the_umask_mode(saved, tmp_path):
    model_dir, _, npz = saved
    old = os.umask(0o022)
    try:
        model = RissoleModel.load(model_dir)
        model.save(tmp_path / "m")
        build_database(model, smooth_images(5), tmp_path / "db", progress=False)
        assert cli.main(["generate", "-n", "1", "--model", str(model_dir), "--db", str(tmp_path / "db"),
                         "--sampler", "ddim", "--steps", "2", "--no-progress", "-o", str(tmp_path / "g.png"),
                         "--save-dir", str(tmp_path / "one")]) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "m", tmp_path / "db", tmp_path / "one"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o755, path
    for path in [tmp_path / "m" / "model.safetensors", tmp_path / "m" / "config.json", tmp_path / "g.png",
                 tmp_path / "one" / "0000.png", tmp_path / "db" / "codes.npy", tmp_path / "db" / "manifest.json"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


# --------------------------------------------------------------------------- 6. one-line errors


@pytest.mark.parametrize("args,message", [
    (["-n", "1000000000"], "GiB"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--backend", "tensorrt", "--device", "cpu"], "backend 'tensorrt' cannot run fp32 on cpu"),
    (["--threads", "0"], "--threads must be a positive integer"),
])
def test_generate_errors_are_one_line(saved, tmp_path, args, message):
    model_dir, db, _ = saved
    result = _rissole("generate", "--model", str(model_dir), "--db", str(db), "--no-progress",
                      "-o", str(tmp_path / "g.png"), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "g.png").exists()


# --------------------------------------------------------------------------- 7. build-db, 8. convert, 9. eval


def _npz(tmp_path: Path, **arrays) -> Path:
    path = tmp_path / "in.npz"
    np.savez(path, images=smooth_images(6), **arrays)
    return path


@pytest.mark.parametrize("arrays,extra,message", [
    ({"train_idx": np.array([0, -1])}, ["--split", "train_idx"], "holds index -1, outside [0, 6)"),
    ({"train_idx": np.array([0, 6])}, ["--split", "train_idx"], "holds index 6"),
    ({"cats": np.array(["a"] * 5)}, ["--labels", "cats"], "'cats' has 5 entries for 6 images"),
])
def test_build_db_refuses_bad_splits_and_labels_before_encoding(saved, tmp_path, arrays, extra, message, monkeypatch):
    model_dir, _, _ = saved
    from rissole_trt import builder

    monkeypatch.setattr(builder, "build_database", lambda *a, **k: pytest.fail("encoding started"))
    result = _rissole("build-db", "--model", str(model_dir), "--images", str(_npz(tmp_path, **arrays)), *extra,
                      "-o", str(tmp_path / "db"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "db").exists()


def test_build_db_reports_resized_images_and_refuses_a_split_of_a_folder(saved, tmp_path):
    from PIL import Image

    model_dir, _, _ = saved
    (tmp_path / "pngs").mkdir()
    for i, size in enumerate((64, 80, 48)):
        Image.fromarray(smooth_images(1, size=size)[0]).save(tmp_path / "pngs" / f"{i}.png")
    result = _rissole("build-db", "--model", str(model_dir), "--images", str(tmp_path / "pngs"), "-o", str(tmp_path / "db"))
    assert result.returncode == 0 and "resized and centre-cropped 2 of 3 images" in result.stderr, result.stderr
    result = _rissole("build-db", "--model", str(model_dir), "--images", str(tmp_path / "pngs"), "--split", "train_idx",
                      "-o", str(tmp_path / "db2"))
    assert result.returncode == 2 and "is not one" in result.stderr


def _convert(tmp_path: Path, checkpoint: Path, unet_yaml: Path) -> subprocess.CompletedProcess:
    fixture = paths("ref_add_")
    return _rissole("convert", "--checkpoint", str(checkpoint), "--unet-config", str(unet_yaml), "--vqgan-config",
                    str(fixture["vqgan_config"]), "--ddpm-config", str(fixture["ddpm_config"]), "-o", str(tmp_path / "m"))


def test_convert_names_what_is_wrong_with_its_inputs(tmp_path):
    import yaml

    fixture = paths("ref_add_")
    unet = yaml.safe_load(fixture["unet_config"].read_text())
    for name, change, message in (("cond", {"cond_emb_dim": 20}, "cond_emb_dim=20 disagrees with the checkpoint's k x C"),
                                  ("channels", {"channels": [32, 64]}, "the weights do not fit the configs given")):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**unet, **change}))
        result = _convert(tmp_path, fixture["checkpoint"], path)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    garbage = tmp_path / "random.pt"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    result = _convert(tmp_path, garbage, fixture["unet_config"])
    assert result.returncode == 2 and "not a readable PyTorch checkpoint" in result.stderr
    assert "weights_only" not in result.stderr
    assert not (tmp_path / "m").exists()


def test_eval_warns_about_few_images_and_whole_npz_inputs(saved, tmp_path):
    model_dir, db, npz = saved
    result = _rissole("eval", "--model", str(model_dir), "--db", str(db), "--real", str(npz), "--n", "2",
                      "--steps", "2", "--no-progress", "-o", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr
    assert "over 2 images are noisy" in result.stderr and "is used whole" in result.stderr

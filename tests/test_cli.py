"""The rissole-trt command line and rissole_trt.info()."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rissole_trt
from rissole_trt import cli

BACKENDS = {"cuda_ops", "torch_cuda", "triton", "tensorrt", "cuvs", "faiss", "onnxruntime"}


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"rissole-trt {rissole_trt.__version__}"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name.replace("_", "-") in out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "usage: rissole-trt" in capsys.readouterr().err


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["no-such-command"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_info_dict_covers_every_backend():
    report = rissole_trt.info()
    assert report["version"] == rissole_trt.__version__
    assert report["build"]["cxx_standard"] == "17"
    assert set(report["backends"]) == BACKENDS
    for name, backend in report["backends"].items():
        assert isinstance(backend["available"], bool), name
        assert backend["detail"], f"{name} gives no version or reason"
    assert report["backends"]["faiss"]["available"]  # a core dependency


def test_info_reports_why_a_backend_is_missing():
    import torch

    report = rissole_trt.info()["backends"]
    if not torch.cuda.is_available():
        assert not report["torch_cuda"]["available"]
        assert not report["cuda_ops"]["available"]
        assert not report["tensorrt"]["available"]
        assert "not installed" in report["tensorrt"]["detail"] or "no CUDA device" in report["tensorrt"]["detail"]


def test_info_command_text_and_json(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"rissole-trt {rissole_trt.__version__}")
    for name in BACKENDS:
        assert name in text
    assert cli.main(["info", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)["backends"]) == BACKENDS


def test_user_error_is_one_line_exit_2(monkeypatch, capsys):
    from rissole_trt.commands import info as info_command

    def fail(args):
        raise FileNotFoundError("no such checkpoint: model.safetensors")

    monkeypatch.setattr(info_command, "run", fail)
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err == "rissole-trt: error: no such checkpoint: model.safetensors\n"
    with pytest.raises(FileNotFoundError):
        cli.main(["--traceback", "info"])


def test_console_entry_point_runs_in_a_fresh_process():
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from rissole_trt.cli import main; sys.exit(main(['info']))"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "Traceback" not in result.stderr


THREADED_COMMANDS = [  # every command with --threads, with the arguments it needs to get that far
    ["generate", "-n", "1", "-o", "grid.png"],
    ["build-engine", "-o", "engine_dir"],
    ["eval", "--real", "real.npz", "-o", "report.json"],
    ["train-autoencoder", "--images", "data.npz", "--steps", "1", "-o", "run"],
    ["train", "--images", "data.npz", "--steps", "1", "--autoencoder", "ae", "-o", "run"],
    ["bench", "--preset", "tiny"],
]


@pytest.mark.parametrize("threads", ["0", "-1"])
@pytest.mark.parametrize("argv", THREADED_COMMANDS, ids=[a[0] for a in THREADED_COMMANDS])
def test_every_command_refuses_a_bad_thread_count_before_work(argv, threads, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*argv, "--threads", threads]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # eval warns about the inputs first
    assert last.startswith("rissole-trt: error: ") and f"threads must be a positive integer, got {threads}" in last
    assert list(tmp_path.iterdir()) == []  # refused before writing anything

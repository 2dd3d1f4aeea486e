"""The rissole-trt command line and rissole_trt.info()."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import rissole_trt
from rissole_trt import cli

COMPONENTS = {"cuda_ops", "torch_cuda", "cuvs", "faiss"}
#: Every registered denoiser backend: info lists them from the registry.
BACKENDS = {"tuned", "torch", "eager", "torch_compile", "onnxruntime", "openvino", "tensorrt", "cuda_graph", "triton"}
CAPABILITIES = {"devices", "precisions", "conditioning", "purposes", "captures_loop", "reads_codes", "fused_step",
                "needs_artifacts"}


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


def test_info_dict_covers_every_component_and_every_registered_backend():
    from rissole_trt.runtime import registry

    report = rissole_trt.info()
    assert report["version"] == rissole_trt.__version__
    assert report["build"]["cxx_standard"] == "17"
    assert set(report["components"]) == COMPONENTS
    assert set(report["backends"]) == BACKENDS == set(registry.backends())
    for name, entry in {**report["components"], **report["backends"]}.items():
        assert isinstance(entry["available"], bool), name
        assert entry["detail"], f"{name} gives no version or reason"
    assert report["components"]["faiss"]["available"]  # a core dependency
    for name, backend in report["backends"].items():
        assert set(backend) >= CAPABILITIES | {"description"}, name
        assert backend["devices"] == list(registry.get(name).capabilities.devices)
    assert report["backends"]["cuda_graph"]["captures_loop"] and report["backends"]["triton"]["fused_step"]
    assert "build" in report["backends"]["triton"]["purposes"]  # a build-engine candidate on CUDA
    assert report["backends"]["tuned"]["purposes"] == ["build"]


def test_info_reports_why_a_backend_is_missing():
    import torch

    report = rissole_trt.info()
    if not torch.cuda.is_available():
        assert not report["components"]["torch_cuda"]["available"]
        assert not report["components"]["cuda_ops"]["available"]
        for name in ("tensorrt", "cuda_graph", "triton"):
            detail = report["backends"][name]["detail"]
            assert not report["backends"][name]["available"]
            assert "not installed" in detail or "no CUDA device" in detail, name


def test_info_command_text_and_json(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"rissole-trt {rissole_trt.__version__}")
    for name in BACKENDS | COMPONENTS:
        assert name in text
    assert "cuda, fp32/bf16, none/add/xattn models, run/build, captures the loop" in text  # cuda_graph's capabilities
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

"""scripts/gpu_check.sh and its stage runner scripts/gpu_stages.py, on the CPU: the stage budgets fit
one device command, a stage past its limit is stopped and the next still runs, every result is saved
as it ends, and the summary (printed last) and the exit status name the failed stages (issue #27)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location("gpu_stages", REPO_ROOT / "scripts" / "gpu_stages.py")
gpu_stages = sys.modules["gpu_stages"] = importlib.util.module_from_spec(_spec)  # dataclasses look it up
_spec.loader.exec_module(gpu_stages)
Stage = gpu_stages.Stage

DEVICE_COMMAND_LIMIT_S = 600  # what the lent GPU runs one command for


def test_the_stage_budgets_fit_one_device_command():
    assert gpu_stages.total_limit_s() == sum(s.limit_s + gpu_stages.KILL_GRACE_S for s in gpu_stages.STAGES)
    assert gpu_stages.total_limit_s() <= gpu_stages.TOTAL_LIMIT_S < DEVICE_COMMAND_LIMIT_S
    names = [stage.name for stage in gpu_stages.STAGES]
    assert len(set(names)) == len(names) and names[0] == "build"
    assert "torch.compile engine candidate" in names  # inductor's compile has a limit of its own
    build = gpu_stages.STAGES[0]
    assert 0 < int(build.env["RISSOLE_BUILD_LIMIT_S"]) < build.limit_s  # time left for the fallback wheel


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_stages_run_in_turn_and_the_summary_names_what_failed(tmp_path, capsys):
    stages = [Stage("passes", 20, _python("print('3 passed, 1 skipped in 0.2s')"), gpu_stages.pytest_counts),
              Stage("fails", 20, _python("import sys; print('1 failed, 2 passed in 0.1s'); sys.exit(2)"),
                    gpu_stages.pytest_counts),
              Stage("hangs", 1, _python("import time; print('started', flush=True); time.sleep(60)"),
                    gpu_stages.last_line("started")),
              Stage("reads its report", 20, _python("open('{out}/r.json', 'w').write('{\"rows\": [1]')"),
                    gpu_stages.bench_gpu_goal)]
    assert gpu_stages.run_stages(stages, tmp_path) == 1
    results = json.loads((tmp_path / "stages.json").read_text())
    assert [r["status"] for r in results] == ["passed", "failed (exit 2)", "stopped at its 1 s limit", "passed"]
    assert [r["headline"] for r in results[:3]] == ["3 passed, 1 skipped", "1 failed, 2 passed", "started"]
    assert results[3]["headline"].startswith("no headline (FileNotFoundError")  # a missing report is said, not raised
    assert results[2]["seconds"] < 1 + 2 * gpu_stages.KILL_GRACE_S  # stopped at its limit, not after the sleep
    printed = capsys.readouterr().out.rstrip().splitlines()
    assert printed[-1] == "!! failed stages: fails, hangs"  # last, after the table
    assert printed[-7:] == (tmp_path / "summary.md").read_text().splitlines()  # the table, then the verdict
    assert printed[-3].startswith("| hangs | stopped at its 1 s limit | ")


def test_all_stages_passing_exits_zero(tmp_path, capsys):
    assert gpu_stages.run_stages([Stage("ok", 20, _python("print('ok')"), gpu_stages.last_line("ok"))], tmp_path) == 0
    assert capsys.readouterr().out.rstrip().splitlines()[-1] == "== all stages passed"


def test_an_unknown_stage_name_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        gpu_stages.main(["--out", str(tmp_path), "--only", "no such stage", "--dry-run"])


def test_the_script_dry_run_tees_its_log_under_out(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), "--dry-run", str(out)],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    log = (out / "gpu_check.log").read_text()
    assert log == done.stdout  # the whole output, teed
    assert "== preflight" in log and "scikit-build-core" in log and "nvcc" in log
    assert f"at most {gpu_stages.total_limit_s()} s (of {gpu_stages.TOTAL_LIMIT_S} s)" in log
    assert not (out / "stages.json").exists()  # nothing ran

"""Shared pytest configuration: the opt-in `slow` marker, the `gpu` and `trt` markers and the shared-data fixture."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Triton reads TRITON_INTERPRET when its own modules are first imported (torch.compile imports them too),
# so the kernels' CPU tests need it set before any test runs, not in their own module.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"  # read-only project data beside the checkout; absent in some CI runs


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def _cuda_usable() -> bool:
    import torch

    return torch.cuda.is_available()


def _tensorrt_reason() -> str | None:
    """Why the `trt` tests cannot run here (None: they can)."""
    from rissole_trt.runtime.tensorrt_backend import TensorRTBackend

    ok, reason = TensorRTBackend.probe()
    return None if ok else f"{reason}; TensorRT cannot be installed in this project's workplace (PyPI's libs " \
                           "package downloads from a host it cannot reach), so this backend is untested"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run_slow = config.getoption("--runslow") or os.environ.get("RISSOLE_RUN_SLOW") == "1"
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow or RISSOLE_RUN_SLOW=1")
    skip_gpu = None
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords:
            if skip_gpu is None:
                skip_gpu = False if _cuda_usable() else pytest.mark.skip(reason="no CUDA device")
            if skip_gpu:
                item.add_marker(skip_gpu)
        if "trt" in item.keywords:
            reason = _tensorrt_reason()
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _exact_fp32_on_gpus(request: pytest.FixtureRequest):
    """GPU tests compare with fp32 tolerances: no TF32 in torch's cuDNN convolutions (its default)."""
    if "gpu" not in request.keywords and "trt" not in request.keywords:
        yield
        return
    from rissole_trt.runtime.base import exact_fp32

    with exact_fp32():
        yield


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared data folder (../shared); tests that need it skip where it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared data folder {SHARED_DIR} is absent")
    return SHARED_DIR

"""The installed package: compiled core build info, lazy package import, shipped subpackages."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import rissole_trt
from rissole_trt import _C


def test_build_info_fields():
    info = _C.build_info()
    assert info["version"] == rissole_trt.__version__
    assert info["cxx_standard"] == "17"
    assert isinstance(info["compiler"], str) and info["compiler"]
    assert isinstance(info["openmp"], bool)
    assert info["openmp_max_threads"] >= 1
    assert isinstance(info["cuda_compiled"], bool)
    if info["cuda_compiled"]:
        assert info["cuda_version"].count(".") == 1
        assert {"80", "90"} <= set(info["cuda_architectures"])
        assert hasattr(_C, "cuda_split_blocks")
    else:
        assert info["cuda_version"] is None and info["cuda_architectures"] == []
        assert not hasattr(_C, "cuda_split_blocks")


@pytest.mark.skipif(os.environ.get("RISSOLE_EXPECT_CUDA") != "1", reason="set RISSOLE_EXPECT_CUDA=1 for a RISSOLE_CUDA=ON build")
def test_cuda_objects_were_built():
    info = _C.build_info()
    assert info["cuda_compiled"], "RISSOLE_EXPECT_CUDA=1 but the extension was built without its CUDA kernels"
    # Querying devices must not fail the import or crash, with or without a driver.
    count, error = _C.cuda_device_count()
    assert (count >= 0 and error is None) or (count == -1 and error)


def test_package_import_is_lazy():
    code = "import sys, rissole_trt; print('torch' in sys.modules, 'rissole_trt._C' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_kernels_subpackage_is_shipped():
    import rissole_trt.kernels

    assert rissole_trt.kernels.__doc__ and "Triton" in rissole_trt.kernels.__doc__


def test_stub_is_shipped():
    from pathlib import Path

    stub = Path(rissole_trt.__file__).with_name("_C.pyi")
    assert stub.is_file() and "def build_info" in stub.read_text()

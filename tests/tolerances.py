"""The tests' view of the one tolerance table, :mod:`rissole_trt.tolerances` (each entry with its
reason; ``build-engine`` accepts candidates within the same table)."""
from __future__ import annotations

import numpy as np
import torch

from rissole_trt.tolerances import TOLERANCES, Tolerance  # noqa: F401  (re-exported for the tests)


def tol(kind: str) -> dict[str, float]:
    """``atol``/``rtol`` keyword arguments of one table entry."""
    t = TOLERANCES[kind]
    return {"atol": t.atol, "rtol": t.rtol}


def assert_close(actual, expected, kind: str, msg: str | None = None) -> None:
    """torch or numpy arrays equal within the table's ``kind`` entry (exact for ``bitwise``)."""
    t = TOLERANCES[kind]
    if isinstance(actual, torch.Tensor) or isinstance(expected, torch.Tensor):
        torch.testing.assert_close(torch.as_tensor(actual), torch.as_tensor(expected), atol=t.atol, rtol=t.rtol,
                                   msg=msg)
    elif kind == "bitwise":
        np.testing.assert_array_equal(actual, expected, err_msg=msg or "")
    else:
        np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64),
                                   atol=t.atol, rtol=t.rtol, err_msg=msg or "")

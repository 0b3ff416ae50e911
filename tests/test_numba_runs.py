"""The Numba backend's short-run copies, zero fills and additions (runs.py) against NumPy slices:
every length from 0 to past two vectors of either dtype, neighbours left untouched."""

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastbp._kernels.numba.runs import add_run, copy_run, zero_run  # noqa: E402


@numba.njit
def _apply(op, dst, d, src, s, n):
    if op == "copy":
        copy_run(dst, d, src, s, n)
    elif op == "add":
        add_run(dst, d, src, s, n)
    else:
        zero_run(dst, d, n)


@pytest.mark.parametrize("op", ["copy", "add", "zero"])
def test_runs_match_slices(op, dtype, rng):
    for n in list(range(-1, 36)) + [48, 63, 64, 65]:
        src = rng.standard_normal(120).astype(dtype)
        dst = rng.standard_normal(120).astype(dtype)
        want = dst.copy()
        if n > 0:
            want[7:7 + n] = {"copy": src[3:3 + n], "add": want[7:7 + n] + src[3:3 + n], "zero": 0}[op]
        _apply(op, dst, 7, src, 3, n)
        np.testing.assert_array_equal(dst, want, err_msg=f"{op} of {n} values")

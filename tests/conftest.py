"""Fixtures shared by the kernel tests: every test runs on both backends and both dtypes."""

import numpy as np
import pytest

import fastbp
from fastbp._backend import BACKENDS

DTYPES = (np.float32, np.float64)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test on one backend; a backend that fails to load fails the test (never skipped)."""
    with fastbp.backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def threads():
    """Set the thread count inside a test; the previous count is restored afterwards."""
    previous = fastbp.get_num_threads()
    yield fastbp.set_num_threads
    fastbp.set_num_threads(previous)


def eps(dtype):
    return float(np.finfo(dtype).eps)

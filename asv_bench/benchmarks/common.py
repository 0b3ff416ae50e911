"""Shared parameters and set-up of fastbp's asv benchmarks.

Every benchmark is parametrised by backend, dtype and thread count (1 and all
usable cores). Data is made with fixed seeds and filled (never ``np.empty``),
and ``setup`` runs the kernel once so JIT compilation is not timed.
"""

import os

import numpy as np

import fastbp

BACKENDS = ["cython", "numba"]
DTYPES = ["float32", "float64"]
try:
    ALL_THREADS = len(os.sched_getaffinity(0))
except AttributeError:
    ALL_THREADS = os.cpu_count() or 1
THREADS = sorted({1, ALL_THREADS})


def random(shape, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


class KernelBenchmark:
    """Base class: ``params`` starts with backend, dtype, threads; ``configure`` applies them."""

    params = [BACKENDS, DTYPES, THREADS]
    param_names = ["backend", "dtype", "threads"]
    timeout = 120

    def configure(self, backend, dtype, threads):
        fastbp.set_backend(backend)
        fastbp.set_num_threads(threads)
        self.dtype = np.dtype(dtype)

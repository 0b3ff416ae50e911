"""Shared parameters and set-up of fastbp's asv benchmarks.

Every benchmark is parametrised by backend, dtype and thread count (1 and all
usable cores). Data is made with fixed seeds and filled (never ``np.empty``),
and ``setup`` runs the kernel once so JIT compilation is not timed.

Sampling is sized for a shared 2-core machine, where one sample is noise: each
benchmark runs ``rounds`` times, each round in a fresh process, taking 5-10
samples after a warm-up, so asv compares ~20-40 samples per commit with its
statistical test rather than two numbers. Compare commits with
``asv continuous --interleave-rounds`` so that the rounds of the two commits
alternate and a slow spell of the machine hits both (README: Benchmarks).
``--quick`` (CI's smoke run) still takes one sample of each.
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
    rounds = 4
    repeat = (5, 10, 5.0)  # (min, max samples per round, stop adding samples after this many seconds)
    warmup_time = 0.2  # seconds run before sampling: caches, OpenMP pool, CPU clock

    def configure(self, backend, dtype, threads):
        fastbp.set_backend(backend)
        fastbp.set_num_threads(threads)
        self.dtype = np.dtype(dtype)

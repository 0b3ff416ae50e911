"""fastbp's GEMM alone and right after a NumPy matmul, beside OpenBLAS, in GFLOP/s.

Usage: ``python -m fastbp.bench gemm [--threads N] [--repeats R]``.

The shapes are the products a training step of the peer networks runs (forward
x·W at batches 32-256, the weight gradient Xᵀ·δ), then 1024³ and 2048³, the
machine's GEMM peak (issue 14: training throughput is judged against the larger
of fastbp's and OpenBLAS's rate at 2048³). "after NumPy" times each call right
after a 256 x 256 ``numpy.matmul`` (``situations.BetweenSteps``), as in a NumPy
pipeline: OpenBLAS's workers are still spinning then. Each figure is the median
of ``--repeats`` calls; the ratio is after / alone (the target is >= 0.8).
"""

import argparse
import statistics
import time

import numpy as np

from . import machine, situations
from ._common import usable_cores

# (m, k, n, A transposed): what the product is in training
SHAPES = [
    (32, 784, 256, False),     # 784-256-128-10:32, first layer forward
    (128, 784, 256, False),    # 784-256-128-10:128, first layer forward
    (128, 256, 128, False),    # its second layer
    (784, 128, 256, True),     # its first layer's weight gradient, Xᵀ·δ
    (256, 784, 1024, False),   # 784-1024-1024-10:256, first layer forward
    (256, 1024, 1024, False),  # its second layer
    (1024, 1024, 1024, False),
    (2048, 2048, 2048, False),
]


def _median_seconds(call, repeats, before=None):
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure_in_child(system, shape, threads, repeats, after_numpy):
    """GFLOP/s of ``system`` on ``shape``, median of ``repeats`` calls; runs in a fresh interpreter."""
    import fastbp as fb
    from fastbp import kernels

    from .peers import blas_threads

    blas_threads(threads)
    fb.set_num_threads(threads)
    m, k, n, trans_a = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    if system == "openblas":
        def call():
            np.matmul(a.T if trans_a else a, b, out=out)
    else:
        fb.set_backend(system)

        def call():
            kernels.gemm(a, b, out=out, trans_a=trans_a)
    flops = 2.0 * m * n * k
    for _ in range(3):
        call()  # warm-up: compilation, workspaces
    before = situations.BetweenSteps() if after_numpy else None
    return flops / _median_seconds(call, repeats if flops < 1e10 else max(3, repeats // 10), before) / 1e9


def measure(threads, repeats, systems=("cython", "numba", "openblas"), shapes=None):
    """{(system, shape): (GFLOP/s alone, GFLOP/s after NumPy)}, each figure from a process of its own
    (no thread pool, back-off or cache state of one measurement reaches the next)."""
    import multiprocessing

    results = {}
    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        for shape in shapes or SHAPES:
            for system in systems:
                alone, after = (pool.apply(_measure_in_child, (system, shape, threads, repeats, after_numpy))
                                for after_numpy in (False, True))
                results[(system, shape)] = (alone, after)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastbp.bench gemm", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=usable_cores())
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    results = measure(args.threads, args.repeats)
    systems = sorted({system for system, _ in results}, key=["cython", "numba", "openblas"].index)
    print(f"machine: {machine.cpu_model()}, {usable_cores()} cores; ISA: "
          + ", ".join(f"{name} {isa}" for name, isa in machine.backend_isas().items()))
    print(f"float32 GEMM, {args.threads} threads, GFLOP/s: alone / right after a NumPy matmul (ratio)")
    print(f"{'m x k x n':>22}" + "".join(f"{system:>26}" for system in systems))
    for m, k, n, trans_a in SHAPES:
        label = f"{m}x{k}x{n}" + (" (Aᵀ)" if trans_a else "")
        cells = []
        for system in systems:
            alone, after = results[(system, (m, k, n, trans_a))]
            cells.append(f"{alone:7.1f} / {after:7.1f} ({after / alone:4.2f}x)")
        print(f"{label:>22}" + "".join(f"{cell:>26}" for cell in cells), flush=True)
    peak = max(results[(system, (2048, 2048, 2048, False))][0] for system in systems)
    print(f"best GEMM rate at 2048^3 (the peak training is judged against): {peak:.1f} GFLOP/s")
    return results


if __name__ == "__main__":
    main()

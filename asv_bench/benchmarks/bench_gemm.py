"""fastbp's own GEMM at square and MLP shapes, as forward (NN) and backward (NT, TN) use them."""

import timeit

import numpy as np

from fastbp import kernels

from .common import BACKENDS, DTYPES, THREADS, KernelBenchmark, random

# (m, k, n, trans_a, trans_b): square, then a 784-256-10 MLP at batch 128.
SHAPES = {
    "gemm_m0256_n0256_k0256": (256, 256, 256, False, False),
    "gemm_m0512_n0512_k0512": (512, 512, 512, False, False),
    "gemm_m1024_n1024_k1024": (1024, 1024, 1024, False, False),
    "mlp_forward_NN_m0128_n0256_k0784": (128, 784, 256, False, False),    # x·W
    "mlp_backward_NT_m0128_n0784_k0256": (128, 256, 784, False, True),    # δ·Wᵀ
    "mlp_backward_TN_m0784_n0256_k0128": (784, 128, 256, True, False),    # xᵀ·δ
}


class Gemm(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(SHAPES)]
    param_names = ["backend", "dtype", "threads", "shape"]

    def setup(self, backend, dtype, threads, shape):
        self.configure(backend, dtype, threads)
        m, k, n, self.trans_a, self.trans_b = SHAPES[shape]
        self.a = random((k, m) if self.trans_a else (m, k), dtype, 1)
        self.b = random((n, k) if self.trans_b else (k, n), dtype, 2)
        self.out = np.zeros((m, n), dtype)
        self.flops = 2.0 * m * n * k
        self.time_gemm(backend, dtype, threads, shape)  # compile / warm up

    def time_gemm(self, backend, dtype, threads, shape):
        kernels.gemm(self.a, self.b, out=self.out, trans_a=self.trans_a, trans_b=self.trans_b)

    def track_seconds_per_gflop(self, backend, dtype, threads, shape):
        """The inverse of GFLOP/s (2mnk / t), so that lower is better as asv assumes for every track_."""
        runs = timeit.repeat(lambda: self.time_gemm(backend, dtype, threads, shape), number=1, repeat=5)
        return min(runs) / (self.flops / 1e9)

    track_seconds_per_gflop.unit = "s/GFLOP"

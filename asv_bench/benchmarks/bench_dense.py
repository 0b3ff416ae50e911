"""Fused dense-layer forward and the dense backward pass at MLP shapes."""

import numpy as np

from fastbp import kernels

from .common import BACKENDS, DTYPES, THREADS, KernelBenchmark, random

# (n_samples, n_in, n_out)
SHAPES = {
    "dense_b0032_i0064_o0032": (32, 64, 32),
    "dense_b0128_i0784_o0256": (128, 784, 256),
    "dense_b0256_i1024_o1024": (256, 1024, 1024),
}


class Dense(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(SHAPES), ["relu", "tanh"]]
    param_names = ["backend", "dtype", "threads", "shape", "activation"]

    def setup(self, backend, dtype, threads, shape, activation):
        self.configure(backend, dtype, threads)
        m, k, n = SHAPES[shape]
        self.x = random((m, k), dtype, 1)
        self.w = random((k, n), dtype, 2) / np.sqrt(k).astype(dtype)
        self.b = random((n,), dtype, 3)
        self.a = np.zeros((m, n), dtype)
        self.grad = random((m, n), dtype, 4)
        self.delta = np.zeros((m, n), dtype)
        self.dw, self.db, self.dx = np.zeros((k, n), dtype), np.zeros(n, dtype), np.zeros((m, k), dtype)
        self.time_forward(backend, dtype, threads, shape, activation)
        self.time_backward(backend, dtype, threads, shape, activation)

    def time_forward(self, backend, dtype, threads, shape, activation):
        kernels.dense_forward(self.x, self.w, self.b, activation, out=self.a)

    def time_backward(self, backend, dtype, threads, shape, activation):
        kernels.dense_backward(self.x, self.w, self.a, self.grad, activation, grad_preactivation_out=self.delta,
                               dw_out=self.dw, db_out=self.db, dx_out=self.dx)

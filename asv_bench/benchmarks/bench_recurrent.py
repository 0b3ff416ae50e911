"""Recurrent layers: the RNN's forward + backward pass (BPTT) at batch 64, time 50,
hidden 128, n_in 32 (the peer comparison's shape), its kernels alone, and the
FixedPoint layer's relaxation + adjoint."""

import timeit

import numpy as np

import fastbp as fb
from fastbp import kernels

from .common import BACKENDS, DTYPES, THREADS, KernelBenchmark, random

BATCH, TIME, N_IN, HIDDEN = 64, 50, 32, 128


class RNN(KernelBenchmark):
    """One forward + backward of RNN(32, 128, tanh) -> Dense(128, 10) on (64, 50, 32) sequences."""

    params = [BACKENDS, DTYPES, THREADS, ["tanh", "relu"]]
    param_names = ["backend", "dtype", "threads", "activation"]

    def setup(self, backend, dtype, threads, activation):
        self.configure(backend, dtype, threads)
        self.net = fb.Network([fb.RNN(N_IN, HIDDEN, activation), fb.Dense(HIDDEN, 10)],
                              loss="softmax_cross_entropy", dtype=dtype, seed=0)
        self.X = random((BATCH, TIME, N_IN), dtype, 1)
        self.y = np.random.default_rng(2).integers(0, 10, BATCH)
        x_proj = random((BATCH, TIME, HIDDEN), dtype, 3) * 0.5
        self.wh = (random((HIDDEN, HIDDEN), dtype, 4) / np.sqrt(HIDDEN)).astype(dtype)
        self.hs = kernels.rnn_forward(x_proj, self.wh, activation)
        self.x_proj = x_proj
        self.grad = random((BATCH, TIME, HIDDEN), dtype, 5)
        self.delta, self.dwh = np.zeros_like(self.grad), np.zeros_like(self.wh)
        self.time_forward_backward(backend, dtype, threads, activation)  # JIT, buffers
        self.time_kernels(backend, dtype, threads, activation)

    def time_forward_backward(self, backend, dtype, threads, activation):
        self.net.forward(self.X)
        self.net.backward(self.y)

    def time_kernels(self, backend, dtype, threads, activation):
        kernels.rnn_forward(self.x_proj, self.wh, activation, out=self.hs)
        kernels.rnn_backward(self.hs, self.wh, self.grad, activation, delta_out=self.delta, dwh_out=self.dwh)

    def track_seconds_per_1000_samples(self, backend, dtype, threads, activation):
        """Best of 5 forward + backward passes, as time per 1,000 samples (lower is better)."""
        runs = timeit.repeat(lambda: self.time_forward_backward(backend, dtype, threads, activation), number=1,
                             repeat=5)
        return min(runs) / BATCH * 1000

    track_seconds_per_1000_samples.unit = "s"


class FixedPoint(KernelBenchmark):
    """Relaxation to tol 1e-5 and the Almeida–Pineda adjoint, 256 samples x 128 units, ‖Wh‖₂ = 0.5."""

    params = [BACKENDS, DTYPES, THREADS]
    param_names = ["backend", "dtype", "threads"]

    def setup(self, backend, dtype, threads):
        self.configure(backend, dtype, threads)
        self.x_proj = random((256, HIDDEN), dtype, 1)
        q, _ = np.linalg.qr(random((HIDDEN, HIDDEN), "float64", 2))
        self.wh = (0.5 * q).astype(dtype)
        self.grad = random((256, HIDDEN), dtype, 3)
        self.h = np.zeros((256, HIDDEN), dtype)
        self.delta = np.zeros((256, HIDDEN), dtype)
        self.time_relax_and_adjoint(backend, dtype, threads)

    def time_relax_and_adjoint(self, backend, dtype, threads):
        kernels.fixed_point_forward(self.x_proj, self.wh, "tanh", tol=1e-5, out=self.h)
        kernels.fixed_point_adjoint(self.h, self.wh, self.grad, "tanh", tol=1e-5, out=self.delta)

"""Recurrent layers: the RNN's, the LSTM's and the GRU's forward + backward pass
(BPTT) in a network at batch 64, time 50, hidden 128, n_in 32 (the peer
comparison's shape, ``python -m fastbp.bench rnn``), their kernels alone, and
the FixedPoint layer's relaxation + adjoint."""

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
        return seconds_per_1000_samples(self.net, self.X, self.y)

    track_seconds_per_1000_samples.unit = "s"


def seconds_per_1000_samples(net, X, y):
    """Best of 5 forward + backward passes of ``net`` on the batch (X, y), per 1,000 samples."""
    def forward_backward():
        net.forward(X)
        net.backward(y)

    return min(timeit.repeat(forward_backward, number=1, repeat=5)) / len(X) * 1000


class GatedNetwork(KernelBenchmark):
    """One forward + backward of LSTM / GRU(32, 128) -> Dense(128, 10) on (64, 50, 32) sequences:
    the layer as a network runs it (``bench rnn``'s shape), beside the kernels alone (``Gated``)."""

    params = [BACKENDS, DTYPES, THREADS, ["LSTM", "GRU"]]
    param_names = ["backend", "dtype", "threads", "kind"]

    def setup(self, backend, dtype, threads, kind):
        self.configure(backend, dtype, threads)
        self.net = fb.Network([getattr(fb, kind)(N_IN, HIDDEN), fb.Dense(HIDDEN, 10)],
                              loss="softmax_cross_entropy", dtype=dtype, seed=0)
        self.X = random((BATCH, TIME, N_IN), dtype, 1)
        self.y = np.random.default_rng(2).integers(0, 10, BATCH)
        self.time_forward_backward(backend, dtype, threads, kind)  # JIT, buffers

    def time_forward_backward(self, backend, dtype, threads, kind):
        self.net.forward(self.X)
        self.net.backward(self.y)

    def track_seconds_per_1000_samples(self, backend, dtype, threads, kind):
        """Best of 5 forward + backward passes, as time per 1,000 samples (lower is better)."""
        return seconds_per_1000_samples(self.net, self.X, self.y)

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


class Gated(KernelBenchmark):
    """One forward + backward (full BPTT) of the LSTM / GRU kernels on (64, 50, 32) sequences, 128 hidden,
    every buffer and the work scratch preallocated (as a layer would)."""

    params = [BACKENDS, DTYPES, THREADS, ["lstm", "gru"]]
    param_names = ["backend", "dtype", "threads", "cell"]

    def setup(self, backend, dtype, threads, cell):
        self.configure(backend, dtype, threads)
        n_gates = 4 if cell == "lstm" else 3
        width = n_gates * HIDDEN
        self.x = random((BATCH, TIME, N_IN), dtype, 1)
        self.w_ih = random((N_IN, width), dtype, 2) / np.sqrt(N_IN).astype(dtype)
        self.w_hh = random((HIDDEN, width), dtype, 3) / np.sqrt(HIDDEN).astype(dtype)
        self.bias = random((width,), dtype, 4) * 0.1
        self.bias_hn = random((HIDDEN,), dtype, 5) * 0.1
        self.h0 = np.zeros((BATCH, HIDDEN), dtype)
        self.grad = random((BATCH, TIME, HIDDEN), dtype, 6)
        sequence, gates = (BATCH, TIME, HIDDEN), (BATCH, TIME, width)
        self.hs, self.aux = np.zeros(sequence, dtype), np.zeros(sequence, dtype)
        self.gates, self.dgates, self.dghh = (np.zeros(gates, dtype) for _ in range(3))
        self.work = np.zeros(kernels.GATED_WORK[cell, "backward"] * BATCH * HIDDEN, dtype)
        self.dx = np.zeros_like(self.x)
        self.dw_ih, self.dw_hh = np.zeros_like(self.w_ih), np.zeros_like(self.w_hh)
        self.dbias, self.dbias_hn = np.zeros_like(self.bias), np.zeros_like(self.bias_hn)
        self.dh0, self.dc0 = np.zeros_like(self.h0), np.zeros_like(self.h0)
        self.time_forward_backward(backend, dtype, threads, cell)  # JIT

    def time_forward_backward(self, backend, dtype, threads, cell):
        if cell == "lstm":
            kernels.lstm_forward(self.x, self.w_ih, self.w_hh, self.bias, self.h0, self.h0, out=self.hs,
                                 cell_out=self.aux, gates_out=self.gates, work=self.work)
            kernels.lstm_backward(self.x, self.w_ih, self.w_hh, self.hs, self.aux, self.gates, self.grad, self.h0,
                                  self.h0, dx_out=self.dx, dw_ih_out=self.dw_ih, dw_hh_out=self.dw_hh,
                                  dbias_out=self.dbias, dh0_out=self.dh0, dc0_out=self.dc0,
                                  dgates_out=self.dgates, work=self.work)
        else:
            kernels.gru_forward(self.x, self.w_ih, self.w_hh, self.bias, self.bias_hn, self.h0, out=self.hs,
                                gates_out=self.gates, hn_out=self.aux, work=self.work)
            kernels.gru_backward(self.x, self.w_ih, self.w_hh, self.hs, self.gates, self.aux, self.grad, self.h0,
                                 dx_out=self.dx, dw_ih_out=self.dw_ih, dw_hh_out=self.dw_hh, dbias_out=self.dbias,
                                 dbias_hn_out=self.dbias_hn, dh0_out=self.dh0, dgates_out=self.dgates,
                                 dghh_out=self.dghh, work=self.work)

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


# (widths, batch): the peer comparison's small and mid-sized networks.
NETWORKS = {
    "mlp_64_32_10_b0032": ((64, 32, 10), 32),
    "mlp_784_256_128_10_b0128": ((784, 256, 128, 10), 128),
}


class MLPLossAndGrad(KernelBenchmark):
    """A whole Dense stack's forward, loss and backward in one kernel call (what fit runs per step)."""

    params = [BACKENDS, DTYPES, THREADS, list(NETWORKS)]
    param_names = ["backend", "dtype", "threads", "network"]

    def setup(self, backend, dtype, threads, network):
        self.configure(backend, dtype, threads)
        widths, m = NETWORKS[network]
        self.widths = widths
        self.activations = ["relu"] * (len(widths) - 2) + ["identity"]
        self.x = random((m, widths[0]), dtype, 1)
        self.labels = np.random.default_rng(2).integers(0, widths[-1], m)
        self.params = np.concatenate([
            np.concatenate([random(n_in * n_out, dtype, 3) / np.sqrt(n_in).astype(dtype), np.zeros(n_out, dtype)])
            for n_in, n_out in zip(widths[:-1], widths[1:])])
        self.grads = np.zeros_like(self.params)
        self.outputs = np.zeros(m * sum(widths[1:]), dtype)
        self.deltas = np.zeros_like(self.outputs)
        self.time_loss_and_grad(backend, dtype, threads, network)

    def time_loss_and_grad(self, backend, dtype, threads, network):
        kernels.mlp_loss_and_grad(self.x, self.labels, "softmax_cross_entropy", self.widths, self.activations,
                                  self.params, self.grads, outputs_out=self.outputs, deltas_out=self.deltas)

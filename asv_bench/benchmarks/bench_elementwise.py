"""Every activation forward and backward, and every loss with its gradient."""

import numpy as np

from fastbp import kernels

from .common import BACKENDS, DTYPES, THREADS, KernelBenchmark, random

SHAPE = (256, 1024)


class Activation(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(kernels.ACTIVATIONS)]
    param_names = ["backend", "dtype", "threads", "activation"]

    def setup(self, backend, dtype, threads, activation):
        self.configure(backend, dtype, threads)
        self.z = random(SHAPE, dtype, 1)
        self.a = kernels.activation(activation, self.z)
        self.grad = random(SHAPE, dtype, 2)
        self.out = np.zeros(SHAPE, dtype)
        self.time_backward(backend, dtype, threads, activation)

    def time_forward(self, backend, dtype, threads, activation):
        kernels.activation(activation, self.z, out=self.out)

    def time_backward(self, backend, dtype, threads, activation):
        kernels.activation_grad(activation, self.grad, self.a, preactivation=self.z, out=self.out)


class Loss(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, ["mse", "softmax_cross_entropy", "binary_cross_entropy"]]
    param_names = ["backend", "dtype", "threads", "loss"]

    def setup(self, backend, dtype, threads, loss):
        self.configure(backend, dtype, threads)
        self.output = random((1024, 10), dtype, 1)
        rng = np.random.default_rng(3)
        if loss == "softmax_cross_entropy":
            self.target = rng.integers(0, 10, size=1024)
        else:
            self.target = rng.random((1024, 10)).astype(dtype)
        self.grad = np.zeros_like(self.output)
        self.time_loss_and_grad(backend, dtype, threads, loss)

    def time_loss_and_grad(self, backend, dtype, threads, loss):
        kernels.loss_and_grad(loss, self.output, self.target, grad_out=self.grad)

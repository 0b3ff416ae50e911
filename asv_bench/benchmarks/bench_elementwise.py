"""Every activation forward and backward, every loss with its gradient, and the optimizer steps."""

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


class OptimizerStep(KernelBenchmark):
    """One checked optimizer step over the flat parameters of 784-256-128-10 (235,146 values)."""

    params = [BACKENDS, DTYPES, THREADS, ["sgd", "sgd_momentum", "adam"]]
    param_names = ["backend", "dtype", "threads", "optimizer"]

    def setup(self, backend, dtype, threads, optimizer):
        self.configure(backend, dtype, threads)
        n = 235_146
        self.param = random(n, dtype, 1)
        self.grad = random(n, dtype, 2) * np.asarray(1e-3, dtype)
        self.state = [np.zeros(n, dtype), np.zeros(n, dtype)]
        if not self._step(optimizer):  # a rejected (non-finite) step would time the check pass only
            raise RuntimeError(f"the {optimizer} step was not applied")

    def _step(self, optimizer):
        if optimizer == "adam":
            return kernels.adam_step(self.param, self.grad, *self.state, step=1, lr=1e-4)
        return kernels.sgd_step(self.param, self.grad, self.state[0] if optimizer != "sgd" else None,
                                lr=1e-4, momentum=0.9 if optimizer != "sgd" else 0.0)

    def time_step(self, backend, dtype, threads, optimizer):
        self._step(optimizer)

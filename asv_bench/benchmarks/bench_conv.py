"""2-D convolution forward/backward and pooling at the LeNet-5 and small-VGG shapes.

``track_*_seconds_per_gflop`` report t / (2·m·n·k / 1e9), the inverse of the
GFLOP/s of the convolution's GEMM (m output pixels, n output channels, k =
kh·kw·in_channels), so that lower is better as asv assumes for every track_,
forward and backward (dW and dx: twice the forward's flops), timed over a few
repeats in one process. A
network's first convolution (``c1``) needs no dx, so its backward computes dW
and db only (the forward's flops), as in training.
"""

import time

import numpy as np

from fastbp import kernels

from .common import BACKENDS, DTYPES, THREADS, KernelBenchmark, random

# (batch, height, width, in_channels, out_channels, kernel, padding)
CONVS = {
    "lenet_c1_b064_28x28x1_6at5x5": (64, 28, 28, 1, 6, 5, "valid"),
    "lenet_c2_b064_12x12x6_16at5x5": (64, 12, 12, 6, 16, 5, "valid"),
    "vgg_c1_b064_32x32x3_32at3x3": (64, 32, 32, 3, 32, 3, "same"),
    "vgg_c2_b064_16x16x32_64at3x3": (64, 16, 16, 32, 64, 3, "same"),
}

# (batch, height, width, channels, pool)
POOLS = {
    "lenet_p1_b064_24x24x6": (64, 24, 24, 6, 2),
    "vgg_p1_b064_32x32x32": (64, 32, 32, 32, 2),
}


def conv_flops(shape):
    n, h, w, c_in, c_out, k, padding = shape
    out_h, out_w = (h, w) if padding == "same" else (h - k + 1, w - k + 1)
    return 2.0 * n * out_h * out_w * c_out * k * k * c_in


class Conv2D(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(CONVS)]
    param_names = ["backend", "dtype", "threads", "shape"]

    def setup(self, backend, dtype, threads, shape):
        self.configure(backend, dtype, threads)
        n, h, w, c_in, c_out, k, self.padding = CONVS[shape]
        self.flops = conv_flops(CONVS[shape])
        self.compute_dx = "_c1_" not in shape
        self.x = random((n, h, w, c_in), dtype, 1)
        self.w = random((k, k, c_in, c_out), dtype, 2) / np.sqrt(k * k * c_in).astype(dtype)
        self.b = random((c_out,), dtype, 3)
        self.a = kernels.conv2d_forward(self.x, self.w, self.b, padding=self.padding, activation="relu")
        self.grad = random(self.a.shape, dtype, 4)
        self.delta = np.zeros_like(self.a)
        self.dw, self.db, self.dx = np.zeros_like(self.w), np.zeros_like(self.b), np.zeros_like(self.x)
        self.time_forward(backend, dtype, threads, shape)
        self.time_backward(backend, dtype, threads, shape)

    def time_forward(self, backend, dtype, threads, shape):
        kernels.conv2d_forward(self.x, self.w, self.b, padding=self.padding, activation="relu", out=self.a)

    def time_backward(self, backend, dtype, threads, shape):
        kernels.conv2d_backward(self.x, self.w, self.a, self.grad, padding=self.padding, activation="relu",
                                grad_preactivation_out=self.delta, dw_out=self.dw, db_out=self.db,
                                dx_out=self.dx if self.compute_dx else None, compute_dx=self.compute_dx)

    def _seconds_per_gflop(self, run, flops):
        """The inverse of GFLOP/s, best of 5, so that lower is better as asv assumes for every track_."""
        best = np.inf
        for _ in range(5):
            start = time.perf_counter()
            run(None, None, None, None)
            best = min(best, time.perf_counter() - start)
        return best / (flops / 1e9)

    def track_forward_seconds_per_gflop(self, backend, dtype, threads, shape):
        return self._seconds_per_gflop(self.time_forward, self.flops)

    def track_backward_seconds_per_gflop(self, backend, dtype, threads, shape):
        return self._seconds_per_gflop(self.time_backward, (2 if self.compute_dx else 1) * self.flops)

    track_forward_seconds_per_gflop.unit = "s/GFLOP"
    track_backward_seconds_per_gflop.unit = "s/GFLOP"


class Pool2D(KernelBenchmark):
    params = [BACKENDS, DTYPES, THREADS, list(POOLS), ["max", "avg"]]
    param_names = ["backend", "dtype", "threads", "shape", "kind"]

    def setup(self, backend, dtype, threads, shape, kind):
        self.configure(backend, dtype, threads)
        n, h, w, c, self.pool = POOLS[shape]
        self.x = random((n, h, w, c), dtype, 1)
        self.dx = np.zeros_like(self.x)
        if kind == "max":
            self.out, self.argmax = kernels.max_pool2d_forward(self.x, self.pool)
        else:
            self.out = kernels.avg_pool2d_forward(self.x, self.pool)
        self.grad = random(self.out.shape, dtype, 2)
        self.time_forward(backend, dtype, threads, shape, kind)
        self.time_backward(backend, dtype, threads, shape, kind)

    def time_forward(self, backend, dtype, threads, shape, kind):
        if kind == "max":
            kernels.max_pool2d_forward(self.x, self.pool, out=self.out, argmax_out=self.argmax)
        else:
            kernels.avg_pool2d_forward(self.x, self.pool, out=self.out)

    def time_backward(self, backend, dtype, threads, shape, kind):
        if kind == "max":
            kernels.max_pool2d_backward(self.grad, self.argmax, self.x.shape, dx_out=self.dx)
        else:
            kernels.avg_pool2d_backward(self.grad, self.x.shape, self.pool, dx_out=self.dx)

"""Losses and their gradients, returned in float64 with the gradient written in place.

Design: rows are split over threads with ``prange``; each row's loss is summed
serially into ``partial[i]`` (float64) and the row sums are added serially in
row order afterwards, so the value is bitwise the same for any thread count.
Arithmetic is done in float64 whatever the dtype (as the reference does), with
the max subtracted before every exp (log-sum-exp) so no finite logit overflows.

Layout: output, target and grad are C-contiguous (m, n), read as flat arrays;
class labels are int64 (m,).
"""

import math

import numba
import numpy as np
from numba import prange

from ._arrays import writable
from ._threads import BACKOFF, clamp_threads, set_threads

from ..blocking import PARALLEL_MIN_ELEMENTS  # noqa: E402  (the one table)
ROW_BLOCK = 64  # rows of softmax_cross_entropy_index per scratch buffer

# error_model="numpy": a division by zero gives inf/nan instead of raising, so a loop
# with a division has no exception branch and can vectorise.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")


def _twins(make):
    """(parallel, serial) compilations of ``make(PARALLEL)``'s kernel: a parallel region costs
    ~1.5 µs to enter even on one thread, so one thread and small inputs take the serial one.
    PARALLEL is a closure constant, so the two are distinct entries of Numba's cache."""
    return (numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")(make(True)),
            numba.njit(cache=True, nogil=True, parallel=False, error_model="numpy")(make(False)))


@_jit
def _row_order_sum(partial):
    """Σ partial[i] in increasing i (float64)."""
    total = 0.0
    for i in range(partial.shape[0]):
        total += partial[i]
    return total


@_jit
def _log_sum_exp(z, off, count):
    """(max, log Σ exp(z - max)) of the row z[off:off+count], in float64."""
    top = np.float64(z[off])
    for j in range(1, count):
        top = max(top, np.float64(z[off + j]))
    total = 0.0
    for j in range(count):
        total += math.exp(np.float64(z[off + j]) - top)
    return top, math.log(total)


def _make_mse(PARALLEL):
    def _mse(output, target, grad, n_threads):
        """mean((output - target)²); grad := 2(output - target)/N.  OUT grad (m, n)."""
        m, n = output.shape
        size = m * n
        if PARALLEL:
            set_threads(n_threads)
        out_f, target_f, grad_f = output.reshape(size), target.reshape(size), grad.reshape(size)
        partial = np.empty(m)
        for i in prange(m):
            s = 0.0
            for j in range(i * n, (i + 1) * n):
                diff = np.float64(out_f[j]) - np.float64(target_f[j])
                grad_f[j] = 2.0 * diff / size
                s += diff * diff
            partial[i] = s
        return _row_order_sum(partial) / size

    return _mse


_mse_parallel, _mse_serial = _twins(_make_mse)


def _make_softmax_cross_entropy(PARALLEL):
    def _softmax_cross_entropy(logits, target, grad, n_threads):
        """-Σ target·log softmax(logits) / m; grad := (softmax·Σ_j target - target) / m.  OUT grad (m, n)."""
        m, n = logits.shape
        if PARALLEL:
            set_threads(n_threads)
        z, t, g = logits.reshape(m * n), target.reshape(m * n), grad.reshape(m * n)
        partial = np.empty(m)
        for i in prange(m):
            off = i * n
            top, lse = _log_sum_exp(z, off, n)
            t_sum = 0.0
            for j in range(off, off + n):
                t_sum += np.float64(t[j])
            s = 0.0
            for j in range(off, off + n):
                log_p = np.float64(z[j]) - top - lse
                g[j] = (math.exp(log_p) * t_sum - np.float64(t[j])) / m
                s += np.float64(t[j]) * log_p
            partial[i] = s
        return -_row_order_sum(partial) / m

    return _softmax_cross_entropy


_softmax_cross_entropy_parallel, _softmax_cross_entropy_serial = _twins(_make_softmax_cross_entropy)


@_jit
def _softmax_cross_entropy_index_row(z, label, g, off, n, m, e):
    """g[off:+n] := (softmax(z[off:+n]) - onehot(label)) / m; returns log softmax(z)[label].

    One exp per element: exp(z - max) is kept in e (n,) float64 from the sum to the gradient.
    """
    top = np.float64(z[off])
    for j in range(1, n):
        top = max(top, np.float64(z[off + j]))
    total = 0.0
    for j in range(n):
        e[j] = math.exp(np.float64(z[off + j]) - top)
        total += e[j]
    scale = 1.0 / (total * m)
    for j in range(n):
        g[off + j] = e[j] * scale
    g[off + label] = (e[label] / total - 1.0) / m
    return (np.float64(z[off + label]) - top) - math.log(total)


def _make_softmax_cross_entropy_index(PARALLEL):
    def _softmax_cross_entropy_index(logits, labels, grad, n_threads):
        """-Σ_i log softmax(logits)[i, labels[i]] / m; grad := (softmax - onehot(labels)) / m.  OUT grad (m, n).

        Rows go in blocks of ROW_BLOCK, each with its own exp buffer (one allocation per block).
        """
        m, n = logits.shape
        if PARALLEL:
            set_threads(n_threads)
        z, g = logits.reshape(m * n), grad.reshape(m * n)
        partial = np.empty(m)
        for block in prange(-(-m // ROW_BLOCK)):
            e = np.empty(n)
            for i in range(block * ROW_BLOCK, min(m, (block + 1) * ROW_BLOCK)):
                partial[i] = _softmax_cross_entropy_index_row(z, labels[i], g, i * n, n, m, e)
        return -_row_order_sum(partial) / m

    return _softmax_cross_entropy_index


_softmax_cross_entropy_index_parallel, _softmax_cross_entropy_index_serial = _twins(_make_softmax_cross_entropy_index)


def _make_binary_cross_entropy(PARALLEL):
    def _binary_cross_entropy(logits, target, grad, n_threads):
        """mean(max(z, 0) - z·y + log1p(exp(-|z|))); grad := (sigmoid(z) - y)/N.  OUT grad (m, n)."""
        m, n = logits.shape
        size = m * n
        if PARALLEL:
            set_threads(n_threads)
        z_f, t_f, g_f = logits.reshape(size), target.reshape(size), grad.reshape(size)
        partial = np.empty(m)
        for i in prange(m):
            s = 0.0
            for j in range(i * n, (i + 1) * n):
                z = np.float64(z_f[j])
                y = np.float64(t_f[j])
                e = math.exp(-abs(z))
                sig = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
                g_f[j] = (sig - y) / size
                s += max(z, 0.0) - z * y + math.log1p(e)
            partial[i] = s
        return _row_order_sum(partial) / size

    return _binary_cross_entropy


_binary_cross_entropy_parallel, _binary_cross_entropy_serial = _twins(_make_binary_cross_entropy)


def _run(kernels, size, *args):
    """Run the (parallel, serial) pair ``kernels`` on args (the last is n_threads): the parallel
    one (on n_threads, maybe 1) from PARALLEL_MIN_ELEMENTS values, else the serial one."""
    if size >= PARALLEL_MIN_ELEMENTS and not BACKOFF[0]:
        return kernels[0](*args[:-1], clamp_threads(args[-1]))
    return kernels[1](*args[:-1], 1)


_MSE = (_mse_parallel, _mse_serial)
_SOFTMAX_CE = (_softmax_cross_entropy_parallel, _softmax_cross_entropy_serial)
_SOFTMAX_CE_INDEX = (_softmax_cross_entropy_index_parallel, _softmax_cross_entropy_index_serial)
_BCE = (_binary_cross_entropy_parallel, _binary_cross_entropy_serial)


def mse(output, target, grad, n_threads):
    """mean((output - target)²); grad := 2(output - target)/N."""
    return float(_run(_MSE, grad.size, writable(output), writable(target), grad, n_threads))


def softmax_cross_entropy(logits, target, grad, n_threads):
    """Cross-entropy of softmax(logits) with probability rows target, mean over the batch."""
    return float(_run(_SOFTMAX_CE, grad.size, writable(logits), writable(target), grad, n_threads))


def softmax_cross_entropy_index(logits, labels, grad, n_threads):
    """As softmax_cross_entropy with class indices labels (m,) int64 in [0, n_classes)."""
    return float(_run(_SOFTMAX_CE_INDEX, grad.size, writable(logits), writable(labels), grad, n_threads))


def binary_cross_entropy(logits, target, grad, n_threads):
    """Binary cross-entropy from logits, mean over all elements (PyTorch's BCEWithLogitsLoss)."""
    return float(_run(_BCE, grad.size, writable(logits), writable(target), grad, n_threads))

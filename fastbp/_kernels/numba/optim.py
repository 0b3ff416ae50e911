"""Optimizer steps on flat parameter buffers (torch.optim's rules), float32 and float64.

Design: every update is element-wise, so the flat buffers are cut into fixed
chunks of CHUNK elements that ``prange`` shares out; there is no reduction, and
nothing depends on the thread count. Arithmetic is in the dtype of the
parameters with the hyperparameters rounded to it (the wrappers round them, so
the jitted code is typed by the dtype), as the NumPy reference and torch do,
Adam's denominator included.

Layout: every buffer is a C-contiguous 1-D array of n values.
"""

import math

import numba
import numpy as np
from numba import prange

from ._arrays import writable
from ._threads import clamp_threads, set_threads

# Elements per task; below two chunks a step runs on the calling thread, in the
# serial twin of the kernel (_SGD, _RMSPROP, _ADAM: (parallel, serial)). Larger
# buffers take the parallel one even on one thread: LLVM vectorises the outlined
# parallel body, not the serial loop over 4-5 arrays that may alias (Adam at
# 235k values: 290 vs 1260 us on one thread).
CHUNK = 1 << 14


def _twins(make):
    """(parallel, serial) compilations of ``make(PARALLEL)``'s kernel: a parallel region costs
    ~1.5 µs to enter even on one thread, so one thread and single-chunk buffers take the serial
    one. PARALLEL is a closure constant, so the two are distinct entries of Numba's cache."""
    return (numba.njit(cache=True, nogil=True, parallel=True)(make(True)),
            numba.njit(cache=True, nogil=True, parallel=False)(make(False)))


def _tasks(n, n_threads):
    """(number of chunks, threads to use) for a buffer of n values."""
    n_chunks = (n + CHUNK - 1) // CHUNK
    return n_chunks, (clamp_threads(n_threads) if n_chunks >= 2 else 1)


def _make_sgd(PARALLEL):
    def _sgd(p_all, g_all, v_all, lr, mu, nesterov, wd, n_chunks, n_threads):
        """g' = g + wd·p; v := μ·v + g'; p -= lr·(g' + μ·v if nesterov else v).  IN/OUT p, v."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        for c in prange(n_chunks):
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            p, g, v = p_all[lo:hi], g_all[lo:hi], v_all[lo:hi] if mu != 0 else v_all
            for i in range(hi - lo):  # from 0 on chunk views: no wraparound test, the loop vectorises
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if mu != 0:
                    v[i] = mu * v[i]
                    v[i] = v[i] + gi
                    gi = gi + mu * v[i] if nesterov else v[i]
                p[i] = p[i] - lr * gi

    return _sgd


_SGD = _twins(_make_sgd)


def _make_rmsprop(PARALLEL):
    def _rmsprop(p_all, g_all, s_all, lr, rho, one_minus_rho, eps, wd, n_chunks, n_threads):
        """g' = g + wd·p; s := ρ·s + (1-ρ)·g'²; p -= lr·g' / (√s + eps).  IN/OUT p, s."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        for c in prange(n_chunks):
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            p, g, s = p_all[lo:hi], g_all[lo:hi], s_all[lo:hi]
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                s[i] = rho * s[i]
                s[i] = s[i] + one_minus_rho * gi * gi
                p[i] = p[i] - lr * gi / (np.sqrt(s[i]) + eps)

    return _rmsprop


_RMSPROP = _twins(_make_rmsprop)


def _make_adam(PARALLEL):
    def _adam(p_all, g_all, m_all, v_all, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2,
              eps, wd, n_chunks, n_threads):
        """m := β1·m + (1-β1)·g'; v := β2·v + (1-β2)·g'²; p -= step_size·m / (√v/sqrt_bias2 + eps).  IN/OUT p, m, v."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        for c in prange(n_chunks):
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            p, g, m, v = p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi]
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                m[i] = beta1 * m[i]
                m[i] = m[i] + one_minus_beta1 * gi
                v[i] = beta2 * v[i]
                v[i] = v[i] + one_minus_beta2 * gi * gi
                denom = np.sqrt(v[i]) / sqrt_bias2 + eps
                p[i] = p[i] - (step_size * m[i]) / denom

    return _adam


_ADAM = _twins(_make_adam)


def _make_all_finite(PARALLEL):
    def _all_finite(bits, exponent, carry, sign, n_chunks, n_threads):
        """Whether no element has an all-ones exponent (NaN, ±inf), on the bits.

        (bits & exponent) + carry reaches the sign bit exactly when the exponent
        is all ones; OR-ed over each chunk with no early exit (vectorises).
        """
        if PARALLEL:
            set_threads(n_threads)
        n = bits.shape[0]
        bad = 0
        for c in prange(n_chunks):
            acc = exponent & 0  # uint64, as every term: a mixed uint/int expression would type as float
            chunk = bits[c * CHUNK:min(n, (c + 1) * CHUNK)]
            for i in range(chunk.shape[0]):  # from 0: LLVM drops the wraparound test and vectorises
                acc |= (chunk[i] & exponent) + carry
            if acc & sign:
                bad += 1
        return bad == 0

    return _all_finite


_ALL_FINITE = _twins(_make_all_finite)
_FINITE_BITS = {
    np.dtype(np.float32): (np.uint32, np.uint64(0x7F800000), np.uint64(0x00800000), np.uint64(0x80000000)),
    np.dtype(np.float64): (np.uint64, np.uint64(0x7FF0000000000000), np.uint64(0x0010000000000000),
                           np.uint64(0x8000000000000000)),
}
# all_finite reads ~50 GB/s on one thread: threads pay from this many chunks on.
FINITE_PARALLEL_CHUNKS = 32


def all_finite(x, n_threads):
    """Whether every element of x is finite (no NaN, no ±inf).  IN x (n,) C-contiguous."""
    uint, exponent, carry, sign = _FINITE_BITS[x.dtype]
    n_chunks = (x.shape[0] + CHUNK - 1) // CHUNK
    threads = clamp_threads(n_threads) if n_chunks >= FINITE_PARALLEL_CHUNKS else 1
    return bool(_ALL_FINITE[n_chunks < FINITE_PARALLEL_CHUNKS](x.view(uint), exponent, carry, sign, n_chunks, threads))


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay, n_threads):
    """g = grad + wd·p; v := μ·v + g; p -= lr·(g + μ·v if nesterov else v).  IN grad; IN/OUT param, velocity."""
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    if velocity is None:  # unused without momentum; one typed argument keeps one compilation
        velocity = param[:0]
    _SGD[n_chunks < 2](param, writable(grad), velocity, t(lr), t(momentum), bool(nesterov), t(weight_decay),
                       n_chunks, threads)


def rmsprop_step(param, grad, square_avg, lr, rho, eps, weight_decay, n_threads):
    """g = grad + wd·p; s := ρ·s + (1-ρ)·g²; p -= lr·g / (√s + eps).  IN grad; IN/OUT param, square_avg."""
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    _RMSPROP[n_chunks < 2](param, writable(grad), square_avg, t(lr), t(rho), t(1 - rho), t(eps),
                           t(weight_decay), n_chunks, threads)


def adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, n_threads):
    """Adam step t >= 1 with bias correction.  IN grad; IN/OUT param, exp_avg, exp_avg_sq."""
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    step_size = t(lr / (1 - beta1**step))
    sqrt_bias2 = t(math.sqrt(1 - beta2**step))
    _ADAM[n_chunks < 2](param, writable(grad), exp_avg, exp_avg_sq, step_size, t(beta1), t(1 - beta1), t(beta2),
                        t(1 - beta2), sqrt_bias2, t(eps), t(weight_decay), n_chunks, threads)

"""Optimizer steps on flat parameter buffers (torch.optim's rules), float32 and float64.

Design: every update is element-wise, so the flat buffers are cut into fixed
chunks of CHUNK elements that ``prange`` shares out; nothing depends on the
thread count. Arithmetic is in the dtype of the parameters with the
hyperparameters rounded to it (the wrappers round them, so the jitted code is
typed by the dtype), as the NumPy reference and torch do, Adam's denominator
included. Each step is checked, in two passes over the chunks: pass 1 computes
every new value in registers, writes nothing, and tests it and the gradient for
NaN/±inf; pass 2, only if every chunk passed, is the write pass. Both passes
evaluate the same expressions in the same order (no FMA contraction without
fastmath), so pass 1 sees exactly the values pass 2 writes.

Layout: every buffer is a C-contiguous 1-D array of n values.
"""

import math

import numba
import numpy as np
from numba import prange

from ..blocking import OPTIMIZER_PARALLEL_MIN_VALUES
from ._arrays import writable
from ._threads import BACKOFF, clamp_threads, set_threads

# Elements per task; with one thread or below blocking.OPTIMIZER_PARALLEL_MIN_VALUES
# a step runs on the calling thread, in the serial twin of the kernel (_SGD,
# _RMSPROP, _ADAM: (parallel, serial)).
CHUNK = 1 << 14


def _twins(make):
    """(parallel, serial) compilations of ``make(PARALLEL)``'s kernel: a parallel region costs
    ~1.5 µs to enter even on one thread, so one thread and single-chunk buffers take the serial
    one. PARALLEL is a closure constant, so the two are distinct entries of Numba's cache.

    error_model="numpy" (x/0 gives ±inf or NaN, as in the prange bodies, which Numba always
    compiles that way): the default "python" model puts a ZeroDivisionError branch in the
    loops, which stops LLVM from vectorising the serial twin (Adam at 16k float32 values,
    one thread: 54 vs 7.7 µs)."""
    return (numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")(make(True)),
            numba.njit(cache=True, nogil=True, parallel=False, error_model="numpy")(make(False)))


def _tasks(n, n_threads):
    """(number of chunks, threads to use) for a buffer of n values; one thread means the serial twin."""
    n_chunks = (n + CHUNK - 1) // CHUNK
    parallel = n_chunks >= 2 and n >= OPTIMIZER_PARALLEL_MIN_VALUES and not BACKOFF[0]
    return n_chunks, (clamp_threads(n_threads) if parallel else 1)


# Pass 1's test: x - x is 0 for a finite x and NaN for NaN and ±inf, so a sum of
# such differences is NaN exactly when one of its terms is not finite; OR-ing
# `nan != nan` over the chunk with no early exit vectorises.
#
# RMSprop and Adam first try a cheaper sufficient test that skips the square
# root and the divisions (they make the exact test compute-bound: Adam, 16k
# float32 values in L2, 7.1 vs 3.9 µs): their new p is p - x/d with x = lr·g'
# or step_size·m and d >= eps > 0 for a state value s in [0, max], so
# |new p| <= (|p| + |x|/eps)(1 + u)²; with the bound |p| + |x|·(1/eps) computed
# at most half_max = max/2 (a margin of 2 against every rounding) and s in
# [0, half_max], every new value is finite. A non-finite g makes x or s
# non-finite (c·±inf is ±inf or NaN, 0·inf is NaN), and `g - g` catches it
# anyway. NaN fails every comparison. A chunk with one element outside the
# test takes the exact test; inv_eps is +inf when 1/eps is not a finite
# positive value of the dtype, which sends every chunk there.
def _sure_finite(dtype, eps):
    """(1/eps, max/2) in dtype for the sufficient test above; 1/eps is +inf when it is not finite and > 0."""
    t = dtype.type
    eps = float(t(eps))
    top = float(np.finfo(dtype).max)
    inv_eps = 1.0 / eps if eps > 0 and 1.0 / eps <= top else math.inf
    return t(inv_eps), t(top / 2)


def _make_sgd(PARALLEL):
    def _sgd(p_all, g_all, v_all, lr, mu, nesterov, wd, f_all, a_all, lam, ewc, n_chunks, n_threads):
        """g' = g + wd·p; v := μ·v + g'; p -= lr·(g' + μ·v if nesterov else v).  IN/OUT p, v.

        Returns False, with nothing written, if g or a new p or v is not finite."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        n_bad = 0
        for c in prange(n_chunks):  # pass 1: check
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, v = p_all[lo:hi], g_all[lo:hi], v_all[lo:hi] if mu != 0 else v_all
            bad = False
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                nan = g[i] - g[i]
                if mu != 0:
                    vi = mu * v[i]
                    vi = vi + gi
                    gi = gi + mu * vi if nesterov else vi
                    nan += vi - vi
                pi = p[i] - lr * gi
                nan += pi - pi
                bad |= nan != nan
            if bad:
                n_bad += 1
        if n_bad:
            return False
        for c in prange(n_chunks):  # pass 2: write
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, v = p_all[lo:hi], g_all[lo:hi], v_all[lo:hi] if mu != 0 else v_all
            for i in range(hi - lo):  # from 0 on chunk views: no wraparound test, the loop vectorises
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                if mu != 0:
                    v[i] = mu * v[i]
                    v[i] = v[i] + gi
                    gi = gi + mu * v[i] if nesterov else v[i]
                p[i] = p[i] - lr * gi
        return True

    return _sgd


_SGD = _twins(_make_sgd)


def _make_rmsprop(PARALLEL):
    def _rmsprop(p_all, g_all, s_all, lr, rho, one_minus_rho, eps, inv_eps, half_max, wd, f_all, a_all, lam, ewc,
                 n_chunks, n_threads):
        """g' = g + wd·p; s := ρ·s + (1-ρ)·g'²; p -= lr·g' / (√s + eps).  IN/OUT p, s.

        Returns False, with nothing written, if g or a new p or s is not finite."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        n_bad = 0
        for c in prange(n_chunks):  # pass 1: check (see _sure_finite)
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, s = p_all[lo:hi], g_all[lo:hi], s_all[lo:hi]
            unsure = False
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                si = rho * s[i]
                si = si + one_minus_rho * gi * gi
                bound = abs(p[i]) + abs(lr * gi) * inv_eps + (g[i] - g[i])
                unsure |= not ((bound <= half_max) & (si >= 0) & (si <= half_max))
            if unsure:
                bad = False
                for i in range(hi - lo):
                    gi = g[i] + wd * p[i] if wd != 0 else g[i]
                    if ewc:
                        gi = gi + lam * (f[i] * (p[i] - a[i]))
                    si = rho * s[i]
                    si = si + one_minus_rho * gi * gi
                    pi = p[i] - lr * gi / (np.sqrt(si) + eps)
                    nan = (g[i] - g[i]) + (si - si) + (pi - pi)
                    bad |= nan != nan
                if bad:
                    n_bad += 1
        if n_bad:
            return False
        for c in prange(n_chunks):  # pass 2: write
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, s = p_all[lo:hi], g_all[lo:hi], s_all[lo:hi]
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                s[i] = rho * s[i]
                s[i] = s[i] + one_minus_rho * gi * gi
                p[i] = p[i] - lr * gi / (np.sqrt(s[i]) + eps)
        return True

    return _rmsprop


_RMSPROP = _twins(_make_rmsprop)


def _make_adam(PARALLEL):
    def _adam(p_all, g_all, m_all, v_all, step_size, beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2,
              eps, inv_eps, half_max, wd, f_all, a_all, lam, ewc, n_chunks, n_threads):
        """m := β1·m + (1-β1)·g'; v := β2·v + (1-β2)·g'²; p -= step_size·m / (√v/sqrt_bias2 + eps).  IN/OUT p, m, v.

        Returns False, with nothing written, if g or a new p, m or v is not finite."""
        if PARALLEL:
            set_threads(n_threads)
        n = p_all.shape[0]
        n_bad = 0
        for c in prange(n_chunks):  # pass 1: check (see _sure_finite)
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, m, v = p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi]
            unsure = False
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                mi = beta1 * m[i]
                mi = mi + one_minus_beta1 * gi
                vi = beta2 * v[i]
                vi = vi + one_minus_beta2 * gi * gi
                bound = abs(p[i]) + abs(step_size * mi) * inv_eps + (g[i] - g[i])
                unsure |= not ((bound <= half_max) & (vi >= 0) & (vi <= half_max))
            if unsure:
                bad = False
                for i in range(hi - lo):
                    gi = g[i] + wd * p[i] if wd != 0 else g[i]
                    if ewc:
                        gi = gi + lam * (f[i] * (p[i] - a[i]))
                    mi = beta1 * m[i]
                    mi = mi + one_minus_beta1 * gi
                    vi = beta2 * v[i]
                    vi = vi + one_minus_beta2 * gi * gi
                    pi = p[i] - (step_size * mi) / (np.sqrt(vi) / sqrt_bias2 + eps)
                    nan = (g[i] - g[i]) + (mi - mi) + (vi - vi) + (pi - pi)
                    bad |= nan != nan
                if bad:
                    n_bad += 1
        if n_bad:
            return False
        for c in prange(n_chunks):  # pass 2: write
            lo, hi = c * CHUNK, min(n, (c + 1) * CHUNK)
            f, a = (f_all[lo:hi], a_all[lo:hi]) if ewc else (f_all, a_all)
            p, g, m, v = p_all[lo:hi], g_all[lo:hi], m_all[lo:hi], v_all[lo:hi]
            for i in range(hi - lo):
                gi = g[i] + wd * p[i] if wd != 0 else g[i]
                if ewc:
                    gi = gi + lam * (f[i] * (p[i] - a[i]))
                m[i] = beta1 * m[i]
                m[i] = m[i] + one_minus_beta1 * gi
                v[i] = beta2 * v[i]
                v[i] = v[i] + one_minus_beta2 * gi * gi
                denom = np.sqrt(v[i]) / sqrt_bias2 + eps
                p[i] = p[i] - (step_size * m[i]) / denom
        return True

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


def _penalty(param, fisher, anchor, lam):
    """The kernels' (fisher, anchor, lam, ewc) arguments: EWC's penalty gradient lam·F·(p - anchor) is
    added to g after the weight decay; without fisher, empty views (one typed signature) and ewc False."""
    if fisher is None:
        return param[:0], param[:0], param.dtype.type(0), False
    n = param.shape[0]
    if anchor is None:
        raise ValueError("fisher needs an anchor")
    for name, arr in (("fisher", fisher), ("anchor", anchor)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} values, param has {n}")
    return writable(fisher), writable(anchor), param.dtype.type(lam), True


def sgd_step(param, grad, velocity, lr, momentum, nesterov, weight_decay, n_threads, fisher=None, anchor=None,
             lam=0.0):
    """g = grad + wd·p; v := μ·v + g; p -= lr·(g + μ·v if nesterov else v).  IN grad; IN/OUT param, velocity.

    Returns whether the step was applied: False, with nothing written, if grad or a new value is not finite.
    """
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    if velocity is None:  # unused without momentum; one typed argument keeps one compilation
        velocity = param[:0]
    return bool(_SGD[threads == 1](param, writable(grad), velocity, t(lr), t(momentum), bool(nesterov),
                                   t(weight_decay), *_penalty(param, fisher, anchor, lam), n_chunks, threads))


def rmsprop_step(param, grad, square_avg, lr, rho, eps, weight_decay, n_threads, fisher=None, anchor=None,
                 lam=0.0):
    """g = grad + wd·p; s := ρ·s + (1-ρ)·g²; p -= lr·g / (√s + eps).  IN grad; IN/OUT param, square_avg.

    Returns whether the step was applied (see sgd_step).
    """
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    inv_eps, half_max = _sure_finite(param.dtype, eps)
    return bool(_RMSPROP[threads == 1](param, writable(grad), square_avg, t(lr), t(rho), t(1 - rho), t(eps),
                                       inv_eps, half_max, t(weight_decay), *_penalty(param, fisher, anchor, lam),
                                       n_chunks, threads))


def adam_step(param, grad, exp_avg, exp_avg_sq, lr, beta1, beta2, eps, weight_decay, step, n_threads, fisher=None,
              anchor=None, lam=0.0):
    """Adam step t >= 1 with bias correction.  IN grad; IN/OUT param, exp_avg, exp_avg_sq.

    Returns whether the step was applied (see sgd_step).
    """
    t = param.dtype.type
    n_chunks, threads = _tasks(param.shape[0], n_threads)
    step_size = t(lr / (1 - beta1**step))
    sqrt_bias2 = t(math.sqrt(1 - beta2**step))
    inv_eps, half_max = _sure_finite(param.dtype, eps)
    return bool(_ADAM[threads == 1](param, writable(grad), exp_avg, exp_avg_sq, step_size, t(beta1), t(1 - beta1),
                                    t(beta2), t(1 - beta2), sqrt_bias2, t(eps), inv_eps, half_max, t(weight_decay),
                                    *_penalty(param, fisher, anchor, lam), n_chunks, threads))

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Optimizer steps on flat parameter buffers (torch.optim's rules), float32 and float64."""
# Design: every update is element-wise, so one nogil function updates a chunk
# [i0, i1) of the flat buffers and a static prange runs the chunks: no
# reduction, nothing depends on the thread count. Arithmetic is in the dtype
# of the parameters with the hyperparameters rounded to it, as the NumPy
# reference and torch do (Adam's denominator too, so its sqrt and divide
# vectorise). Layout: every buffer is a C-contiguous 1-D array of n values.
# Checked steps: a first pass computes the update into a small stack block
# (CHECK_BLOCK values at a time) without writing it and tests the gradient and
# the new values for NaN/inf (the bit test of all_finite); only if all are
# finite does the write pass run, so a failed step changes nothing. The two
# passes cost less than the parameter copy that undoing a step would need.

from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport sqrt, sqrtf, pow
from libc.stddef cimport ptrdiff_t

# Elements per task; below two chunks a step runs on the calling thread.
cdef Py_ssize_t CHUNK = 1 << 14
# all_finite reads ~50 GB/s on one thread: threads pay from this many chunks on.
cdef Py_ssize_t FINITE_PARALLEL_CHUNKS = 32
# Values of a new parameter (and state) block checked at once, on the stack.
DEF CHECK_BLOCK = 512


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef extern from "microkernels.h" nogil:
    int fastbp_nonfinite_s(const float* x, ptrdiff_t n)
    int fastbp_nonfinite_d(const double* x, ptrdiff_t n)


cdef inline bint _chunk_not_finite(const floating* x, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Whether x[i0:i1] holds a NaN or an infinity (an all-ones exponent field; see microkernels.h)."""
    if floating is float:
        return fastbp_nonfinite_s(x + i0, i1 - i0) != 0
    else:
        return fastbp_nonfinite_d(x + i0, i1 - i0) != 0


cdef void _sgd_chunk(floating* p, const floating* g, floating* v, Py_ssize_t i0, Py_ssize_t i1,
                     floating lr, floating mu, bint nesterov, floating wd) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(i0, i1):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        if mu != 0:
            v[i] = mu * v[i]
            v[i] = v[i] + gi
            gi = gi + mu * v[i] if nesterov else v[i]
        p[i] = p[i] - lr * gi


cdef void _rmsprop_chunk(floating* p, const floating* g, floating* s, Py_ssize_t i0, Py_ssize_t i1,
                         floating lr, floating rho, floating one_minus_rho, floating eps,
                         floating wd) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi
    for i in range(i0, i1):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        s[i] = rho * s[i]
        s[i] = s[i] + one_minus_rho * gi * gi
        p[i] = p[i] - lr * gi / (_sqrt(s[i]) + eps)


cdef void _adam_chunk(floating* p, const floating* g, floating* m, floating* v,
                      Py_ssize_t i0, Py_ssize_t i1, floating step_size, floating beta1,
                      floating one_minus_beta1, floating beta2, floating one_minus_beta2,
                      floating sqrt_bias2, floating eps, floating wd) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating gi, denom
    for i in range(i0, i1):
        gi = g[i] + wd * p[i] if wd != 0 else g[i]
        m[i] = beta1 * m[i]
        m[i] = m[i] + one_minus_beta1 * gi
        v[i] = beta2 * v[i]
        v[i] = v[i] + one_minus_beta2 * gi * gi
        denom = _sqrt(v[i]) / sqrt_bias2 + eps
        p[i] = p[i] - (step_size * m[i]) / denom


cdef bint _sgd_chunk_bad(const floating* p, const floating* g, const floating* v, Py_ssize_t i0,
                         Py_ssize_t i1, floating lr, floating mu, bint nesterov, floating wd) noexcept nogil:
    """Whether _sgd_chunk would meet or write a NaN/inf (nothing is written)."""
    cdef floating new_p[CHECK_BLOCK]
    cdef floating new_v[CHECK_BLOCK]
    cdef Py_ssize_t b, j, i, n
    cdef floating gi, vi
    for b in range(i0, i1, CHECK_BLOCK):
        n = min(<Py_ssize_t>CHECK_BLOCK, i1 - b)
        for j in range(n):
            i = b + j
            gi = g[i] + wd * p[i] if wd != 0 else g[i]
            if mu != 0:
                vi = mu * v[i]
                vi = vi + gi
                new_v[j] = vi
                gi = gi + mu * vi if nesterov else vi
            new_p[j] = p[i] - lr * gi
        if _chunk_not_finite(g, b, b + n) or _chunk_not_finite(new_p, 0, n) or \
                (mu != 0 and _chunk_not_finite(new_v, 0, n)):
            return True
    return False


cdef bint _rmsprop_chunk_bad(const floating* p, const floating* g, const floating* s, Py_ssize_t i0,
                             Py_ssize_t i1, floating lr, floating rho, floating one_minus_rho,
                             floating eps, floating wd) noexcept nogil:
    """Whether _rmsprop_chunk would meet or write a NaN/inf (nothing is written)."""
    cdef floating new_p[CHECK_BLOCK]
    cdef floating new_s[CHECK_BLOCK]
    cdef Py_ssize_t b, j, i, n
    cdef floating gi, si
    for b in range(i0, i1, CHECK_BLOCK):
        n = min(<Py_ssize_t>CHECK_BLOCK, i1 - b)
        for j in range(n):
            i = b + j
            gi = g[i] + wd * p[i] if wd != 0 else g[i]
            si = rho * s[i]
            si = si + one_minus_rho * gi * gi
            new_s[j] = si
            new_p[j] = p[i] - lr * gi / (_sqrt(si) + eps)
        if _chunk_not_finite(g, b, b + n) or _chunk_not_finite(new_p, 0, n) or \
                _chunk_not_finite(new_s, 0, n):
            return True
    return False


cdef bint _adam_chunk_bad(const floating* p, const floating* g, const floating* m, const floating* v,
                          Py_ssize_t i0, Py_ssize_t i1, floating step_size, floating beta1,
                          floating one_minus_beta1, floating beta2, floating one_minus_beta2,
                          floating sqrt_bias2, floating eps, floating wd) noexcept nogil:
    """Whether _adam_chunk would meet or write a NaN/inf (nothing is written)."""
    cdef floating new_p[CHECK_BLOCK]
    cdef floating new_m[CHECK_BLOCK]
    cdef floating new_v[CHECK_BLOCK]
    cdef Py_ssize_t b, j, i, n
    cdef floating gi, mi, vi, denom
    for b in range(i0, i1, CHECK_BLOCK):
        n = min(<Py_ssize_t>CHECK_BLOCK, i1 - b)
        for j in range(n):
            i = b + j
            gi = g[i] + wd * p[i] if wd != 0 else g[i]
            mi = beta1 * m[i]
            mi = mi + one_minus_beta1 * gi
            vi = beta2 * v[i]
            vi = vi + one_minus_beta2 * gi * gi
            denom = _sqrt(vi) / sqrt_bias2 + eps
            new_m[j] = mi
            new_v[j] = vi
            new_p[j] = p[i] - (step_size * mi) / denom
        if _chunk_not_finite(g, b, b + n) or _chunk_not_finite(new_p, 0, n) or \
                _chunk_not_finite(new_m, 0, n) or _chunk_not_finite(new_v, 0, n):
            return True
    return False


def all_finite(const floating[::1] x, int n_threads):
    """Whether every element of x is finite (no NaN, no ±inf).  IN x (n,)."""
    cdef Py_ssize_t n = x.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    cdef bint bad = False
    if n == 0:
        return True
    with nogil:
        if n_threads < 2 or n_chunks < FINITE_PARALLEL_CHUNKS:
            bad = _chunk_not_finite(&x[0], 0, n)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _chunk_not_finite(&x[0], c * CHUNK, min(n, (c + 1) * CHUNK))
    return not bad


def _check_len(str kernel, str name, Py_ssize_t got, Py_ssize_t n):
    if got != n:
        raise ValueError(f"{kernel}: {name} has {got} values, param has {n}")


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
             double lr, double momentum, bint nesterov, double weight_decay, int n_threads):
    """g = grad + wd·p; v := μ·v + g; p -= lr·(g + μ·v if nesterov else v)  (v unused when μ == 0).

    IN grad (n,); IN/OUT param (n,), velocity (n,) (may be None when μ == 0).
    Returns whether the step was applied: False, with nothing written, when grad or a new value
    is NaN or infinite.
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("sgd_step", "grad", grad.shape[0], n)
    if momentum != 0:
        if velocity is None:
            raise ValueError("sgd_step: momentum needs a velocity buffer")
        _check_len("sgd_step", "velocity", velocity.shape[0], n)
    if n == 0:
        return True
    cdef floating* pv = &velocity[0] if momentum != 0 else NULL
    cdef bint bad = False
    with nogil:
        if n_threads < 2 or n_chunks < 2:
            bad = _sgd_chunk_bad(&param[0], &grad[0], pv, 0, n, <floating>lr, <floating>momentum,
                                 nesterov, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _sgd_chunk_bad(&param[0], &grad[0], pv, c * CHUNK, min(n, (c + 1) * CHUNK),
                                      <floating>lr, <floating>momentum, nesterov, <floating>weight_decay)
        if bad:
            pass
        elif n_threads < 2 or n_chunks < 2:
            _sgd_chunk(&param[0], &grad[0], pv, 0, n, <floating>lr, <floating>momentum,
                       nesterov, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _sgd_chunk(&param[0], &grad[0], pv, c * CHUNK, min(n, (c + 1) * CHUNK),
                           <floating>lr, <floating>momentum, nesterov, <floating>weight_decay)
    return not bad


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                 double lr, double rho, double eps, double weight_decay, int n_threads):
    """g = grad + wd·p; s := ρ·s + (1-ρ)·g²; p -= lr·g / (√s + eps).  IN grad; IN/OUT param, square_avg.

    Returns whether the step was applied (see sgd_step).
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("rmsprop_step", "grad", grad.shape[0], n)
    _check_len("rmsprop_step", "square_avg", square_avg.shape[0], n)
    if n == 0:
        return True
    cdef bint bad = False
    with nogil:
        if n_threads < 2 or n_chunks < 2:
            bad = _rmsprop_chunk_bad(&param[0], &grad[0], &square_avg[0], 0, n, <floating>lr, <floating>rho,
                                     <floating>(1 - rho), <floating>eps, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _rmsprop_chunk_bad(&param[0], &grad[0], &square_avg[0], c * CHUNK,
                                          min(n, (c + 1) * CHUNK), <floating>lr, <floating>rho,
                                          <floating>(1 - rho), <floating>eps, <floating>weight_decay)
        if bad:
            pass
        elif n_threads < 2 or n_chunks < 2:
            _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], 0, n, <floating>lr, <floating>rho,
                           <floating>(1 - rho), <floating>eps, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], c * CHUNK, min(n, (c + 1) * CHUNK),
                               <floating>lr, <floating>rho, <floating>(1 - rho), <floating>eps,
                               <floating>weight_decay)
    return not bad


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, double lr, double beta1, double beta2, double eps,
              double weight_decay, long step, int n_threads):
    """Adam step t >= 1: g = grad + wd·p; m := β1·m + (1-β1)·g; v := β2·v + (1-β2)·g²;
    p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps).   IN grad; IN/OUT param, exp_avg, exp_avg_sq.
    Returns whether the step was applied (see sgd_step).
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("adam_step", "grad", grad.shape[0], n)
    _check_len("adam_step", "exp_avg", exp_avg.shape[0], n)
    _check_len("adam_step", "exp_avg_sq", exp_avg_sq.shape[0], n)
    if step < 1:
        raise ValueError(f"adam_step: step must be >= 1, got {step}")
    if n == 0:
        return True
    cdef floating step_size = <floating>(lr / (1 - pow(beta1, <double>step)))
    cdef floating sqrt_bias2 = <floating>sqrt(1 - pow(beta2, <double>step))
    cdef bint bad = False
    with nogil:
        if n_threads < 2 or n_chunks < 2:
            bad = _adam_chunk_bad(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], 0, n, step_size,
                                  <floating>beta1, <floating>(1 - beta1), <floating>beta2,
                                  <floating>(1 - beta2), sqrt_bias2, <floating>eps, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _adam_chunk_bad(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], c * CHUNK,
                                       min(n, (c + 1) * CHUNK), step_size, <floating>beta1,
                                       <floating>(1 - beta1), <floating>beta2, <floating>(1 - beta2),
                                       sqrt_bias2, <floating>eps, <floating>weight_decay)
        if bad:
            pass
        elif n_threads < 2 or n_chunks < 2:
            _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], 0, n, step_size,
                        <floating>beta1, <floating>(1 - beta1), <floating>beta2, <floating>(1 - beta2),
                        sqrt_bias2, <floating>eps, <floating>weight_decay)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], c * CHUNK,
                            min(n, (c + 1) * CHUNK), step_size, <floating>beta1, <floating>(1 - beta1),
                            <floating>beta2, <floating>(1 - beta2), sqrt_bias2, <floating>eps,
                            <floating>weight_decay)
    return not bad

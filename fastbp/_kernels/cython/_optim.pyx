# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Optimizer steps on flat parameter buffers (torch.optim's rules), float32 and float64."""
# Design: every update is element-wise, so one nogil function updates a chunk
# [i0, i1) of the flat buffers and a static prange runs the chunks: no
# reduction, nothing depends on the thread count. Arithmetic is in the dtype
# of the parameters with the hyperparameters rounded to it, as the NumPy
# reference and torch do (Adam's denominator too, so its sqrt and divide
# vectorise). Layout: every buffer is a C-contiguous 1-D array of n values.
# Checked steps: a first pass computes the update without writing it and tests
# the gradient and the new values for NaN/inf; only if all are finite does the
# write pass run, so a failed step changes nothing. The two passes cost less
# than the parameter copy that undoing a step would need. The loops are in
# optimizer_steps.h, with AVX-512/AVX2 clones.
# EWC: each step optionally takes (fisher, anchor, lam) and adds the penalty's
# gradient lam·fisher·(param - anchor) to g after the weight decay (None: none).

from cython.parallel cimport prange

from fastbp._kernels.cython._threads cimport backing_off
from cython cimport floating
from libc.math cimport sqrt, pow
from libc.stddef cimport ptrdiff_t

# Elements per task.
cdef Py_ssize_t CHUNK = 1 << 14
# Below this many values a step runs on the calling thread (blocking.py's
# OPTIMIZER_PARALLEL_MIN_VALUES, set by _configure_threads).
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 17
# all_finite reads ~50 GB/s on one thread: threads pay from this many chunks on.
cdef Py_ssize_t FINITE_PARALLEL_CHUNKS = 32


cdef inline bint _serial(Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads < 2 or n < PARALLEL_MIN_VALUES or n <= CHUNK or backing_off()


def _configure_threads(Py_ssize_t parallel_min_values):
    """Set blocking.OPTIMIZER_PARALLEL_MIN_VALUES: steps on fewer values run on one thread."""
    global PARALLEL_MIN_VALUES
    PARALLEL_MIN_VALUES = parallel_min_values


cdef extern from "microkernels.h" nogil:
    int fastbp_nonfinite_s(const float* x, ptrdiff_t n)
    int fastbp_nonfinite_d(const double* x, ptrdiff_t n)


cdef inline bint _chunk_not_finite(const floating* x, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Whether x[i0:i1] holds a NaN or an infinity (an all-ones exponent field; see microkernels.h)."""
    if floating is float:
        return fastbp_nonfinite_s(x + i0, i1 - i0) != 0
    else:
        return fastbp_nonfinite_d(x + i0, i1 - i0) != 0


cdef extern from "optimizer_steps.h" nogil:
    int fastbp_sgd_s(float* p, const float* g, float* v, ptrdiff_t n, float lr, float mu,
                     int nesterov, float wd, const float* f, const float* a, float lam, int write)
    int fastbp_sgd_d(double* p, const double* g, double* v, ptrdiff_t n, double lr, double mu,
                     int nesterov, double wd, const double* f, const double* a, double lam,
                     int write)
    int fastbp_rmsprop_s(float* p, const float* g, float* s, ptrdiff_t n, float lr, float rho,
                         float one_minus_rho, float eps, float wd, const float* f, const float* a,
                         float lam, int write)
    int fastbp_rmsprop_d(double* p, const double* g, double* s, ptrdiff_t n, double lr, double rho,
                         double one_minus_rho, double eps, double wd, const double* f,
                         const double* a, double lam, int write)
    int fastbp_adam_s(float* p, const float* g, float* m, float* v, ptrdiff_t n, float step_size,
                      float beta1, float one_minus_beta1, float beta2, float one_minus_beta2,
                      float sqrt_bias2, float eps, float wd, const float* f, const float* a, float lam,
                      int write)
    int fastbp_adam_d(double* p, const double* g, double* m, double* v, ptrdiff_t n, double step_size,
                      double beta1, double one_minus_beta1, double beta2, double one_minus_beta2,
                      double sqrt_bias2, double eps, double wd, const double* f, const double* a,
                      double lam, int write)


# Each chunk function runs optimizer_steps.h's update on [i0, i1): write == 0
# returns whether a NaN/inf would be met or written (nothing stored), write == 1 stores.
cdef inline bint _sgd_chunk(floating* p, const floating* g, floating* v, Py_ssize_t i0, Py_ssize_t i1,
                            floating lr, floating mu, bint nesterov, floating wd, const floating* f,
                            const floating* a, floating lam, bint write) noexcept nogil:
    cdef floating* vc = v + i0 if v != NULL else NULL
    cdef const floating* fc = f + i0 if f != NULL else NULL
    cdef const floating* ac = a + i0 if f != NULL else NULL
    if floating is float:
        return fastbp_sgd_s(p + i0, g + i0, vc, i1 - i0, lr, mu, nesterov, wd, fc, ac, lam, write) != 0
    else:
        return fastbp_sgd_d(p + i0, g + i0, vc, i1 - i0, lr, mu, nesterov, wd, fc, ac, lam, write) != 0


cdef inline bint _rmsprop_chunk(floating* p, const floating* g, floating* s, Py_ssize_t i0, Py_ssize_t i1,
                                floating lr, floating rho, floating one_minus_rho, floating eps,
                                floating wd, const floating* f, const floating* a, floating lam,
                                bint write) noexcept nogil:
    cdef const floating* fc = f + i0 if f != NULL else NULL
    cdef const floating* ac = a + i0 if f != NULL else NULL
    if floating is float:
        return fastbp_rmsprop_s(p + i0, g + i0, s + i0, i1 - i0, lr, rho, one_minus_rho, eps, wd,
                                fc, ac, lam, write) != 0
    else:
        return fastbp_rmsprop_d(p + i0, g + i0, s + i0, i1 - i0, lr, rho, one_minus_rho, eps, wd,
                                fc, ac, lam, write) != 0


cdef inline bint _adam_chunk(floating* p, const floating* g, floating* m, floating* v,
                             Py_ssize_t i0, Py_ssize_t i1, floating step_size, floating beta1,
                             floating one_minus_beta1, floating beta2, floating one_minus_beta2,
                             floating sqrt_bias2, floating eps, floating wd, const floating* f,
                             const floating* a, floating lam, bint write) noexcept nogil:
    cdef const floating* fc = f + i0 if f != NULL else NULL
    cdef const floating* ac = a + i0 if f != NULL else NULL
    if floating is float:
        return fastbp_adam_s(p + i0, g + i0, m + i0, v + i0, i1 - i0, step_size, beta1, one_minus_beta1,
                             beta2, one_minus_beta2, sqrt_bias2, eps, wd, fc, ac, lam, write) != 0
    else:
        return fastbp_adam_d(p + i0, g + i0, m + i0, v + i0, i1 - i0, step_size, beta1, one_minus_beta1,
                             beta2, one_minus_beta2, sqrt_bias2, eps, wd, fc, ac, lam, write) != 0


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


def _check_penalty(str kernel, fisher, anchor, Py_ssize_t n):
    """The EWC pair: fisher and anchor both given, n values each (lam is the caller's)."""
    if anchor is None:
        raise ValueError(f"{kernel}: fisher needs an anchor")
    _check_len(kernel, "fisher", fisher.shape[0], n)
    _check_len(kernel, "anchor", anchor.shape[0], n)


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
             double lr, double momentum, bint nesterov, double weight_decay, int n_threads,
             const floating[::1] fisher=None, const floating[::1] anchor=None, double lam=0.0):
    """g = grad + wd·p; v := μ·v + g; p -= lr·(g + μ·v if nesterov else v)  (v unused when μ == 0).

    IN grad (n,); IN/OUT param (n,), velocity (n,) (may be None when μ == 0).
    Returns whether the step was applied: False, with nothing written, when grad or a new value
    is NaN or infinite.
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("sgd_step", "grad", grad.shape[0], n)
    cdef const floating* pf = NULL
    cdef const floating* pa = NULL
    if fisher is not None:
        _check_penalty("sgd_step", fisher, anchor, n)
        if n > 0:
            pf, pa = &fisher[0], &anchor[0]
    if momentum != 0:
        if velocity is None:
            raise ValueError("sgd_step: momentum needs a velocity buffer")
        _check_len("sgd_step", "velocity", velocity.shape[0], n)
    if n == 0:
        return True
    cdef floating* pv = &velocity[0] if momentum != 0 else NULL
    cdef bint bad = False
    with nogil:
        if _serial(n, n_threads):
            bad = _sgd_chunk(&param[0], &grad[0], pv, 0, n, <floating>lr, <floating>momentum,
                                 nesterov, <floating>weight_decay, pf, pa, <floating>lam, False)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _sgd_chunk(&param[0], &grad[0], pv, c * CHUNK, min(n, (c + 1) * CHUNK),
                                      <floating>lr, <floating>momentum, nesterov, <floating>weight_decay, pf, pa, <floating>lam, False)
        if bad:
            pass
        elif _serial(n, n_threads):
            _sgd_chunk(&param[0], &grad[0], pv, 0, n, <floating>lr, <floating>momentum,
                       nesterov, <floating>weight_decay, pf, pa, <floating>lam, True)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _sgd_chunk(&param[0], &grad[0], pv, c * CHUNK, min(n, (c + 1) * CHUNK),
                           <floating>lr, <floating>momentum, nesterov, <floating>weight_decay, pf, pa, <floating>lam, True)
    return not bad


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] square_avg,
                 double lr, double rho, double eps, double weight_decay, int n_threads,
                 const floating[::1] fisher=None, const floating[::1] anchor=None, double lam=0.0):
    """g = grad + wd·p; s := ρ·s + (1-ρ)·g²; p -= lr·g / (√s + eps).  IN grad; IN/OUT param, square_avg.

    Returns whether the step was applied (see sgd_step).
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("rmsprop_step", "grad", grad.shape[0], n)
    cdef const floating* pf = NULL
    cdef const floating* pa = NULL
    if fisher is not None:
        _check_penalty("rmsprop_step", fisher, anchor, n)
        if n > 0:
            pf, pa = &fisher[0], &anchor[0]
    _check_len("rmsprop_step", "square_avg", square_avg.shape[0], n)
    if n == 0:
        return True
    cdef bint bad = False
    with nogil:
        if _serial(n, n_threads):
            bad = _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], 0, n, <floating>lr, <floating>rho,
                                     <floating>(1 - rho), <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, False)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], c * CHUNK,
                                          min(n, (c + 1) * CHUNK), <floating>lr, <floating>rho,
                                          <floating>(1 - rho), <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, False)
        if bad:
            pass
        elif _serial(n, n_threads):
            _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], 0, n, <floating>lr, <floating>rho,
                           <floating>(1 - rho), <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, True)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _rmsprop_chunk(&param[0], &grad[0], &square_avg[0], c * CHUNK, min(n, (c + 1) * CHUNK),
                               <floating>lr, <floating>rho, <floating>(1 - rho), <floating>eps,
                               <floating>weight_decay, pf, pa, <floating>lam, True)
    return not bad


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] exp_avg,
              floating[::1] exp_avg_sq, double lr, double beta1, double beta2, double eps,
              double weight_decay, long step, int n_threads,
              const floating[::1] fisher=None, const floating[::1] anchor=None, double lam=0.0):
    """Adam step t >= 1: g = grad + wd·p; m := β1·m + (1-β1)·g; v := β2·v + (1-β2)·g²;
    p -= lr/(1-β1^t) · m / (√v/√(1-β2^t) + eps).   IN grad; IN/OUT param, exp_avg, exp_avg_sq.
    Returns whether the step was applied (see sgd_step).
    """
    cdef Py_ssize_t n = param.shape[0], c, n_chunks = (n + CHUNK - 1) // CHUNK
    _check_len("adam_step", "grad", grad.shape[0], n)
    cdef const floating* pf = NULL
    cdef const floating* pa = NULL
    if fisher is not None:
        _check_penalty("adam_step", fisher, anchor, n)
        if n > 0:
            pf, pa = &fisher[0], &anchor[0]
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
        if _serial(n, n_threads):
            bad = _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], 0, n, step_size,
                                  <floating>beta1, <floating>(1 - beta1), <floating>beta2,
                                  <floating>(1 - beta2), sqrt_bias2, <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, False)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                bad |= _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], c * CHUNK,
                                       min(n, (c + 1) * CHUNK), step_size, <floating>beta1,
                                       <floating>(1 - beta1), <floating>beta2, <floating>(1 - beta2),
                                       sqrt_bias2, <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, False)
        if bad:
            pass
        elif _serial(n, n_threads):
            _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], 0, n, step_size,
                        <floating>beta1, <floating>(1 - beta1), <floating>beta2, <floating>(1 - beta2),
                        sqrt_bias2, <floating>eps, <floating>weight_decay, pf, pa, <floating>lam, True)
        else:
            for c in prange(n_chunks, schedule="static", num_threads=n_threads):
                _adam_chunk(&param[0], &grad[0], &exp_avg[0], &exp_avg_sq[0], c * CHUNK,
                            min(n, (c + 1) * CHUNK), step_size, <floating>beta1, <floating>(1 - beta1),
                            <floating>beta2, <floating>(1 - beta2), sqrt_bias2, <floating>eps,
                            <floating>weight_decay, pf, pa, <floating>lam, True)
    return not bad

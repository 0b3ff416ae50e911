# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Losses and their gradients, float32 and float64: each returns the loss as a
Python float (accumulated in float64) and writes d loss / d output into grad."""
# Design: one nogil function per row writes that row's gradient and returns
# its partial sum (in double); loss_nogil, the one driver of every loss, fills
# a buffer of partial sums with a static prange over rows and adds it serially
# in row order, so the loss does not depend on the thread count. Logits are handled in double with the row
# max subtracted (log-sum-exp) and the two-branch sigmoid: no overflow for
# any finite input. Layout: every 2-D array is C-contiguous (m, n).
# The partial sums live on the stack up to STACK_ROWS rows (malloc'd beyond):
# a per-call NumPy array and its memoryview cost ~2 us, more than a small loss.
# Loss ids are registry.LOSS_KERNELS' (checked at import by __init__).

from cython.parallel cimport prange

from fastbp._kernels.cython._threads cimport backing_off
from cython cimport floating
from libc.math cimport exp, log, log1p, fabs
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

# Below this many elements a loss runs on the calling thread.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 15
# Rows whose partial sums fit the stack buffer.
DEF STACK_ROWS = 1024
# Classes per row whose exponentials softmax_cross_entropy_index keeps on the stack.
DEF EXP_ROW = 256


cdef double _mse_row(const floating* o, const floating* t, floating* g,
                     Py_ssize_t n, double size) noexcept nogil:
    """g := 2(o - t)/N; return Σ (o - t)²."""
    cdef Py_ssize_t j
    cdef double diff, s = 0.0
    for j in range(n):
        diff = <double>o[j] - <double>t[j]
        g[j] = <floating>(2.0 * diff / size)
        s += diff * diff
    return s


cdef inline double _log_sum_exp_shift(const floating* z, Py_ssize_t n, double* mx) noexcept nogil:
    """Return log Σ exp(z - max z) and set mx = max z (in double)."""
    cdef Py_ssize_t j
    cdef double m = z[0], s = 0.0
    for j in range(1, n):
        if z[j] > m:
            m = z[j]
    for j in range(n):
        s += exp(<double>z[j] - m)
    mx[0] = m
    return log(s)


cdef double _softmax_ce_row(const floating* z, const floating* t, floating* g,
                            Py_ssize_t n, double m_rows) noexcept nogil:
    """g := (softmax(z)·Σt - t)/m; return Σ t·log softmax(z)."""
    cdef Py_ssize_t j
    cdef double mx, lse, logp, t_sum = 0.0, s = 0.0
    lse = _log_sum_exp_shift(z, n, &mx)
    for j in range(n):
        t_sum += t[j]
    for j in range(n):
        logp = (<double>z[j] - mx) - lse
        g[j] = <floating>((exp(logp) * t_sum - t[j]) / m_rows)
        s += t[j] * logp
    return s


cdef double _softmax_ce_index_row(const floating* z, int64_t label, floating* g,
                                  Py_ssize_t n, double m_rows) noexcept nogil:
    """g := (softmax(z) - onehot(label))/m; return log softmax(z)[label].

    Rows of up to EXP_ROW values keep exp(z - max) from the log-sum-exp pass
    (one exp per element instead of two: exp is most of this kernel's time).
    """
    cdef Py_ssize_t j
    cdef double mx, lse, s, p
    cdef double e[EXP_ROW]
    if n > EXP_ROW:
        lse = _log_sum_exp_shift(z, n, &mx)
        for j in range(n):
            p = exp((<double>z[j] - mx) - lse)
            g[j] = <floating>(((p - 1.0) if j == label else p) / m_rows)
        return (<double>z[label] - mx) - lse
    mx = z[0]
    for j in range(1, n):
        if z[j] > mx:
            mx = z[j]
    s = 0.0
    for j in range(n):
        e[j] = exp(<double>z[j] - mx)
        s += e[j]
    cdef double scale = 1.0 / (s * m_rows)
    for j in range(n):
        g[j] = <floating>(e[j] * scale)
    g[label] = <floating>((e[label] / s - 1.0) / m_rows)
    return (<double>z[label] - mx) - log(s)


cdef double _bce_row(const floating* z, const floating* y, floating* g,
                     Py_ssize_t n, double size) noexcept nogil:
    """g := (sigmoid(z) - y)/N; return Σ max(z, 0) - z·y + log1p(exp(-|z|))."""
    cdef Py_ssize_t j
    cdef double v, e, sig, s = 0.0
    for j in range(n):
        v = z[j]
        e = exp(-fabs(v))
        sig = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)
        g[j] = <floating>((sig - y[j]) / size)
        s += (v if v > 0 else 0.0) - v * y[j] + log1p(e)
    return s


cdef inline bint _serial(Py_ssize_t m, Py_ssize_t n, int n_threads) noexcept nogil:
    return n_threads < 2 or m < 2 or m * n < PARALLEL_MIN_ELEMENTS or backing_off()


cdef inline double _row(int loss, const floating* o, const floating* t, const int64_t* labels,
                        floating* g, Py_ssize_t i, Py_ssize_t m, Py_ssize_t n) noexcept nogil:
    """Row i's gradient into g (offset to the row by the caller) and its partial sum."""
    if loss == LOSS_SOFTMAX_CROSS_ENTROPY_INDEX:
        return _softmax_ce_index_row(o, labels[i], g, n, <double>m)
    if loss == LOSS_SOFTMAX_CROSS_ENTROPY:
        return _softmax_ce_row(o, t, g, n, <double>m)
    if loss == LOSS_BINARY_CROSS_ENTROPY:
        return _bce_row(o, t, g, n, <double>m * n)
    return _mse_row(o, t, g, n, <double>m * n)


cdef int loss_nogil(int loss, const floating* output, const floating* target, const int64_t* labels,
                    floating* grad, Py_ssize_t m, Py_ssize_t n, int n_threads,
                    double* value) noexcept nogil:
    """Loss ``loss`` of output (m, n) against target (m, n) rows or labels (m,): its value into
    value[0] and d loss/d output into grad (m, n). Returns 0, or -1 when the partial sums
    of more than STACK_ROWS rows cannot be allocated. m, n >= 1; labels in [0, n)."""
    cdef double stack[STACK_ROWS]
    cdef double* partial = stack
    cdef double total = 0.0
    cdef Py_ssize_t i
    cdef const floating* t
    if m > STACK_ROWS:
        partial = <double*>malloc(m * sizeof(double))
        if partial == NULL:
            return -1
    if _serial(m, n, n_threads):
        for i in range(m):
            t = target + i * n if target != NULL else NULL
            partial[i] = _row(loss, output + i * n, t, labels, grad + i * n, i, m, n)
    else:
        for i in prange(m, schedule="static", num_threads=n_threads):
            partial[i] = _row(loss, output + i * n, target + i * n if target != NULL else NULL,
                              labels, grad + i * n, i, m, n)
    for i in range(m):
        total += partial[i]
    if partial != stack:
        free(partial)
    if loss == LOSS_MSE or loss == LOSS_BINARY_CROSS_ENTROPY:
        value[0] = total / (<double>m * n)
    else:
        value[0] = -total / <double>m
    return 0


cdef inline int _check_same_shape(str kernel, Py_ssize_t* output, Py_ssize_t* other, str name) except -1:
    """Shapes compared as C integers: a memoryview passed to a Python function would be boxed (~0.5 us)."""
    if output[0] != other[0] or output[1] != other[1]:
        raise ValueError(f"{kernel}: {name} has shape {(other[0], other[1])}, "
                         f"expected that of output {(output[0], output[1])}")
    return 0


cdef inline int _check_not_empty(str kernel, Py_ssize_t m, Py_ssize_t n) except -1:
    if m == 0 or n == 0:
        raise ValueError(f"{kernel}: output must not be empty, got shape {(m, n)}")
    return 0


cdef int check_labels(str kernel, const int64_t* labels, Py_ssize_t m, Py_ssize_t n) except -1:
    cdef Py_ssize_t i
    for i in range(m):
        if labels[i] < 0 or labels[i] >= n:
            raise ValueError(f"{kernel}: label {labels[i]} of row {i} is not in [0, {n})")
    return 0


cdef double _float_target_loss(str kernel, int loss, const floating[:, ::1] output,
                               const floating[:, ::1] target, floating[:, ::1] grad,
                               int n_threads) except? -1.0:
    _check_same_shape(kernel, output.shape, target.shape, "target")
    _check_same_shape(kernel, output.shape, grad.shape, "grad")
    cdef Py_ssize_t m = output.shape[0], n = output.shape[1]
    _check_not_empty(kernel, m, n)
    cdef double value
    cdef int status
    with nogil:
        status = loss_nogil(loss, &output[0, 0], &target[0, 0], NULL, &grad[0, 0], m, n, n_threads, &value)
    if status != 0:
        raise MemoryError(f"{kernel}: cannot allocate {m} partial sums")
    return value


def mse(const floating[:, ::1] output, const floating[:, ::1] target,
        floating[:, ::1] grad, int n_threads):
    """mean((output - target)²); grad := 2(output - target)/N.  IN output, target (m, n); OUT grad (m, n)."""
    return _float_target_loss("mse", LOSS_MSE, output, target, grad, n_threads)


def softmax_cross_entropy(const floating[:, ::1] logits, const floating[:, ::1] target,
                          floating[:, ::1] grad, int n_threads):
    """-Σ target·log softmax(logits) / m; grad := (softmax(logits)·Σ_j target - target)/m.

    IN logits, target (m, n) probability rows; OUT grad (m, n).
    """
    return _float_target_loss("softmax_cross_entropy", LOSS_SOFTMAX_CROSS_ENTROPY,
                              logits, target, grad, n_threads)


def softmax_cross_entropy_index(const floating[:, ::1] logits, const int64_t[::1] labels,
                                floating[:, ::1] grad, int n_threads):
    """-Σ_i log softmax(logits)[i, labels[i]] / m; grad := (softmax(logits) - onehot(labels))/m.

    IN logits (m, n), labels (m,) int64 in [0, n); OUT grad (m, n).
    """
    _check_same_shape("softmax_cross_entropy_index", logits.shape, grad.shape, "grad")
    cdef Py_ssize_t m = logits.shape[0], n = logits.shape[1]
    if labels.shape[0] != m:
        raise ValueError(f"softmax_cross_entropy_index: {labels.shape[0]} labels for {m} rows")
    _check_not_empty("softmax_cross_entropy_index", m, n)
    check_labels("softmax_cross_entropy_index", &labels[0], m, n)
    cdef double value
    cdef int status
    with nogil:
        status = loss_nogil(LOSS_SOFTMAX_CROSS_ENTROPY_INDEX, &logits[0, 0], NULL, &labels[0],
                            &grad[0, 0], m, n, n_threads, &value)
    if status != 0:
        raise MemoryError(f"softmax_cross_entropy_index: cannot allocate {m} partial sums")
    return value


def binary_cross_entropy(const floating[:, ::1] logits, const floating[:, ::1] target,
                         floating[:, ::1] grad, int n_threads):
    """mean(max(z, 0) - z·y + log(1 + exp(-|z|))); grad := (sigmoid(z) - y)/N.

    IN logits z, target y (m, n); OUT grad (m, n).
    """
    return _float_target_loss("binary_cross_entropy", LOSS_BINARY_CROSS_ENTROPY,
                              logits, target, grad, n_threads)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Activations and their derivatives, float32 and float64 (the ``floating`` fused type)."""
# Design: one pointer-level nogil function per row (act_row, softmax_row,
# act_grad_row), with the switch on the activation id outside the element loop;
# row-parallel drivers run them over a C-contiguous (m, n) array with a static
# prange, so each row is written by one thread and nothing depends on the
# thread count. The dense layer's GEMM epilogue calls act_row on each tile row.
# Every formula only exponentiates non-positive arguments (two-branch sigmoid,
# softplus = max(z, 0) + log1p(exp(-|z|)), elu via expm1 of z <= 0, softmax
# with the row max subtracted): finite for every finite input, NaN propagates.
# float32 uses the float32 libm functions, except gelu, evaluated in float64.

from cython.parallel cimport prange
from libc.math cimport (exp, expf, expm1, expm1f, log1p, log1pf, tanh, tanhf,
                        erf, fabs, fabsf, sqrt, M_PI)


# Below this many elements a kernel runs on the calling thread (no thread start-up).
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 15


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _expm1(floating x) noexcept nogil:
    if floating is float:
        return expm1f(x)
    else:
        return expm1(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


# _tanh_rational (float32 tanh, branch-free) is defined in _activations.pxd: the gated
# recurrent kernels (_gated.pyx) inline it too.


cdef inline floating _tanh(floating x) noexcept nogil:
    if floating is float:
        return _tanh_rational(x)
    else:
        return tanh(x)


cdef inline floating _fabs(floating x) noexcept nogil:
    if floating is float:
        return fabsf(x)
    else:
        return fabs(x)


cdef inline floating _sigmoid(floating z) noexcept nogil:
    """1/(1 + exp(-z)), exponentiating -|z| only."""
    cdef floating e = _exp(-_fabs(z))
    if z >= 0:
        return 1 / (1 + e)
    return e / (1 + e)


cdef void act_row(int act, const floating* z, floating* a, Py_ssize_t n) noexcept nogil:
    """a := act(z) element-wise.  IN z (n,); OUT a (n,), may alias z."""
    cdef Py_ssize_t j
    cdef floating v
    cdef floating slope = <floating>0.01  # registry.LEAKY_RELU_SLOPE, in the dtype
    cdef double zd
    if act == ACT_IDENTITY:
        if a != z:
            for j in range(n):
                a[j] = z[j]
    elif act == ACT_STEP:
        for j in range(n):
            a[j] = 1 if z[j] > 0 else 0
    elif act == ACT_HARDTANH:
        for j in range(n):
            v = z[j]
            a[j] = -1 if v < -1 else (1 if v > 1 else v)
    elif act == ACT_SIGMOID:
        for j in range(n):
            a[j] = _sigmoid(z[j])
    elif act == ACT_TANH:
        for j in range(n):
            a[j] = _tanh(z[j])
    elif act == ACT_RELU:
        for j in range(n):
            v = z[j]
            a[j] = 0 if v < 0 else v  # NaN stays NaN
    elif act == ACT_LEAKY_RELU:
        for j in range(n):
            v = z[j]
            a[j] = v if v > 0 else v * slope
    elif act == ACT_ELU:
        for j in range(n):
            v = z[j]
            a[j] = v if v > 0 else _expm1(v)  # alpha = 1
    elif act == ACT_SOFTPLUS:
        for j in range(n):
            v = z[j]
            a[j] = (v if v > 0 else 0) + _log1p(_exp(-_fabs(v)))
    elif act == ACT_GELU:
        for j in range(n):
            zd = z[j]
            a[j] = <floating>(0.5 * zd * (1.0 + erf(zd / sqrt(2.0))))


cdef void softmax_row(const floating* z, floating* a, Py_ssize_t n) noexcept nogil:
    """a := exp(z - max z) / Σ exp(z - max z).  IN z (n,); OUT a (n,), may alias z."""
    cdef Py_ssize_t j
    cdef floating mx = z[0], e
    cdef double total = 0.0
    for j in range(1, n):
        if z[j] > mx:
            mx = z[j]
    for j in range(n):
        e = _exp(z[j] - mx)
        a[j] = e
        total += e
    cdef floating denom = <floating>total
    for j in range(n):
        a[j] = a[j] / denom


cdef void act_grad_row(int act, const floating* z, const floating* a, const floating* g,
                       floating* gz, Py_ssize_t n) noexcept nogil:
    """gz := g ⊙ act'(z), act' computed from a (gelu: from z); softmax: a ⊙ (g - Σ g⊙a).

    IN z, a, g (n,); OUT gz (n,), may alias g.
    """
    cdef Py_ssize_t j
    cdef floating v, one = 1, zero = 0
    cdef floating slope = <floating>0.01
    cdef double zd, dot, pdf, cdf
    cdef double inv_sqrt_2pi = 1.0 / sqrt(2.0 * M_PI)
    if act == ACT_IDENTITY:
        if gz != g:
            for j in range(n):
                gz[j] = g[j]
    elif act == ACT_STEP:
        for j in range(n):
            gz[j] = g[j] * zero  # NaN in g stays NaN, as g*0 in the reference
    elif act == ACT_HARDTANH:
        for j in range(n):
            v = a[j]
            gz[j] = g[j] * (one if (v > -1 and v < 1) else zero)
    elif act == ACT_SIGMOID:
        for j in range(n):
            v = a[j]
            gz[j] = g[j] * (v * (1 - v))
    elif act == ACT_TANH:
        for j in range(n):
            v = a[j]
            gz[j] = g[j] * (1 - v * v)
    elif act == ACT_RELU:
        for j in range(n):
            gz[j] = g[j] * (one if a[j] > 0 else zero)
    elif act == ACT_LEAKY_RELU:
        for j in range(n):
            gz[j] = g[j] * (one if a[j] > 0 else slope)
    elif act == ACT_ELU:
        for j in range(n):
            v = a[j]
            gz[j] = g[j] * (one if v > 0 else v + 1)
    elif act == ACT_SOFTPLUS:
        for j in range(n):
            gz[j] = g[j] * (-_expm1(-a[j]))  # sigmoid(z) = 1 - exp(-softplus(z))
    elif act == ACT_GELU:
        for j in range(n):
            zd = z[j]
            pdf = exp(-0.5 * zd * zd) * inv_sqrt_2pi
            cdf = 0.5 * (1.0 + erf(zd / sqrt(2.0)))
            gz[j] = g[j] * <floating>(cdf + zd * pdf)
    elif act == ACT_SOFTMAX:
        dot = 0.0
        for j in range(n):
            dot += <double>g[j] * a[j]
        v = <floating>dot
        for j in range(n):
            gz[j] = a[j] * (g[j] - v)


cdef void activation_forward_nogil(int act, const floating* z, floating* a,
                                   Py_ssize_t m, Py_ssize_t n, int n_threads) noexcept nogil:
    """a := act(z) row by row.  IN z (m, n) C-contiguous; OUT a (m, n), may alias z."""
    cdef Py_ssize_t i
    if n_threads < 2 or m < 2 or m * n < PARALLEL_MIN_ELEMENTS:
        for i in range(m):
            _forward_row(act, z + i * n, a + i * n, n)
    else:
        for i in prange(m, schedule="static", num_threads=n_threads):
            _forward_row(act, z + i * n, a + i * n, n)


cdef inline void _forward_row(int act, const floating* z, floating* a, Py_ssize_t n) noexcept nogil:
    if act == ACT_SOFTMAX:
        softmax_row(z, a, n)
    else:
        act_row(act, z, a, n)


cdef void activation_backward_nogil(int act, const floating* z, const floating* a,
                                    const floating* g, floating* gz,
                                    Py_ssize_t m, Py_ssize_t n, int n_threads) noexcept nogil:
    """gz := g ⊙ act'(z) row by row.  IN z, a, g (m, n) C-contiguous; OUT gz (m, n), may alias g."""
    cdef Py_ssize_t i
    if n_threads < 2 or m < 2 or m * n < PARALLEL_MIN_ELEMENTS:
        for i in range(m):
            act_grad_row(act, z + i * n, a + i * n, g + i * n, gz + i * n, n)
    else:
        for i in prange(m, schedule="static", num_threads=n_threads):
            act_grad_row(act, z + i * n, a + i * n, g + i * n, gz + i * n, n)


def _check_act(int act):
    if act < 0 or act >= N_ACTIVATIONS:
        raise ValueError(f"unknown activation id {act}")


def activation_forward(int act, const floating[:, ::1] z, floating[:, ::1] a, int n_threads):
    """a := act(z), row-wise for softmax.  IN z (m, n); OUT a (m, n), may alias z."""
    _check_act(act)
    if z.shape[0] != a.shape[0] or z.shape[1] != a.shape[1]:
        raise ValueError(f"activation_forward: z has shape {tuple(z.shape)[:2]} but a has shape {tuple(a.shape)[:2]}")
    cdef Py_ssize_t m = z.shape[0], n = z.shape[1]
    if m == 0 or n == 0:
        return
    with nogil:
        activation_forward_nogil(act, &z[0, 0], &a[0, 0], m, n, n_threads)


def activation_backward(int act, const floating[:, ::1] z, const floating[:, ::1] a,
                        const floating[:, ::1] grad_a, floating[:, ::1] grad_z, int n_threads):
    """grad_z := grad_a ⊙ act'(z); softmax: a ⊙ (grad_a - Σ grad_a⊙a) per row.

    IN z, a, grad_a (m, n) (z read by gelu only, may be a); OUT grad_z (m, n), may alias grad_a.
    """
    _check_act(act)
    cdef Py_ssize_t m = a.shape[0], n = a.shape[1]
    for name, arr in (("z", z), ("grad_a", grad_a), ("grad_z", grad_z)):
        if arr.shape[0] != m or arr.shape[1] != n:
            raise ValueError(f"activation_backward: {name} has shape {tuple(arr.shape)[:2]}, expected {(m, n)}")
    if m == 0 or n == 0:
        return
    with nogil:
        activation_backward_nogil(act, &z[0, 0], &a[0, 0], &grad_a[0, 0], &grad_z[0, 0], m, n, n_threads)

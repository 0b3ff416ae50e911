"""Activations and their derivatives: scalar functions, span kernels, row-parallel drivers.

Design: one scalar function per activation (overflow-safe for any finite
input: float32 tanh a branch-free rational function as in the Cython backend,
two-branch sigmoid, softplus = max(z, 0) + log1p(exp(-|z|)), expm1 for
elu, max-subtracted softmax). ``activation_span`` applies activation ``act`` to
a contiguous span of a flat array with the id tested once, outside the loop,
so each branch is a simple loop LLVM can vectorise; the GEMM epilogue calls it
on every finished micro-tile row and ``activation_forward`` on every row.
Derivatives are taken from the output a (as scikit-learn does), except gelu's,
which needs z.

Layout: every 2-D array is C-contiguous and is read as a flat array; rows are
split over threads with ``prange`` (element-wise work: no reduction, so the
result does not depend on the thread count). Softmax rows reduce serially.
"""

import math

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from .. import registry as R
from ._arrays import writable
from ._threads import BACKOFF, clamp_threads, set_threads
from .packing import data_pointer

# Element counts below which a kernel runs on one thread (a parallel region
# costs ~1-2 µs with OpenMP; an element costs ~1 ns).
from ..blocking import PARALLEL_MIN_ELEMENTS  # noqa: E402  (the one table)

_SQRT_HALF = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_IDENTITY, _STEP, _HARDTANH, _SIGMOID, _TANH, _RELU = R.IDENTITY, R.STEP, R.HARDTANH, R.SIGMOID, R.TANH, R.RELU
_LEAKY_RELU, _ELU, _SOFTPLUS, _GELU, _SOFTMAX = R.LEAKY_RELU, R.ELU, R.SOFTPLUS, R.GELU, R.SOFTMAX
_SLOPE, _ALPHA = R.LEAKY_RELU_SLOPE, R.ELU_ALPHA

# error_model="numpy": a division by zero gives inf/nan instead of raising, so a loop
# with a division has no exception branch and can vectorise.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_inline = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")


# ---------------------------------------------------------------- scalar functions
@_jit
def sigmoid(z):
    """1 / (1 + exp(-z)), exp of a non-positive argument only."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def tanh(z):
    """tanh(z); float32 by the Cython backend's rational function (see ``_tanh``)."""


# float32: Eigen's odd degree-13 / even degree-6 minimax fit on [-7.9053, 7.9053], clamped
# outside (|error| < 4e-7, under 7 float32 ulp, on [-12, 12]): the Cython backend's
# tanh_rational.h term for term, in float32 arithmetic, so the backends agree bit for bit.
# Branch-free (selects and one unconditional division), so the loops calling it vectorise
# where math.tanh is a libm call per element (~20 ns, most of an RNN step). NaN propagates;
# |z| < 4e-4 returns z. float64: math.tanh.
_F = np.float32
_CLAMP, _TINY = _F(7.90531110763549805), _F(0.0004)
_P0, _P1, _P2, _P3, _P4, _P5, _P6 = (_F(c) for c in (
    -2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
    1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03))
_Q0, _Q1, _Q2, _Q3 = (_F(c) for c in (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03,
                                       4.89352518554385e-03))


@overload(tanh, jit_options=dict(error_model="numpy"))
def _tanh(z):
    if z != types.float32:
        return lambda z: math.tanh(z)

    def impl(z):
        v = -_CLAMP if z < -_CLAMP else z  # two single selects: a nested one is not if-converted
        v = _CLAMP if v > _CLAMP else v
        x2 = v * v
        p = x2 * _P0 + _P1
        p = x2 * p + _P2
        p = x2 * p + _P3
        p = x2 * p + _P4
        p = x2 * p + _P5
        p = x2 * p + _P6
        p = v * p
        q = x2 * _Q0 + _Q1
        q = x2 * q + _Q2
        q = x2 * q + _Q3
        r = p / q  # unconditionally: a division in a branch blocks if-conversion
        return z if abs(z) < _TINY else r
    return impl


@_jit
def softplus(z):
    """log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|))."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


@_jit
def gelu(z):
    """z·Φ(z) with the exact erf."""
    return 0.5 * z * (1.0 + math.erf(z * _SQRT_HALF))


@_jit
def gelu_derivative(z):
    """Φ(z) + z·φ(z)."""
    return 0.5 * (1.0 + math.erf(z * _SQRT_HALF)) + z * _INV_SQRT_2PI * math.exp(-0.5 * z * z)


# ---------------------------------------------------------------- span kernels
@_jit
def activation_span(act, src, src_off, dst, dst_off, count):
    """dst[dst_off:+count] := act(src[src_off:+count]), element-wise (softmax: not here).

    IN src (flat); OUT dst (flat), may be src at the same offset. Read and written through
    raw pointers: flat-array indexing keeps a wraparound test per element, which blocks
    vectorisation. In place, the loops get the one pointer twice: LLVM's run-time overlap
    check of two pointers fails when they are equal, and its fallback loop is scalar.
    """
    if src_off == dst_off and src.ctypes.data == dst.ctypes.data:
        out = data_pointer(dst)
        _activation_loops(act, out, dst_off, out, dst_off, count)
    else:
        _activation_loops(act, data_pointer(src), src_off, data_pointer(dst), dst_off, count)


@_jit_inline
def _activation_loops(act, src, src_off, dst, dst_off, count):
    """activation_span's loops on pointers src, dst."""
    if act == _IDENTITY:
        for j in range(count):
            dst[dst_off + j] = src[src_off + j]
    elif act == _STEP:
        for j in range(count):
            dst[dst_off + j] = 1.0 if src[src_off + j] > 0 else 0.0
    elif act == _HARDTANH:
        for j in range(count):
            dst[dst_off + j] = min(max(src[src_off + j], -1.0), 1.0)
    elif act == _SIGMOID:
        for j in range(count):
            dst[dst_off + j] = sigmoid(src[src_off + j])
    elif act == _TANH:
        for j in range(count):
            dst[dst_off + j] = tanh(src[src_off + j])
    elif act == _RELU:
        for j in range(count):
            dst[dst_off + j] = max(src[src_off + j], 0.0)
    elif act == _LEAKY_RELU:
        for j in range(count):
            v = src[src_off + j]
            dst[dst_off + j] = v if v > 0 else v * _SLOPE
    elif act == _ELU:
        for j in range(count):
            v = src[src_off + j]
            dst[dst_off + j] = v if v > 0 else _ALPHA * math.expm1(v)
    elif act == _SOFTPLUS:
        for j in range(count):
            dst[dst_off + j] = softplus(src[src_off + j])
    elif act == _GELU:
        for j in range(count):
            dst[dst_off + j] = gelu(src[src_off + j])


@_jit
def derivative_span(act, z, a, grad_a, grad_z, off, count):
    """grad_z[off:+count] := grad_a ⊙ act'(z), act' from a except for gelu (from z).

    IN z, a, grad_a (flat); OUT grad_z (flat), may be grad_a. Raw pointers, one for
    grad_a and grad_z when they are the same array (see activation_span).
    """
    zp, ap = data_pointer(z), data_pointer(a)
    if grad_a.ctypes.data == grad_z.ctypes.data:
        if act == _IDENTITY:
            return  # grad_z = grad_a already
        out = data_pointer(grad_z)
        _derivative_loops(act, zp, ap, out, out, off, count)
    else:
        _derivative_loops(act, zp, ap, data_pointer(grad_a), data_pointer(grad_z), off, count)


@_jit_inline
def _derivative_loops(act, z, a, grad_a, grad_z, off, count):
    """derivative_span's loops on pointers."""
    if act == _IDENTITY:
        for j in range(count):
            grad_z[off + j] = grad_a[off + j]
    elif act == _STEP:
        for j in range(count):
            grad_z[off + j] = 0.0
    elif act == _HARDTANH:
        for j in range(count):
            v = a[off + j]
            g = grad_a[off + j]
            grad_z[off + j] = g if (v > -1.0 and v < 1.0) else 0.0
    elif act == _SIGMOID:
        for j in range(count):
            v = a[off + j]
            grad_z[off + j] = grad_a[off + j] * (v * (1 - v))
    elif act == _TANH:
        for j in range(count):
            v = a[off + j]
            grad_z[off + j] = grad_a[off + j] * (1 - v * v)
    elif act == _RELU:
        for j in range(count):
            g = grad_a[off + j]  # loaded unconditionally: a select, not a branch
            grad_z[off + j] = g if a[off + j] > 0 else 0.0
    elif act == _LEAKY_RELU:
        for j in range(count):
            g = grad_a[off + j]
            grad_z[off + j] = g if a[off + j] > 0 else g * _SLOPE
    elif act == _ELU:
        for j in range(count):
            v = a[off + j]
            g = grad_a[off + j]
            grad_z[off + j] = g if v > 0 else g * (v + _ALPHA)
    elif act == _SOFTPLUS:
        for j in range(count):
            grad_z[off + j] = grad_a[off + j] * -math.expm1(-a[off + j])
    elif act == _GELU:
        for j in range(count):
            grad_z[off + j] = grad_a[off + j] * gelu_derivative(z[off + j])


@_jit
def softmax_row(z, a, off, count):
    """a[off:+count] := exp(z - max z) / Σ exp(z - max z), the sum in float64.  OUT a, may be z."""
    top = z[off]
    for j in range(1, count):
        top = max(top, z[off + j])
    total = 0.0
    for j in range(count):
        e = math.exp(z[off + j] - top)
        a[off + j] = e
        total += e
    scale = 1.0 / total
    for j in range(count):
        a[off + j] = a[off + j] * scale


@_jit
def softmax_backward_row(a, grad_a, grad_z, off, count):
    """grad_z[off:+count] := a ⊙ (g - Σ g⊙a), the dot in float64.  OUT grad_z, may be grad_a."""
    dot = 0.0
    for j in range(count):
        dot += grad_a[off + j] * a[off + j]
    for j in range(count):
        grad_z[off + j] = a[off + j] * (grad_a[off + j] - dot)


# ---------------------------------------------------------------- row-parallel drivers
# Each driver is compiled twice from one body: parallel, and serial (prange
# runs as range), because entering a parallel region costs ~1.5 µs even on
# one thread; the wrappers take the serial one for small arrays. Large arrays
# take the parallel one even on one thread: LLVM vectorises an outlined parallel
# body more readily than the serial loop over arrays that may alias.
# PARALLEL is a closure constant, so the two are distinct entries of Numba's cache.
def _make_activation_forward(PARALLEL):
    def _activation_forward(act, z, a, n_threads):
        """a := act(z), row-wise for softmax.  IN z (m, n); OUT a (m, n), may be z."""
        m, n = z.shape
        if PARALLEL:
            set_threads(n_threads)
        zf = z.reshape(m * n)
        af = a.reshape(m * n)
        if not PARALLEL and act != _SOFTMAX:  # element-wise: one span, one loop
            activation_span(act, zf, 0, af, 0, m * n)
            return
        for i in prange(m):
            if act == _SOFTMAX:
                softmax_row(zf, af, i * n, n)
            else:
                activation_span(act, zf, i * n, af, i * n, n)

    return numba.njit(cache=True, nogil=True, parallel=PARALLEL, error_model="numpy")(_activation_forward)


def _make_activation_backward(PARALLEL):
    def _activation_backward(act, z, a, grad_a, grad_z, n_threads):
        """grad_z := grad_a ⊙ act'(z) (softmax: a ⊙ (g - Σ g⊙a) per row).  OUT grad_z, may be grad_a."""
        m, n = a.shape
        if PARALLEL:
            set_threads(n_threads)
        zf = z.reshape(m * n)
        af = a.reshape(m * n)
        gf = grad_a.reshape(m * n)
        of = grad_z.reshape(m * n)
        if not PARALLEL and act != _SOFTMAX:  # element-wise: one span, one loop
            derivative_span(act, zf, af, gf, of, 0, m * n)
            return
        for i in prange(m):
            if act == _SOFTMAX:
                softmax_backward_row(af, gf, of, i * n, n)
            else:
                derivative_span(act, zf, af, gf, of, i * n, n)

    return numba.njit(cache=True, nogil=True, parallel=PARALLEL, error_model="numpy")(_activation_backward)


_activation_forward_parallel = _make_activation_forward(True)
_activation_forward_serial = _make_activation_forward(False)
_activation_backward_parallel = _make_activation_backward(True)
_activation_backward_serial = _make_activation_backward(False)


def _activation_forward(act, z, a, n_threads):
    """The forward driver for this size: the parallel one (on n_threads, maybe 1) from
    PARALLEL_MIN_ELEMENTS values, else the serial one (no parallel region to enter)."""
    if z.size >= PARALLEL_MIN_ELEMENTS and not BACKOFF[0]:
        _activation_forward_parallel(act, z, a, n_threads)
    else:
        _activation_forward_serial(act, z, a, 1)


def _activation_backward(act, z, a, grad_a, grad_z, n_threads):
    """The backward driver for this size (as ``_activation_forward``)."""
    if a.size >= PARALLEL_MIN_ELEMENTS and not BACKOFF[0]:
        _activation_backward_parallel(act, z, a, grad_a, grad_z, n_threads)
    else:
        _activation_backward_serial(act, z, a, grad_a, grad_z, 1)


def activation_forward(act, z, a, n_threads):
    """a := act(z), row-wise for softmax.  IN z (m, n); OUT a (m, n), may alias z."""
    _activation_forward(act, writable(z), a, clamp_threads(n_threads))


def activation_backward(act, z, a, grad_a, grad_z, n_threads):
    """grad_z := grad_a ⊙ act'(z).  IN z, a, grad_a (m, n); OUT grad_z (m, n), may alias grad_a."""
    _activation_backward(act, writable(z), writable(a), writable(grad_a), grad_z, clamp_threads(n_threads))


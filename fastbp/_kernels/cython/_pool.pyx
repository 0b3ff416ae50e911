# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""2-D max, average and global average pooling, channels-last, forward and backward."""
# Design: images are (n, h, w, c), C-contiguous; ``geometry`` is (pool_h,
# pool_w, stride_h, stride_w, pad_top, pad_left), the bottom/right padding
# implied by the output's shape. An output pixel's window is clipped to x once
# (padding never wins a max and adds zero to a sum) and its c channels are
# handled by contiguous inner loops. Forward passes are parallel over output
# rows (no reductions shared between threads). Backward passes scatter into dx
# image by image, one image per task, each image's windows in row-major order,
# so every dx value sums its terms in the same order for any thread count.
# Max pooling keeps the arg-max (row·width + column in x, int64, as torch's
# return_indices) for its backward: ties go to the first maximum in scan order,
# a NaN wins (torch's rule ``v > max or isnan(v)``), and a window whose values
# are all -inf keeps its first pixel of x.

from cython.parallel cimport prange

from fastbp._kernels.cython._threads cimport gemm_threads_now
from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memset

from fastbp._kernels.cython._gemm cimport isa_is_avx512

cdef extern from "pool_windows.h" nogil:
    void fastbp_max_pool_row_s(const float* x, Py_ssize_t width, Py_ssize_t c, Py_ssize_t hs, Py_ssize_t he,
                               Py_ssize_t out_w, Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t pw,
                               float* o, int64_t* idx)
    void fastbp_max_pool_row_d(const double* x, Py_ssize_t width, Py_ssize_t c, Py_ssize_t hs, Py_ssize_t he,
                               Py_ssize_t out_w, Py_ssize_t sw, Py_ssize_t pl, Py_ssize_t pw,
                               double* o, int64_t* idx)
    void fastbp_max_pool_row_narrow_s(const float* x, Py_ssize_t width, Py_ssize_t c, Py_ssize_t hs,
                                      Py_ssize_t he, Py_ssize_t out_w, Py_ssize_t sw, Py_ssize_t pl,
                                      Py_ssize_t pw, float* o, int64_t* idx)

# float32 images of fewer channels than this take the masked AVX-512 row where the GEMM
# runs AVX-512 (isa_is_avx512: FASTBP_CYTHON_ISA=avx2 turns it off).
DEF NARROW_CHANNELS = 16

# Parallel regions below this many values run on the calling thread
# (blocking.PARALLEL_MIN_ELEMENTS, set by _configure).
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 15


def _configure(Py_ssize_t parallel_min_values):
    """Set blocking.PARALLEL_MIN_ELEMENTS."""
    global PARALLEL_MIN_VALUES
    if parallel_min_values < 1:
        raise ValueError(f"parallel_min_values must be positive, got {parallel_min_values}")
    PARALLEL_MIN_VALUES = parallel_min_values


cdef struct Pool:
    Py_ssize_t n, h, w, c, out_h, out_w, ph, pw, sh, sw, pt, pl


cdef int _pool_geometry(Pool* g, tuple geometry, tuple x_shape, tuple out_shape) except -1:
    g.n, g.h, g.w, g.c = x_shape
    n, g.out_h, g.out_w, c = out_shape
    g.ph, g.pw, g.sh, g.sw, g.pt, g.pl = geometry
    if n != g.n or c != g.c:
        raise ValueError(f"pool2d: shapes x {x_shape} and output {out_shape} do not agree")
    if min(g.ph, g.pw, g.sh, g.sw) < 1 or min(g.pt, g.pl) < 0:
        raise ValueError(f"pool2d: invalid geometry {geometry}")
    return 0


cdef inline int _threads(int n_threads, Py_ssize_t tasks, Py_ssize_t values) noexcept nogil:
    """Threads for a pass of ``tasks`` independent tasks over ``values`` values: one below
    PARALLEL_MIN_VALUES or while the busy-machine back-off lasts (which counts this call)."""
    if n_threads > 1 and tasks > 1 and values >= PARALLEL_MIN_VALUES:
        return <int>gemm_threads_now(n_threads)
    return 1


# ---------------------------------------------------------------- max
cdef void _max_row(Pool* g, const floating* x, Py_ssize_t row, floating* out, int64_t* argmax) noexcept nogil:
    """Output row ``row`` (image row // out_h, row % out_h) of max pooling and its arg-max."""
    cdef Py_ssize_t img = row // g.out_h, oh = row % g.out_h
    cdef Py_ssize_t h0 = oh * g.sh - g.pt, first = row * g.out_w * g.c
    if floating is float:
        if g.c < NARROW_CHANNELS and isa_is_avx512():
            fastbp_max_pool_row_narrow_s(x + img * g.h * g.w * g.c, g.w, g.c, max(h0, 0), min(h0 + g.ph, g.h),
                                         g.out_w, g.sw, g.pl, g.pw, out + first, argmax + first)
            return
        fastbp_max_pool_row_s(x + img * g.h * g.w * g.c, g.w, g.c, max(h0, 0), min(h0 + g.ph, g.h),
                              g.out_w, g.sw, g.pl, g.pw, out + first, argmax + first)
    else:
        fastbp_max_pool_row_d(x + img * g.h * g.w * g.c, g.w, g.c, max(h0, 0), min(h0 + g.ph, g.h),
                              g.out_w, g.sw, g.pl, g.pw, out + first, argmax + first)


def max_pool2d_forward(const floating[:, :, :, ::1] x, tuple geometry, floating[:, :, :, ::1] out,
                       int64_t[:, :, :, ::1] argmax, int n_threads):
    """out := the max of each window; argmax := its position (row·w + column of x).

    IN x (n, h, w, c); OUT out, argmax (n, out_h, out_w, c).
    """
    cdef Pool g
    _pool_geometry(&g, geometry, tuple(x.shape)[:4], tuple(out.shape)[:4])
    if tuple(argmax.shape)[:4] != tuple(out.shape)[:4]:
        raise ValueError("max_pool2d_forward: argmax must have out's shape")
    if out.size == 0:
        return
    cdef Py_ssize_t row
    cdef int nt = _threads(n_threads, g.n * g.out_h, g.n * g.out_h * g.out_w * g.c)
    cdef const floating* px = &x[0, 0, 0, 0]
    cdef floating* po = &out[0, 0, 0, 0]
    cdef int64_t* pi = &argmax[0, 0, 0, 0]
    if nt > 1:
        for row in prange(g.n * g.out_h, schedule="static", nogil=True, num_threads=nt):
            _max_row(&g, px, row, po, pi)
    else:
        with nogil:
            for row in range(g.n * g.out_h):
                _max_row(&g, px, row, po, pi)


cdef void _max_backward_image(Py_ssize_t img, Py_ssize_t n_out, Py_ssize_t hw, Py_ssize_t c,
                              const floating* grad, const int64_t* argmax, floating* dx) noexcept nogil:
    """dx[img] := 0, then += each grad value of image img at its arg-max, in output order."""
    cdef Py_ssize_t i, ch
    cdef const floating* g = grad + img * n_out * c
    cdef const int64_t* idx = argmax + img * n_out * c
    cdef floating* d = dx + img * hw * c
    memset(d, 0, hw * c * sizeof(floating))
    for i in range(n_out):
        for ch in range(c):
            d[idx[i * c + ch] * c + ch] += g[i * c + ch]


def max_pool2d_backward(const floating[:, :, :, ::1] grad_out, const int64_t[:, :, :, ::1] argmax,
                        floating[:, :, :, ::1] dx, int n_threads):
    """dx := 0; dx[n, argmax, c] += grad_out (output pixels in row-major order).

    IN grad_out, argmax (n, out_h, out_w, c) with argmax in [0, h·w); OUT dx (n, h, w, c).
    """
    cdef Py_ssize_t n = dx.shape[0], hw = dx.shape[1] * dx.shape[2], c = dx.shape[3]
    cdef Py_ssize_t n_out = grad_out.shape[1] * grad_out.shape[2], img
    if (tuple(argmax.shape)[:4] != tuple(grad_out.shape)[:4] or grad_out.shape[0] != n
            or grad_out.shape[3] != c):
        raise ValueError("max_pool2d_backward: shapes of grad_out, argmax and dx do not agree")
    if dx.size == 0:
        return
    cdef const floating* pg = &grad_out[0, 0, 0, 0] if n_out > 0 and c > 0 else NULL
    cdef const int64_t* pi = &argmax[0, 0, 0, 0] if n_out > 0 and c > 0 else NULL
    cdef floating* pd = &dx[0, 0, 0, 0]
    cdef int nt = _threads(n_threads, n, n * hw * c)
    if nt > 1:
        for img in prange(n, schedule="static", nogil=True, num_threads=nt):
            _max_backward_image(img, n_out, hw, c, pg, pi, pd)
    else:
        with nogil:
            for img in range(n):
                _max_backward_image(img, n_out, hw, c, pg, pi, pd)


# ---------------------------------------------------------------- average
cdef inline Py_ssize_t _divisor(Pool* g, Py_ssize_t h0, Py_ssize_t w0, bint count_include_pad) noexcept nogil:
    """ph·pw, or the number of pixels of x in the window at (h0, w0)."""
    if count_include_pad:
        return g.ph * g.pw
    return (min(h0 + g.ph, g.h) - max(h0, 0)) * (min(w0 + g.pw, g.w) - max(w0, 0))


cdef void _avg_row(Pool* g, const floating* x, Py_ssize_t row, bint count_include_pad,
                   floating* out) noexcept nogil:
    """Output row ``row`` of average pooling: each window's sum in scan order, divided."""
    cdef Py_ssize_t img = row // g.out_h, oh = row % g.out_h
    cdef Py_ssize_t h0 = oh * g.sh - g.pt, hs = max(h0, 0), he = min(h0 + g.ph, g.h)
    cdef Py_ssize_t ow, w0, ih, iw, ch
    cdef floating* o
    cdef const floating* src
    cdef floating div
    for ow in range(g.out_w):
        w0 = ow * g.sw - g.pl
        o = out + (row * g.out_w + ow) * g.c
        for ch in range(g.c):
            o[ch] = 0
        for ih in range(hs, he):
            for iw in range(max(w0, 0), min(w0 + g.pw, g.w)):
                src = x + ((img * g.h + ih) * g.w + iw) * g.c
                for ch in range(g.c):
                    o[ch] = o[ch] + src[ch]
        div = <floating>_divisor(g, h0, w0, count_include_pad)
        for ch in range(g.c):
            o[ch] = o[ch] / div


def avg_pool2d_forward(const floating[:, :, :, ::1] x, tuple geometry, bint count_include_pad,
                       floating[:, :, :, ::1] out, int n_threads):
    """out := the mean of each window (padding counted as zeros when count_include_pad).

    IN x (n, h, w, c); OUT out (n, out_h, out_w, c).
    """
    cdef Pool g
    _pool_geometry(&g, geometry, tuple(x.shape)[:4], tuple(out.shape)[:4])
    if out.size == 0:
        return
    cdef Py_ssize_t row
    cdef int nt = _threads(n_threads, g.n * g.out_h, g.n * g.out_h * g.out_w * g.c)
    cdef const floating* px = &x[0, 0, 0, 0]
    cdef floating* po = &out[0, 0, 0, 0]
    if nt > 1:
        for row in prange(g.n * g.out_h, schedule="static", nogil=True, num_threads=nt):
            _avg_row(&g, px, row, count_include_pad, po)
    else:
        with nogil:
            for row in range(g.n * g.out_h):
                _avg_row(&g, px, row, count_include_pad, po)


cdef void _avg_backward_image(Pool* g, Py_ssize_t img, const floating* grad, bint count_include_pad,
                              floating* dx) noexcept nogil:
    """dx[img] := 0, then += grad/divisor over each window of image img, windows in row-major order."""
    cdef Py_ssize_t oh, ow, h0, w0, ih, iw, ch
    cdef const floating* gr
    cdef floating* d
    cdef floating div
    memset(dx + img * g.h * g.w * g.c, 0, g.h * g.w * g.c * sizeof(floating))
    for oh in range(g.out_h):
        h0 = oh * g.sh - g.pt
        for ow in range(g.out_w):
            w0 = ow * g.sw - g.pl
            gr = grad + ((img * g.out_h + oh) * g.out_w + ow) * g.c
            div = <floating>_divisor(g, h0, w0, count_include_pad)
            for ih in range(max(h0, 0), min(h0 + g.ph, g.h)):
                for iw in range(max(w0, 0), min(w0 + g.pw, g.w)):
                    d = dx + ((img * g.h + ih) * g.w + iw) * g.c
                    for ch in range(g.c):
                        d[ch] = d[ch] + gr[ch] / div


def avg_pool2d_backward(const floating[:, :, :, ::1] grad_out, tuple geometry, bint count_include_pad,
                        floating[:, :, :, ::1] dx, int n_threads):
    """dx := the adjoint of avg_pool2d_forward applied to grad_out.

    IN grad_out (n, out_h, out_w, c); OUT dx (n, h, w, c).
    """
    cdef Pool g
    _pool_geometry(&g, geometry, tuple(dx.shape)[:4], tuple(grad_out.shape)[:4])
    if dx.size == 0:
        return
    cdef Py_ssize_t img
    cdef const floating* pg = &grad_out[0, 0, 0, 0] if grad_out.size > 0 else NULL
    cdef floating* pd = &dx[0, 0, 0, 0]
    cdef int nt = _threads(n_threads, g.n, g.n * g.h * g.w * g.c)
    if nt > 1:
        for img in prange(g.n, schedule="static", nogil=True, num_threads=nt):
            _avg_backward_image(&g, img, pg, count_include_pad, pd)
    else:
        with nogil:
            for img in range(g.n):
                _avg_backward_image(&g, img, pg, count_include_pad, pd)


# ---------------------------------------------------------------- global average
cdef void _global_avg_image(const floating* x, Py_ssize_t img, Py_ssize_t hw, Py_ssize_t c,
                            floating* out) noexcept nogil:
    """out[img, ch] := Σ_pixels x[img, :, :, ch] / hw, summed in pixel order in float64."""
    cdef Py_ssize_t i, ch
    cdef double acc
    cdef const floating* src = x + img * hw * c
    for ch in range(c):
        acc = 0.0
        for i in range(hw):
            acc += src[i * c + ch]
        out[img * c + ch] = <floating>(acc / hw)


def global_avg_pool2d_forward(const floating[:, :, :, ::1] x, floating[:, ::1] out, int n_threads):
    """out[n, c] := mean over the pixels of x[n, :, :, c].  IN x (n, h, w, c); OUT out (n, c)."""
    cdef Py_ssize_t n = x.shape[0], hw = x.shape[1] * x.shape[2], c = x.shape[3], img
    if out.shape[0] != n or out.shape[1] != c:
        raise ValueError(f"global_avg_pool2d_forward: out has shape {tuple(out.shape)[:2]}, expected {(n, c)}")
    if out.size == 0 or hw == 0:
        return
    cdef const floating* px = &x[0, 0, 0, 0]
    cdef floating* po = &out[0, 0]
    cdef int nt = _threads(n_threads, n, n * hw * c)
    if nt > 1:
        for img in prange(n, schedule="static", nogil=True, num_threads=nt):
            _global_avg_image(px, img, hw, c, po)
    else:
        with nogil:
            for img in range(n):
                _global_avg_image(px, img, hw, c, po)


def global_avg_pool2d_backward(const floating[:, ::1] grad_out, floating[:, :, :, ::1] dx, int n_threads):
    """dx[n, :, :, c] := grad_out[n, c] / (h·w).  IN grad_out (n, c); OUT dx (n, h, w, c)."""
    cdef Py_ssize_t n = dx.shape[0], hw = dx.shape[1] * dx.shape[2], c = dx.shape[3], img, i, ch
    if grad_out.shape[0] != n or grad_out.shape[1] != c:
        raise ValueError(f"global_avg_pool2d_backward: grad_out has shape {tuple(grad_out.shape)[:2]}, "
                         f"expected {(n, c)}")
    if dx.size == 0:
        return
    cdef floating scale = <floating>hw
    cdef const floating* pg = &grad_out[0, 0] if c > 0 else NULL
    cdef floating* pd = &dx[0, 0, 0, 0]
    with nogil:
        for img in range(n):
            for i in range(hw):
                for ch in range(c):
                    pd[(img * hw + i) * c + ch] = pg[img * c + ch] / scale

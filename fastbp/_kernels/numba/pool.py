"""2-D max, average and global average pooling, channels-last, forward and backward.

Design: images are (n, h, w, c), C-contiguous; ``geometry`` is (pool_h,
pool_w, stride_h, stride_w, pad_top, pad_left), the bottom/right padding
implied by the output's shape. Each window is clipped to x once (padding never
wins a max and adds zero to a sum) and its channels are the inner loop.
Forward passes are parallel over output rows; backward passes scatter into dx
one image per task, each image's windows in row-major order, so each dx value
sums its terms in the same order for any thread count. Max pooling keeps the
arg-max (row·width + column of x, int64, as torch's return_indices): ties go to
the first maximum in scan order and a NaN wins (torch's ``v > max or isnan(v)``).
Each kernel has a parallel and a serial twin (a parallel region costs ~1.5 µs).
"""

import numba
import numpy as np
from numba import prange
from numba.core import types
from numba.extending import intrinsic

from ..blocking import PARALLEL_MIN_ELEMENTS as PARALLEL_MIN_VALUES  # the one threshold table
from ._arrays import writable
from ._threads import clamp_threads, gemm_threads_now, set_threads

_jit = dict(cache=True, nogil=True, error_model="numpy")

# Max pooling over fewer channels than this (no full vector) scans each channel's
# window with the running max in a register; wider images update a row of maxima
# with the channel loop vectorised. Both use selects: a branch on "is this value
# larger" is a coin toss on random data.
NARROW_CHANNELS = 8


@intrinsic
def _wins(typingctx, v_ty, best_ty):
    """v > best or v is NaN (torch's rule for max pooling), as a flag, not a branch."""
    if not (isinstance(v_ty, types.Float) and v_ty == best_ty):
        return None

    def codegen(context, builder, signature, args):
        v, best = args
        return builder.or_(builder.fcmp_ordered(">", v, best), builder.fcmp_unordered("uno", v, v))

    return types.boolean(v_ty, best_ty), codegen


@intrinsic
def _select(typingctx, take_ty, a_ty, b_ty):
    """a if take else b, as LLVM's select: Numba's own ternary becomes a branch, which
    on random data mispredicts half the time and keeps the loop from vectorising."""
    if not (isinstance(take_ty, types.Boolean) and a_ty == b_ty):
        return None

    def codegen(context, builder, signature, args):
        take = context.cast(builder, args[0], signature.args[0], types.boolean)
        return builder.select(take, args[1], args[2])

    return a_ty(take_ty, a_ty, b_ty), codegen


def _make_max_forward(PARALLEL):
    def _max_forward(x, geometry, out, argmax, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        ph, pw, sh, sw, pt, pl = geometry
        n, h, w, c = x.shape
        out_h, out_w = out.shape[1], out.shape[2]
        for row in prange(n * out_h):
            img, oh = row // out_h, row % out_h
            h0 = oh * sh - pt
            hs, he = max(h0, 0), min(h0 + ph, h)
            pixels = x[img].reshape(h * w, c)
            o, idx = out[img, oh], argmax[img, oh]
            for ow in range(out_w):
                first = hs * w + max(ow * sw - pl, 0)
                for ch in range(c):
                    o[ow, ch] = -np.inf
                    idx[ow, ch] = first
            if c < NARROW_CHANNELS:
                # Each channel scans its window with the max and arg-max in
                # registers (the arg-max as a float64, exact below 2^53, so that
                # both selects take the same vector-register mask).
                for ow in range(out_w):
                    w0 = ow * sw - pl
                    ws, we = max(w0, 0), min(w0 + pw, w)
                    for ch in range(c):
                        best, at = o[ow, ch], np.float64(idx[ow, ch])
                        for ih in range(hs, he):
                            for iw in range(ws, we):
                                pos = ih * w + iw
                                v = pixels[pos, ch]
                                take = _wins(v, best)
                                best = _select(take, v, best)
                                at = _select(take, np.float64(pos), at)
                        o[ow, ch] = best
                        idx[ow, ch] = np.int64(at)
            else:
                # The row's maxima are updated one window pixel (ih, dw) at a
                # time over all its windows: each step is a vector loop over the
                # channels, and no step waits on the one before it.
                for ih in range(hs, he):
                    for dw in range(pw):
                        for ow in range(out_w):
                            iw = ow * sw - pl + dw
                            if iw < 0 or iw >= w:
                                continue
                            pos = ih * w + iw
                            src, ob, ib = pixels[pos], o[ow], idx[ow]
                            for ch in range(c):
                                v, best = src[ch], ob[ch]
                                take = _wins(v, best)
                                ob[ch] = _select(take, v, best)
                                ib[ch] = _select(take, pos, ib[ch])

    return numba.njit(parallel=PARALLEL, **_jit)(_max_forward)


def _make_max_backward(PARALLEL):
    def _max_backward(grad_out, argmax, dx, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        n, h, w, c = dx.shape
        n_out = grad_out.shape[1] * grad_out.shape[2]
        for img in prange(n):
            d = dx[img].reshape(h * w, c)
            g = grad_out[img].reshape(n_out, c)
            idx = argmax[img].reshape(n_out, c)
            d[:] = 0
            for i in range(n_out):
                for ch in range(c):
                    d[idx[i, ch], ch] += g[i, ch]

    return numba.njit(parallel=PARALLEL, **_jit)(_max_backward)


def _make_avg_forward(PARALLEL):
    def _avg_forward(x, geometry, count_include_pad, out, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        ph, pw, sh, sw, pt, pl = geometry
        n, h, w, c = x.shape
        out_h, out_w = out.shape[1], out.shape[2]
        for row in prange(n * out_h):
            img, oh = row // out_h, row % out_h
            h0 = oh * sh - pt
            hs, he = max(h0, 0), min(h0 + ph, h)
            for ow in range(out_w):
                w0 = ow * sw - pl
                ws, we = max(w0, 0), min(w0 + pw, w)
                o = out[img, oh, ow]
                o[:] = 0
                for ih in range(hs, he):
                    for iw in range(ws, we):
                        src = x[img, ih, iw]
                        for ch in range(c):
                            o[ch] += src[ch]
                div = ph * pw if count_include_pad else (he - hs) * (we - ws)
                for ch in range(c):
                    o[ch] = o[ch] / div

    return numba.njit(parallel=PARALLEL, **_jit)(_avg_forward)


def _make_avg_backward(PARALLEL):
    def _avg_backward(grad_out, geometry, count_include_pad, dx, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        ph, pw, sh, sw, pt, pl = geometry
        n, h, w, c = dx.shape
        out_h, out_w = grad_out.shape[1], grad_out.shape[2]
        for img in prange(n):
            dx[img] = 0
            for oh in range(out_h):
                h0 = oh * sh - pt
                hs, he = max(h0, 0), min(h0 + ph, h)
                for ow in range(out_w):
                    w0 = ow * sw - pl
                    ws, we = max(w0, 0), min(w0 + pw, w)
                    div = ph * pw if count_include_pad else (he - hs) * (we - ws)
                    g = grad_out[img, oh, ow]
                    for ih in range(hs, he):
                        for iw in range(ws, we):
                            d = dx[img, ih, iw]
                            for ch in range(c):
                                d[ch] += g[ch] / div

    return numba.njit(parallel=PARALLEL, **_jit)(_avg_backward)


def _make_global_forward(PARALLEL):
    def _global_forward(x, out, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        n, h, w, c = x.shape
        hw = h * w
        for img in prange(n):
            pixels = x[img].reshape(hw, c)
            for ch in range(c):
                acc = 0.0  # float64, pixels in order
                for i in range(hw):
                    acc += pixels[i, ch]
                out[img, ch] = acc / hw

    return numba.njit(parallel=PARALLEL, **_jit)(_global_forward)


def _make_global_backward(PARALLEL):
    def _global_backward(grad_out, dx, n_threads):
        if PARALLEL:
            set_threads(n_threads)
        n, h, w, c = dx.shape
        scale = h * w
        for img in prange(n):
            pixels = dx[img].reshape(h * w, c)
            g = grad_out[img]
            for i in range(h * w):
                for ch in range(c):
                    pixels[i, ch] = g[ch] / scale

    return numba.njit(parallel=PARALLEL, **_jit)(_global_backward)


def _twins(make):
    return make(True), make(False)


_MAX_FORWARD = _twins(_make_max_forward)
_MAX_BACKWARD = _twins(_make_max_backward)
_AVG_FORWARD = _twins(_make_avg_forward)
_AVG_BACKWARD = _twins(_make_avg_backward)
_GLOBAL_FORWARD = _twins(_make_global_forward)
_GLOBAL_BACKWARD = _twins(_make_global_backward)


def _run(twins, size, n_threads, *args):
    """The parallel twin on n_threads from PARALLEL_MIN_VALUES values, else the serial one; a
    would-be parallel call counts as one of the busy-machine back-off, and runs serial while it lasts."""
    n_threads = gemm_threads_now(clamp_threads(n_threads)) if size >= PARALLEL_MIN_VALUES else 1
    if n_threads > 1:
        twins[0](*args, n_threads)
    else:
        twins[1](*args, 1)


def _geometry(geometry):
    return tuple(int(v) for v in geometry)


def max_pool2d_forward(x, geometry, out, argmax, n_threads):
    """out := the max of each window; argmax := its position (row·w + column of x).

    IN x (n, h, w, c); OUT out, argmax (int64) (n, out_h, out_w, c).
    """
    _run(_MAX_FORWARD, out.size, n_threads, writable(x), _geometry(geometry), out, argmax)


def max_pool2d_backward(grad_out, argmax, dx, n_threads):
    """dx := 0; dx[n, argmax, c] += grad_out (output pixels in row-major order).

    IN grad_out, argmax (n, out_h, out_w, c); OUT dx (n, h, w, c).
    """
    _run(_MAX_BACKWARD, dx.size if dx.shape[0] > 1 else 0, n_threads, writable(grad_out), writable(argmax), dx)


def avg_pool2d_forward(x, geometry, count_include_pad, out, n_threads):
    """out := the mean of each window (padding counted as zeros when count_include_pad).

    IN x (n, h, w, c); OUT out (n, out_h, out_w, c).
    """
    _run(_AVG_FORWARD, out.size, n_threads, writable(x), _geometry(geometry), bool(count_include_pad), out)


def avg_pool2d_backward(grad_out, geometry, count_include_pad, dx, n_threads):
    """dx := the adjoint of avg_pool2d_forward applied to grad_out.  IN grad_out; OUT dx (n, h, w, c)."""
    _run(_AVG_BACKWARD, dx.size if dx.shape[0] > 1 else 0, n_threads, writable(grad_out),
         _geometry(geometry), bool(count_include_pad), dx)


def global_avg_pool2d_forward(x, out, n_threads):
    """out[n, c] := mean over the pixels of x[n, :, :, c].  IN x (n, h, w, c); OUT out (n, c)."""
    _run(_GLOBAL_FORWARD, x.size if x.shape[0] > 1 else 0, n_threads, writable(x), out)


def global_avg_pool2d_backward(grad_out, dx, n_threads):
    """dx[n, :, :, c] := grad_out[n, c] / (h·w).  IN grad_out (n, c); OUT dx (n, h, w, c)."""
    _run(_GLOBAL_BACKWARD, dx.size if dx.shape[0] > 1 else 0, n_threads, writable(grad_out), dx)

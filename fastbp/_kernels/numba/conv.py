"""2-D convolution, channels-last, forward and backward, on the GEMM driver.

Design: a convolution is a GEMM over output pixels. With images (n, h, w, c_in)
and weights (kh, kw, c_in, c_out), row r of the image-to-column matrix ``cols``
(n·out_h·out_w, K = kh·kw·c_in) is output pixel r's receptive field in
(kh, kw, c_in) order, so z = cols·W + b with W = w.reshape(K, c_out). The whole
cols matrix is never built: rows are gathered a block at a time (CHUNK_VALUES
values, a multiple of ROW_ALIGN rows) into a buffer kept per calling thread,
and the GEMM driver (with its bias + activation epilogue on each tile) runs on
each block: with at least BLOCKS_PER_THREAD blocks per thread, each thread
takes whole blocks (``_blocks_parallel``: gather and the serial driver on its
own core, one parallel region per call); otherwise each block's gather
(``_im2col``, row-parallel) and GEMM (``gemm.run_driver``) use all the threads.
A 1x1 kernel with stride 1 and no padding skips the gather. The gather copies,
and col2im adds, each kernel row's values as a run (``runs``: whole vectors and
one masked one), for a window inside x in a loop with nothing else in it.

Backward: δ = grad_a ⊙ act'(z) (activation kernel); db = column sums of δ
(``dense._column_sums``: rows in order); per block, in order: cols :=
im2col(x); dW (+)= colsᵀ·δ[block] (the first block overwrites unless
accumulating). dx, for stride 1 and at least GATHER_MIN_CHANNELS input
channels, is itself a convolution (a gather, through the forward's code): δ
with the kernel flipped and its channel axes swapped, padded by the kernel's
span less the forward's padding. Otherwise, per block: dcols := δ[block]·Wᵀ into
the buffer; dx += col2im(dcols) (``_col2im``: one image per task, rows in order);
where blocks can hold whole images, after dW, each block of whole images (its
dcols GEMM on one thread, then its scatter) is one task, the blocks shared out
among the threads (``_col2im_blocks_parallel``): their images of dx are disjoint.

Determinism: block boundaries depend on K and the dtype only, dW sums the blocks
in order and the GEMM inside a block does not depend on the thread count, and
every dx value is a GEMM's (gathered) or gets its terms in row order (col2im),
each a value of δ·Wᵀ, whose rows do not depend on the block they fall in (the
GEMM sums over f the same way for any m): bitwise the same for any n_threads.
This is the "blocked im2col + GEMM" form; the gather is not fused into the
GEMM's packing of A.
"""

import threading

import numba
import numpy as np
from numba import prange

from .. import registry as R
from ._arrays import writable
from ..blocking import PARALLEL_MIN_ELEMENTS as PARALLEL_MIN_VALUES  # gathers, scatters: serial below
from ..blocking import CONV_BLOCK_VALUES as CHUNK_VALUES  # the one tuning table: see there
from ..blocking import CONV_BLOCKS_PER_THREAD as BLOCKS_PER_THREAD
from ..blocking import CONV_GATHER_MIN_CHANNELS as GATHER_MIN_CHANNELS
from ..blocking import CONV_ROW_ALIGN as ROW_ALIGN
from ..blocking import block_sizes
from ._threads import ISA, MAX_THREADS, clamp_threads, fetch_add, gemm_threads_now, monotonic_seconds, set_threads
from .activations import _activation_backward, _activation_forward
from .dense import _column_sums
from .gemm import NO_ACTIVATION, gemm, judge_by_busiest, no_bias, run_driver
from .mlp import _run_gemm
from .runs import add_run, copy_run, zero_run


def _block_rows(k, m):
    return min(max((CHUNK_VALUES // k) // ROW_ALIGN * ROW_ALIGN, ROW_ALIGN), m)


def _pointwise(kh, kw, geometry, x_shape, z_shape):
    """True when cols is x itself: a 1x1 kernel, stride 1, no padding."""
    sh, sw, pt, pl, _, _ = geometry
    return (kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0
            and z_shape[1] == x_shape[1] and z_shape[2] == x_shape[2])


_buffers = threading.local()


def _workspace(size, dtype, role="cols"):
    """A flat buffer of at least ``size`` values of ``dtype`` for ``role``, kept per calling thread."""
    cache = _buffers.__dict__
    buf = cache.get((role, dtype))
    if buf is None or buf.shape[0] < size:
        buf = cache[(role, dtype)] = np.empty(size, dtype)
    return buf


@numba.njit(cache=True, nogil=True, inline="always")
def _inside(i0, taps, size, dilation):
    """(t0, t1), t0 <= t1: the kernel taps t (rows or columns) whose input index i0 + t·dilation
    lies inside [0, size)."""
    if dilation == 1:  # no divisions (they cost as much as a short run's copy)
        t0 = min(taps, max(0, -i0))
        return t0, max(t0, min(taps, size - i0))
    t0 = 0 if i0 >= 0 else min(taps, (-i0 + dilation - 1) // dilation)
    t1 = min(taps, (size - i0 + dilation - 1) // dilation) if size > i0 else 0
    return t0, max(t0, t1)


@numba.njit(cache=True, nogil=True)
def _gather_border(xf, cf, at, img, ih0, iw0, h, w, c, kh, kw, dh, dw):
    """cf[at : at + kh·kw·c] := the receptive field whose kernel tap (0, 0) reads x[img, ih0, iw0],
    zeros outside x (a window that leaves x: padding, or dilation). IN xf (n·h·w·c) flat; OUT cf flat."""
    span = kw * c
    q0, q1 = _inside(iw0, kw, w, dw)
    for p in range(kh):
        ih = ih0 + p * dh
        row = at + p * span
        if ih < 0 or ih >= h:
            zero_run(cf, row, span)
            continue
        src = ((img * h + ih) * w + iw0) * c
        if dw == 1:  # the columns inside x are adjacent pixels: one run, zeros either side
            zero_run(cf, row, q0 * c)
            copy_run(cf, row + q0 * c, xf, src + q0 * c, (q1 - q0) * c)
            zero_run(cf, row + q1 * c, (kw - q1) * c)
        else:
            for q in range(kw):
                if q0 <= q < q1:
                    copy_run(cf, row + q * c, xf, src + q * dw * c, c)
                else:
                    zero_run(cf, row + q * c, c)


def _make_im2col(PARALLEL):
    def _im2col(x, kh, kw, geometry, out_h, out_w, r0, cols, n_threads):
        """cols[i] := the receptive field of output pixel r0 + i in (kh, kw, c) order, zeros outside x.

        IN x (n, h, w, c) C-contiguous; OUT cols (rows, kh·kw·c) C-contiguous. A window inside x
        (dilation 1) is kh runs of kw·c values, each one ``runs.copy_run``, in a loop of its own
        (with the border's zeros in it, the loop's values no longer fitted the registers: LeNet's
        first gather, runs of 5 values, 0.55 instead of 0.39 ms); other windows: ``_gather_border``.
        """
        if PARALLEL:
            set_threads(n_threads)
        sh, sw, pt, pl, dh, dw = geometry
        h, w, c = x.shape[1], x.shape[2], x.shape[3]
        xf = x.reshape(x.size)
        cf = cols.reshape(cols.size)
        span = kw * c
        k = kh * span
        row_step = dh * w * c  # from one kernel row's values in x to the next's
        rows = cols.shape[0]
        # One task per output row (image, oh) met by the block: the divisions that find a
        # pixel's image and row are done once per output row, not per pixel (with 3 input
        # channels a pixel's copies are 3 runs of 9 values, and its 4 divisions cost more).
        q0 = r0 // out_w
        for q in prange(q0, (r0 + rows - 1) // out_w + 1):
            img, oh = q // out_h, q % out_h
            ih0 = oh * sh - pt  # input row of kernel tap (0, 0)
            rows_inside = ih0 >= 0 and ih0 + (kh - 1) * dh < h
            for ow in range(max(r0 - q * out_w, 0), min(out_w, r0 + rows - q * out_w)):
                i = q * out_w + ow - r0
                iw0 = ow * sw - pl  # input column of kernel tap (0, 0)
                at = i * k
                if dw == 1 and rows_inside and iw0 >= 0 and iw0 + kw <= w:
                    src = ((img * h + ih0) * w + iw0) * c
                    for p in range(kh):
                        copy_run(cf, at, xf, src, span)
                        at += span
                        src += row_step
                else:
                    _gather_border(xf, cf, at, img, ih0, iw0, h, w, c, kh, kw, dh, dw)

    return numba.njit(cache=True, nogil=True, parallel=PARALLEL)(_im2col)


@numba.njit(cache=True, nogil=True)
def _col2im_rows(dcols, kh, kw, geometry, out_h, out_w, r0, lo, hi, dx):
    """dx += the receptive-field values dcols[r - r0] of output pixels lo .. hi-1 (one image), in row order.

    IN dcols (rows, kh·kw·c); IN/OUT dx (n, h, w, c) C-contiguous.
    """
    sh, sw, pt, pl, dh, dw = geometry
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    pix = out_h * out_w
    k = kh * kw * c
    dcf = dcols.reshape(dcols.size)
    dxf = dx.reshape(dx.size)
    for r in range(lo, hi):
        img = r // pix
        oh = (r % pix) // out_w
        ow = r % out_w
        iw0 = ow * sw - pl  # input column of kernel column 0
        q0, q1 = _inside(iw0, kw, w, dw)  # found once per pixel
        for p in range(kh):
            ih = oh * sh - pt + p * dh
            if ih < 0 or ih >= h or q1 <= q0:
                continue
            src = (r - r0) * k + (p * kw + q0) * c
            dst = ((img * h + ih) * w + iw0 + q0 * dw) * c
            if dw == 1:  # the run's columns are adjacent pixels: one contiguous run of values
                add_run(dxf, dst, dcf, src, (q1 - q0) * c)
            else:
                for q in range(q1 - q0):
                    add_run(dxf, dst + q * dw * c, dcf, src + q * c, c)


def _make_col2im(PARALLEL):
    def _col2im(dcols, kh, kw, geometry, out_h, out_w, r0, dx, n_threads):
        """dx += col2im(dcols) for output pixels r0 .. r0 + rows - 1; one image per task, rows in order.

        IN dcols (rows, kh·kw·c); IN/OUT dx (n, h, w, c).
        """
        if PARALLEL:
            set_threads(n_threads)
        pix = out_h * out_w
        rows = dcols.shape[0]
        img0 = r0 // pix
        img1 = (r0 + rows - 1) // pix + 1
        for img in prange(img0, img1):
            _col2im_rows(dcols, kh, kw, geometry, out_h, out_w, r0, max(r0, img * pix),
                         min(r0 + rows, (img + 1) * pix), dx)

    return numba.njit(cache=True, nogil=True, parallel=PARALLEL)(_col2im)


_im2col_parallel, _im2col_serial = _make_im2col(True), _make_im2col(False)
_col2im_parallel, _col2im_serial = _make_col2im(True), _make_col2im(False)


def _im2col(x, kh, kw, geometry, out_h, out_w, r0, cols, n_threads):
    if n_threads > 1 and cols.size >= PARALLEL_MIN_VALUES:
        _im2col_parallel(x, kh, kw, geometry, out_h, out_w, r0, cols, n_threads)
    else:
        _im2col_serial(x, kh, kw, geometry, out_h, out_w, r0, cols, 1)


def _col2im(dcols, kh, kw, geometry, out_h, out_w, r0, dx, n_threads):
    if n_threads > 1 and dcols.size >= PARALLEL_MIN_VALUES:
        _col2im_parallel(dcols, kh, kw, geometry, out_h, out_w, r0, dx, n_threads)
    else:
        _col2im_serial(dcols, kh, kw, geometry, out_h, out_w, r0, dx, 1)


def _geometry(geometry):
    return tuple(int(v) for v in geometry)


# Cached like every kernel: the serial GEMM driver is reached through mlp._run_gemm
# (an overload resolved by dtype at typing time) rather than captured in a closure,
# whose dispatcher would pickle with a per-process uuid into the cache key and be
# compiled again by every process (~5 s at the CNN demo's start).
@numba.njit(cache=True, nogil=True, parallel=True)
def _blocks_parallel(x, kh, kw, weights, geometry, out_h, out_w, bias, act, zf, out, rows,
                     cols_all, work_all, n_threads):
    """zf := cols(x)·weights (+ bias), out := act(zf), one row block per task (serial GEMM in each).

    cols_all, work_all: MAX_THREADS equal slots, one per thread (gathered block, GEMM packing).
    """
    set_threads(n_threads)
    m, k = zf.shape[0], weights.shape[0]
    cols_slot = cols_all.shape[0] // MAX_THREADS
    work_slot = work_all.shape[0] // MAX_THREADS
    n_blocks = -(-m // rows)
    # Blocks taken from a counter (a thread without a core takes fewer), each timed
    # for the busy-machine back-off; rows are independent, so the bits do not change.
    counter = np.zeros(1, dtype=np.int64)
    stats = np.zeros(2 * n_threads)
    t_start = monotonic_seconds()
    for t in prange(n_threads):
        while True:
            s = fetch_add(counter, 1)
            if s >= n_blocks:
                break
            t_task = monotonic_seconds()
            r0 = s * rows
            rr = min(rows, m - r0)
            cols = cols_all[t * cols_slot:t * cols_slot + rr * k].reshape(rr, k)
            _im2col_serial(x, kh, kw, geometry, out_h, out_w, r0, cols, 1)
            _run_gemm(cols, weights, zf[r0:r0 + rr], out[r0:r0 + rr], bias, 0.0, act, 1,
                      work_all[t * work_slot:(t + 1) * work_slot])
            stats[2 * t] += monotonic_seconds() - t_task
            stats[2 * t + 1] += 1
    judge_by_busiest(monotonic_seconds() - t_start, stats, n_threads, n_blocks)


@numba.njit(cache=True, nogil=True, parallel=True)
def _col2im_blocks_parallel(delta, weights_t, kh, kw, geometry, out_h, out_w, images, empty, dx,
                            cols_all, work_all, n_threads):
    """dx += col2im(δ·Wᵀ), one block of ``images`` whole images per task: its dcols by a serial
    GEMM into the thread's own slot, then scattered into its images of dx.

    IN delta (n·out_h·out_w, f), weights_t (f, kh·kw·c) (Wᵀ, any strides), empty (0,) (no bias);
    IN/OUT dx (n, h, w, c). cols_all, work_all: MAX_THREADS equal slots, one per thread (dcols block, GEMM packing).
    """
    set_threads(n_threads)
    k = weights_t.shape[1]
    pix = out_h * out_w
    m, rows = delta.shape[0], images * pix
    cols_slot = cols_all.shape[0] // MAX_THREADS
    work_slot = work_all.shape[0] // MAX_THREADS
    n_blocks = -(-dx.shape[0] // images)
    # Blocks taken from a counter (a thread without a core takes fewer), each timed for the
    # busy-machine back-off. No other block touches a block's images of dx, and each dx value
    # gets its terms in row order, as in the serial loop: the bits do not change.
    counter = np.zeros(1, dtype=np.int64)
    stats = np.zeros(2 * n_threads)
    t_start = monotonic_seconds()
    for t in prange(n_threads):
        while True:
            s = fetch_add(counter, 1)
            if s >= n_blocks:
                break
            t_task = monotonic_seconds()
            r0 = s * rows
            rr = min(rows, m - r0)
            cols = cols_all[t * cols_slot:t * cols_slot + rr * k].reshape(rr, k)
            _run_gemm(delta[r0:r0 + rr], weights_t, cols, cols, empty, 0.0, NO_ACTIVATION, 1,
                      work_all[t * work_slot:(t + 1) * work_slot])
            _col2im_rows(cols, kh, kw, geometry, out_h, out_w, r0, r0, r0 + rr, dx)
            stats[2 * t] += monotonic_seconds() - t_task
            stats[2 * t + 1] += 1
    judge_by_busiest(monotonic_seconds() - t_start, stats, n_threads, n_blocks)


def _col2im_block_images(n, pix, k, rows, n_threads):
    """Images per block of ``_col2im_blocks_parallel`` (the Cython backend's rule): blocks of whole
    images, at most ``rows`` output pixels (a workspace block), at least BLOCKS_PER_THREAD per
    thread, their count a multiple of n_threads; 0 where one image does not fit a block, there
    are too few images, or dcols (n·pix x k) has fewer than PARALLEL_MIN_VALUES values, below
    which col2im runs serial (as ``_col2im``). Each block's dcols GEMM (LeNet's 12x12x6 ->
    16@5x5: under 2^21 multiply-adds) is too small to share out, so the blocks are."""
    fit = rows // pix
    if n_threads < 2 or fit < 1 or n < 2 or n * pix * k < PARALLEL_MIN_VALUES:
        return 0
    n_blocks = max(-(-n // fit), BLOCKS_PER_THREAD * n_threads)
    n_blocks = -(-n_blocks // n_threads) * n_threads
    return max(1, -(-n // n_blocks))


def _gemm_work_size(dtype, n):
    """Values of the GEMM driver's workspace for one task with n columns (see gemm._gemm)."""
    MR, NR, KC, MC, NC = block_sizes(ISA, np.dtype(dtype).name)
    return KC * (-(-min(NC, n) // NR) * NR) + MC * KC + 2 * MR * NR


def _conv_gemm(x, kh, kw, weights, geometry, out_h, out_w, bias, epilogue_act, zf, out, n_threads):
    """zf := cols(x)·weights (+ bias); out := act(zf) per tile, block by block through the workspace.

    IN x (n, h, w, c), weights (kh·kw·c, f); OUT zf, out (n·out_h·out_w, f), may be the same.
    """
    m, k = zf.shape[0], weights.shape[0]
    if _pointwise(kh, kw, geometry, x.shape, (x.shape[0], out_h, out_w)):
        run_driver(x.reshape(m, k), weights, zf, out, bias, 1.0, 0.0, epilogue_act, n_threads)
        return
    rows = _block_rows(k, m)
    if n_threads > 1 and -(-m // rows) >= BLOCKS_PER_THREAD * n_threads:
        cols_all = _workspace(MAX_THREADS * rows * k, x.dtype, "blocks")
        work_all = _workspace(MAX_THREADS * _gemm_work_size(x.dtype, zf.shape[1]), x.dtype, "gemm")
        _blocks_parallel(x, kh, kw, weights, geometry, out_h, out_w, bias, epilogue_act, zf, out, rows,
                         cols_all, work_all, n_threads)
        return
    buf = _workspace(rows * k, x.dtype)
    for r0 in range(0, m, rows):
        rr = min(rows, m - r0)
        cols = buf[:rr * k].reshape(rr, k)
        _im2col(x, kh, kw, geometry, out_h, out_w, r0, cols, n_threads)
        run_driver(cols, weights, zf[r0:r0 + rr], out[r0:r0 + rr], bias, 1.0, 0.0, epilogue_act, n_threads)


def conv2d_forward(x, w, bias, geometry, act, z, a, n_threads):
    """z := conv(x, w) + bias; a := act(z).

    IN x (n, h, w, c_in), w (kh, kw, c_in, c_out), bias (c_out,);
    OUT z, a (n, out_h, out_w, c_out), may be the same array.
    """
    n_threads = gemm_threads_now(clamp_threads(n_threads))  # one thread while the busy-machine back-off lasts
    x, w, bias = writable(x), writable(w), writable(bias)
    geometry = _geometry(geometry)
    kh, kw, c, f = w.shape
    n, out_h, out_w, _ = z.shape
    m = n * out_h * out_w
    zf, af = z.reshape(m, f), a.reshape(m, f)
    if act == R.SOFTMAX or (act == R.IDENTITY and a is z):
        epilogue_act, out = NO_ACTIVATION, zf
    else:
        epilogue_act, out = act, af
    _conv_gemm(x, kh, kw, w.reshape(kh * kw * c, f), geometry, out_h, out_w, bias, epilogue_act, zf, out, n_threads)
    if act == R.SOFTMAX:
        _activation_forward(act, zf, af, n_threads)


_flipped = threading.local()


def _gather_dx(delta4, w, geometry, dx, n_threads):
    """dx := δ convolved (stride 1) with w flipped and its channel axes swapped, padded by the
    kernel's span less the forward's padding: the transposed convolution as a gather."""
    sh, sw, pt, pl, dh, dw = geometry
    kh, kw, c, f = w.shape
    cache = _flipped.__dict__
    buf = cache.get(w.dtype)
    if buf is None or buf.shape[0] < w.size:
        buf = cache[w.dtype] = np.empty(w.size, w.dtype)
    flipped = buf[:w.size].reshape(kh, kw, f, c)
    flipped[...] = w[::-1, ::-1].transpose(0, 1, 3, 2)
    n, h, wd, _ = dx.shape
    transposed = (1, 1, dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh, dw)
    dxf = dx.reshape(n * h * wd, c)
    _conv_gemm(delta4, kh, kw, flipped.reshape(kh * kw * f, c), transposed, h, wd, no_bias(dx.dtype),
               NO_ACTIVATION, dxf, dxf, n_threads)


def conv2d_backward(x, w, z, a, grad_a, act, geometry, grad_z, dw, db, dx, compute_dx, accumulate, n_threads):
    """grad_z := grad_a ⊙ act'(z); dw (+)= colsᵀ·grad_z; db (+)= Σ_pixels grad_z; dx := col2im(grad_z·wᵀ).

    IN x (n, h, w, c_in), w (kh, kw, c_in, c_out), z, a, grad_a (n, out_h, out_w, c_out);
    OUT grad_z like z (may alias grad_a), dw like w, db (c_out,) (accumulated into when
    accumulate), dx like x (untouched, may be None, unless compute_dx).
    """
    n_threads = gemm_threads_now(clamp_threads(n_threads))  # one thread while the busy-machine back-off lasts
    x, w = writable(x), writable(w)
    geometry = _geometry(geometry)
    sh, sw, pt, pl, dh, dw_ = geometry
    kh, kw, c, f = w.shape
    n, out_h, out_w, _ = z.shape
    m, k = n * out_h * out_w, kh * kw * c
    weights, dweights = w.reshape(k, f), dw.reshape(k, f)
    delta = grad_z.reshape(m, f)
    _activation_backward(act, writable(z).reshape(m, f), writable(a).reshape(m, f),
                         writable(grad_a).reshape(m, f), delta, n_threads)
    _column_sums(delta, db, bool(accumulate), n_threads)
    beta = 1.0 if accumulate else 0.0
    if _pointwise(kh, kw, geometry, x.shape, z.shape):
        xf = x.reshape(m, k)
        gemm(xf.T, delta, dweights, 1.0, beta, n_threads)
        if compute_dx:
            gemm(delta, weights.T, dx.reshape(m, k), 1.0, 0.0, n_threads)
        return
    gather = (compute_dx and sh == 1 and sw == 1 and pt <= dh * (kh - 1) and pl <= dw_ * (kw - 1)
              and c >= GATHER_MIN_CHANNELS)
    scatter = compute_dx and not gather
    if scatter:
        dx.fill(0)
    rows = _block_rows(k, m)
    # dx by col2im: where blocks can hold whole images, after dW, one block per task (see there)
    images = _col2im_block_images(n, out_h * out_w, k, rows, n_threads) if scatter else 0
    buf = _workspace(rows * k, x.dtype)
    for r0 in range(0, m, rows):
        rr = min(rows, m - r0)
        cols = buf[:rr * k].reshape(rr, k)
        _im2col(x, kh, kw, geometry, out_h, out_w, r0, cols, n_threads)
        gemm(cols.T, delta[r0:r0 + rr], dweights, 1.0, beta if r0 == 0 else 1.0, n_threads)
        if scatter and not images:
            gemm(delta[r0:r0 + rr], weights.T, cols, 1.0, 0.0, n_threads)
            _col2im(cols, kh, kw, geometry, out_h, out_w, r0, dx, n_threads)
    if images:
        cols_all = _workspace(MAX_THREADS * rows * k, x.dtype, "blocks")
        work_all = _workspace(MAX_THREADS * _gemm_work_size(x.dtype, k), x.dtype, "gemm")
        _col2im_blocks_parallel(delta, weights.T, kh, kw, geometry, out_h, out_w, images, no_bias(x.dtype), dx,
                                cols_all, work_all, n_threads)
    if gather:
        _gather_dx(grad_z, w, geometry, dx, n_threads)

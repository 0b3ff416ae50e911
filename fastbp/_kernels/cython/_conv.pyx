# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""2-D convolution, channels-last, forward and backward, float32 and float64."""
# Design: a convolution is a GEMM over output pixels. With images (n, h, w, c_in)
# and weights (kh, kw, c_in, c_out), row r of the image-to-column matrix
# ``cols`` (n·out_h·out_w, kh·kw·c_in) is output pixel r's receptive field in
# (kh, kw, c_in) order, so that  z = cols·W + b  with W = w.reshape(K, c_out).
# The whole cols matrix is never built: rows are gathered a block at a time
# (CHUNK_VALUES values, a multiple of ROW_ALIGN rows) into a per-thread
# workspace kept between calls (conv_workspace.h), and fastbp's GEMM
# (gemm_nogil, with its bias + activation epilogue on each tile) runs on each
# block: in forward, the threads take whole blocks dynamically (gather and
# one-thread GEMM on their own core, one parallel region per call, timed for
# the busy-machine back-off) when there are enough of them, else each block's
# gather and GEMM use all the threads. A 1x1 kernel with stride 1 and no
# padding skips the gather (x is the matrix). The gather is C (conv_gather.h).
#   forward:  per block, cols := im2col(x); z[block] := cols·W + b; a := act(z)
#   backward: δ := grad_a ⊙ act'(z) (row-parallel); db := Σ_rows δ (serial,
#             float64 accumulators, row order); dW: the row blocks are cut into
#             DW_GROUPS fixed runs, shared out among the threads; a thread sums
#             colsᵀ·δ[block] over a run's blocks in order into that run's
#             partial (gather and one-thread GEMM on its own core), and the
#             partials are added in run order. dx, with stride 1, is itself a
#             convolution (a gather, as forward): δ with the kernel flipped and
#             its channel axes swapped, padded by the kernel's span less the
#             forward's padding. Otherwise, per block: dcols := δ[block]·Wᵀ into
#             the workspace; dx += col2im(dcols), the rows of one image on one
#             thread, in row order. Where blocks can hold whole images, each
#             block (its GEMM on one thread, then its scatter) is one task, the
#             blocks shared out among the threads: their images of dx are
#             disjoint, so no two threads add to one value.
# Determinism: block and run boundaries depend on the shapes only; every dW
# value is summed over the blocks of a run in order, inside a block by a
# one-thread GEMM, and over the runs in order; dx is a GEMM (gathered) or gets its terms in row order (col2im).
# So the results are bitwise the same for any n_threads.
# This is the "blocked im2col + GEMM" form. For float32 with at most
# blocking.DIRECT_MAX_PANELS column panels (up to 64 output channels on
# AVX-512) the GEMM reads the gathered block unpacked, so the gather is the
# only copy of A; otherwise the block is packed again (fusing the gather into
# the packing of A would need a new packing entry point in _gemm.pyx).

from cython.parallel cimport parallel, prange, threadid
from cython cimport floating
from libc.string cimport memcpy, memset

from fastbp._kernels.cython._gemm cimport gemm_nogil, isa_is_avx512
from fastbp._kernels.cython._threads cimport gemm_threads_now, judge_by_busiest
from fastbp._kernels.cython._activations cimport (
    ACT_IDENTITY, ACT_SOFTMAX, N_ACTIVATIONS,
    activation_backward_nogil, activation_forward_nogil,
)

cdef extern from "conv_gather.h" nogil:
    ctypedef struct fastbp_conv_shape:
        Py_ssize_t h, w, c, kh, kw, out_h, out_w, sh, sw, pt, pl, dh, dw
    void fastbp_im2col_rows_s(int avx512, const fastbp_conv_shape* g, const float* x, Py_ssize_t r0,
                              Py_ssize_t r1, float* dst)
    void fastbp_im2col_rows_d(int avx512, const fastbp_conv_shape* g, const double* x, Py_ssize_t r0,
                              Py_ssize_t r1, double* dst)

cdef extern from "microkernels.h" nogil:
    double fastbp_now()

cdef extern from "conv_workspace.h" nogil:
    void* fastbp_conv_workspace(size_t nbytes)
    void fastbp_conv_workspace_release(void* p, size_t nbytes)

# Block sizes and thread thresholds, from fastbp._kernels.blocking (CONV_* and
# PARALLEL_MIN_ELEMENTS, set by _configure): see there.
cdef Py_ssize_t CHUNK_VALUES = 1 << 17
cdef Py_ssize_t ROW_ALIGN = 48
cdef Py_ssize_t PARALLEL_MIN_VALUES = 1 << 15
cdef Py_ssize_t BLOCKS_PER_THREAD = 2
cdef Py_ssize_t DW_GROUPS = 8
cdef Py_ssize_t GATHER_MIN_CHANNELS = 16


def _configure(Py_ssize_t block_values, Py_ssize_t row_align, Py_ssize_t parallel_min_values,
               Py_ssize_t blocks_per_thread, Py_ssize_t dw_groups, Py_ssize_t gather_min_channels):
    """Set blocking.CONV_BLOCK_VALUES, CONV_ROW_ALIGN, PARALLEL_MIN_ELEMENTS, CONV_BLOCKS_PER_THREAD,
    CONV_DW_GROUPS and CONV_GATHER_MIN_CHANNELS."""
    global CHUNK_VALUES, ROW_ALIGN, PARALLEL_MIN_VALUES, BLOCKS_PER_THREAD, DW_GROUPS, GATHER_MIN_CHANNELS
    if min(block_values, row_align, parallel_min_values, blocks_per_thread, dw_groups) < 1:
        raise ValueError(f"convolution sizes must be positive, got {block_values}, {row_align}, "
                         f"{parallel_min_values}, {blocks_per_thread}, {dw_groups}")
    CHUNK_VALUES, ROW_ALIGN, PARALLEL_MIN_VALUES = block_values, row_align, parallel_min_values
    BLOCKS_PER_THREAD, DW_GROUPS, GATHER_MIN_CHANNELS = blocks_per_thread, dw_groups, gather_min_channels


cdef struct Geometry:
    Py_ssize_t n, h, w, c, kh, kw, f, out_h, out_w, sh, sw, pt, pl, dh, dw


cdef inline bint _pointwise(Geometry* g) noexcept nogil:
    """True when cols is x itself: a 1x1 kernel, stride 1, no padding."""
    return (g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 and g.pl == 0
            and g.out_h == g.h and g.out_w == g.w)


cdef inline Py_ssize_t _block_rows(Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t rows = (CHUNK_VALUES // k) // ROW_ALIGN * ROW_ALIGN
    return min(max(rows, <Py_ssize_t>ROW_ALIGN), m)


cdef inline void _gather_rows(Geometry* g, const floating* x, Py_ssize_t r0, Py_ssize_t r1,
                              floating* dst) noexcept nogil:
    """dst[0:r1-r0] := the receptive fields (kh·kw·c each) of output pixels r0 .. r1-1, zeros outside x;
    the short copies as masked AVX-512 loads and stores where the GEMM runs AVX-512."""
    cdef fastbp_conv_shape shape
    shape.h, shape.w, shape.c, shape.kh, shape.kw = g.h, g.w, g.c, g.kh, g.kw
    shape.out_h, shape.out_w, shape.sh, shape.sw = g.out_h, g.out_w, g.sh, g.sw
    shape.pt, shape.pl, shape.dh, shape.dw = g.pt, g.pl, g.dh, g.dw
    if floating is float:
        fastbp_im2col_rows_s(isa_is_avx512(), &shape, x, r0, r1, dst)
    else:
        fastbp_im2col_rows_d(isa_is_avx512(), &shape, x, r0, r1, dst)


cdef void _im2col(Geometry* g, const floating* x, Py_ssize_t r0, Py_ssize_t rows,
                  floating* cols, int n_threads) noexcept nogil:
    """cols[0:rows] := receptive fields of output pixels r0 .. r0+rows-1 (n_threads parts of rows)."""
    cdef Py_ssize_t t, lo, hi, k = g.kh * g.kw * g.c
    if n_threads > 1 and rows * k >= PARALLEL_MIN_VALUES:
        for t in prange(n_threads, schedule="static", nogil=True, num_threads=n_threads):
            lo = t * rows // n_threads
            hi = (t + 1) * rows // n_threads
            _gather_rows(g, x, r0 + lo, r0 + hi, cols + lo * k)
    else:
        _gather_rows(g, x, r0, r0 + rows, cols)


cdef void _col2im_rows(Geometry* g, const floating* dcols, Py_ssize_t r0, Py_ssize_t lo, Py_ssize_t hi,
                       floating* dx) noexcept nogil:
    """dx += the receptive-field values dcols[r - r0] of output pixels lo .. hi-1 (one image), in row order."""
    cdef Py_ssize_t pix = g.out_h * g.out_w, k = g.kh * g.kw * g.c
    cdef Py_ssize_t r, img, oh, ow, p, q, q0, q1, ih, iw0, ch
    cdef const floating* src
    cdef floating* dst
    for r in range(lo, hi):
        img = r // pix
        oh = (r % pix) // g.out_w
        ow = r % g.out_w
        iw0 = ow * g.sw - g.pl  # input column of kernel column 0
        # kernel columns whose input column lies inside the image: [q0, q1)
        q0 = 0 if iw0 >= 0 else (-iw0 + g.dw - 1) // g.dw
        q1 = min(g.kw, (g.w - iw0 + g.dw - 1) // g.dw) if g.w > iw0 else 0
        for p in range(g.kh):
            ih = oh * g.sh - g.pt + p * g.dh
            if ih < 0 or ih >= g.h or q1 <= q0:
                continue
            src = dcols + (r - r0) * k + (p * g.kw + q0) * g.c
            dst = dx + ((img * g.h + ih) * g.w + iw0 + q0 * g.dw) * g.c
            if g.dw == 1:  # the run's columns are adjacent pixels: one contiguous run of values
                for ch in range((q1 - q0) * g.c):
                    dst[ch] = dst[ch] + src[ch]
            else:
                for q in range(q1 - q0):
                    for ch in range(g.c):
                        dst[q * g.dw * g.c + ch] = dst[q * g.dw * g.c + ch] + src[q * g.c + ch]


cdef void _col2im(Geometry* g, const floating* dcols, Py_ssize_t r0, Py_ssize_t rows,
                  floating* dx, int n_threads) noexcept nogil:
    """dx += col2im(dcols[0:rows]) for output pixels r0 .. r0+rows-1; one image per task."""
    cdef Py_ssize_t pix = g.out_h * g.out_w, k = g.kh * g.kw * g.c
    cdef Py_ssize_t img, img0 = r0 // pix, img1 = (r0 + rows - 1) // pix + 1
    if n_threads > 1 and img1 - img0 > 1 and rows * k >= PARALLEL_MIN_VALUES:
        for img in prange(img0, img1, schedule="static", nogil=True, num_threads=n_threads):
            _col2im_rows(g, dcols, r0, max(r0, img * pix), min(r0 + rows, (img + 1) * pix), dx)
    else:
        _col2im_rows(g, dcols, r0, r0, r0 + rows, dx)


cdef Py_ssize_t _col2im_block_images(Geometry* g, Py_ssize_t rows, int n_threads) noexcept nogil:
    """Images per block of col2im's _blocks_parallel: blocks of whole images, at most ``rows``
    output pixels (the workspace's block), at least BLOCKS_PER_THREAD per thread, their count
    a multiple of n_threads; 0 where one image does not fit a block or there are too few."""
    cdef Py_ssize_t pix = g.out_h * g.out_w, fit = rows // pix, n_blocks
    if n_threads < 2 or fit < 1 or g.n < 2:
        return 0
    n_blocks = max((g.n + fit - 1) // fit, BLOCKS_PER_THREAD * n_threads)
    n_blocks = (n_blocks + n_threads - 1) // n_threads * n_threads
    return max(1, (g.n + n_blocks - 1) // n_blocks)


cdef void _column_sums(const floating* grad, Py_ssize_t m, Py_ssize_t f, double* acc,
                       floating* db, bint accumulate) noexcept nogil:
    """db := Σ_rows grad (+ db), float64 accumulators, rows in order.  IN grad (m, f); OUT db (f,)."""
    cdef Py_ssize_t i, j
    for j in range(f):
        acc[j] = 0.0
    for i in range(m):
        for j in range(f):
            acc[j] += grad[i * f + j]
    for j in range(f):
        db[j] = <floating>(acc[j] + db[j]) if accumulate else <floating>acc[j]


cdef int _block_task(Geometry* g, bint forward, const floating* src, const floating* w, const floating* bias,
                     int act, floating* z, floating* a, Py_ssize_t r0, Py_ssize_t rr,
                     floating* mine) noexcept nogil:
    """One block of output pixels r0 .. r0+rr-1 on the calling thread, through its workspace
    ``mine``. forward: z := cols(x)·W (+ bias), a := act(z) (src is x). Otherwise dx (z) +=
    col2im(δ·Wᵀ) (src is δ; the block holds whole images). Returns 0 or -1."""
    cdef Py_ssize_t k = g.kh * g.kw * g.c, f = g.f
    cdef int status
    if forward:
        _im2col(g, src, r0, rr, mine, 1)
        return gemm_nogil(rr, f, k, <floating>1, mine, k, 1, w, f, 1, <floating>0, z + r0 * f, f,
                          bias, act, (a + r0 * f) if act >= 0 else NULL, f, 1)
    # dcols := δ[block]·Wᵀ (W read through swapped strides), then scattered into dx
    status = gemm_nogil(rr, k, f, <floating>1, src + r0 * f, f, 1, w, 1, f, <floating>0, mine, k,
                        NULL, -1, NULL, 0, 1)
    _col2im_rows(g, mine, r0, r0, r0 + rr, z)
    return status


cdef int _blocks_parallel(Geometry* g, bint forward, const floating* src, const floating* w,
                          const floating* bias, int act, floating* z, floating* a, floating* cols,
                          Py_ssize_t rows, int n_threads) noexcept nogil:
    """_block_task on every block of ``rows`` output pixels, one block per task: each thread
    works in its own workspace (thread 0, the caller, in ``cols``) while the block is in its
    L2, one parallel region per call, no barrier per block. Forward rows are independent;
    col2im's blocks hold whole images, whose dx no other block touches. So the bits are those
    of the serial loop. Returns 0 or -1."""
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c
    cdef Py_ssize_t s, r0, rr, tid, n_blocks = (m + rows - 1) // rows
    cdef size_t nbytes = rows * k * sizeof(floating)
    cdef floating* mine
    cdef int failed = 0
    cdef double stats[128]  # per thread: seconds in blocks, blocks (for the back-off's verdict)
    cdef double t_start = fastbp_now(), t_task
    for tid in range(128):
        stats[tid] = 0
    with parallel(num_threads=n_threads):
        mine = cols if threadid() == 0 else <floating*>fastbp_conv_workspace(nbytes)
        for s in prange(n_blocks, schedule="dynamic"):  # a thread without a core takes fewer
            if mine == NULL:
                failed += 1
                continue
            t_task = fastbp_now()
            r0 = s * rows
            rr = min(rows, m - r0)
            failed += _block_task(g, forward, src, w, bias, act, z, a, r0, rr, mine) != 0
            tid = min(threadid(), 63)
            stats[2 * tid] += fastbp_now() - t_task
            stats[2 * tid + 1] += 1
        if mine != NULL and mine != cols:
            fastbp_conv_workspace_release(mine, nbytes)
    judge_by_busiest(fastbp_now() - t_start, stats, n_threads, n_blocks)
    return -1 if failed else 0


cdef int _conv_gemm(Geometry* g, const floating* x, const floating* w, const floating* bias,
                    int epilogue_act, floating* z, floating* a, floating* cols, int n_threads) noexcept nogil:
    """z := cols(x)·W (+ bias); a := act(z) per tile (epilogue_act >= 0), block by block through ``cols``.

    cols holds _block_rows(K, m)·K values (unused for a pointwise convolution). With
    at least BLOCKS_PER_THREAD blocks per thread, the blocks are shared out among
    the threads; otherwise each block's GEMM runs on all of them. Returns 0 or -1.
    """
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c, f = g.f
    cdef Py_ssize_t rows, s, r0, rr
    cdef int status = 0
    if _pointwise(g):
        return gemm_nogil(m, f, k, <floating>1, x, k, 1, w, f, 1, <floating>0, z, f,
                          bias, epilogue_act, a, f, n_threads)
    rows = _block_rows(k, m)
    if n_threads > 1 and (m + rows - 1) // rows >= BLOCKS_PER_THREAD * n_threads:
        return _blocks_parallel(g, True, x, w, bias, epilogue_act, z, a, cols, rows, n_threads)
    for s in range((m + rows - 1) // rows):
        r0 = s * rows
        rr = min(rows, m - r0)
        _im2col(g, x, r0, rr, cols, n_threads)
        status = gemm_nogil(rr, f, k, <floating>1, cols, k, 1, w, f, 1, <floating>0, z + r0 * f, f,
                            bias, epilogue_act, (a + r0 * f) if epilogue_act >= 0 else NULL, f, n_threads)
        if status != 0:
            break
    return status


cdef int conv2d_forward_nogil(Geometry* g, const floating* x, const floating* w, const floating* bias,
                              int act, floating* z, floating* a, int n_threads) noexcept nogil:
    """z := conv(x, w) + bias; a := act(z).  Returns 0, or -1 when a workspace cannot be allocated."""
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c
    cdef int epilogue_act = act, status
    n_threads = <int>gemm_threads_now(n_threads)  # one thread while the busy-machine back-off lasts
    cdef size_t nbytes = _block_rows(k, m) * k * sizeof(floating)
    cdef floating* cols = <floating*>fastbp_conv_workspace(nbytes)
    if cols == NULL:
        return -1
    if act == ACT_SOFTMAX or (act == ACT_IDENTITY and a == z):
        epilogue_act = -1
    status = _conv_gemm(g, x, w, bias, epilogue_act, z, a, cols, n_threads)
    fastbp_conv_workspace_release(cols, nbytes)
    if status == 0 and act == ACT_SOFTMAX:
        activation_forward_nogil(ACT_SOFTMAX, z, a, m, g.f, n_threads)
    return status


cdef inline bint _gather_dx(Geometry* g) noexcept nogil:
    """True when dx is a stride-1 convolution of δ (padded by the kernel's span less the padding)."""
    return (g.sh == 1 and g.sw == 1 and g.pt <= g.dh * (g.kh - 1) and g.pl <= g.dw * (g.kw - 1)
            and g.c >= GATHER_MIN_CHANNELS)


cdef void _transposed_geometry(Geometry* g, Geometry* t) noexcept nogil:
    """t: the convolution of δ (n, out_h, out_w, c_out) with the flipped kernel giving dx (n, h, w, c_in)."""
    t.n, t.h, t.w, t.c = g.n, g.out_h, g.out_w, g.f
    t.kh, t.kw, t.f = g.kh, g.kw, g.c
    t.out_h, t.out_w = g.h, g.w
    t.sh, t.sw, t.dh, t.dw = 1, 1, g.dh, g.dw
    t.pt, t.pl = g.dh * (g.kh - 1) - g.pt, g.dw * (g.kw - 1) - g.pl


cdef void _flip_weights(Geometry* g, const floating* w, floating* wt) noexcept nogil:
    """wt[p, q, j, c] := w[kh-1-p, kw-1-q, c, j]: (kh, kw, c_out, c_in), the transposed convolution's kernel."""
    cdef Py_ssize_t p, q, c, j, c_in = g.c, f = g.f
    cdef const floating* src
    cdef floating* dst
    for p in range(g.kh):
        for q in range(g.kw):
            src = w + ((g.kh - 1 - p) * g.kw + (g.kw - 1 - q)) * c_in * f
            dst = wt + (p * g.kw + q) * f * c_in
            for c in range(c_in):
                for j in range(f):
                    dst[j * c_in + c] = src[c * f + j]


cdef int _dw_group(Geometry* g, const floating* x, const floating* delta, Py_ssize_t rows,
                   Py_ssize_t b0, Py_ssize_t b1, floating* cols, floating* part) noexcept nogil:
    """part := Σ over row blocks b0 .. b1-1, in order, of colsᵀ·δ[block] (one-thread GEMMs). Returns 0 or -1."""
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c, f = g.f
    cdef Py_ssize_t s, r0, rr
    cdef int status = 0
    for s in range(b0, b1):
        r0 = s * rows
        rr = min(rows, m - r0)
        _im2col(g, x, r0, rr, cols, 1)
        # cols read through swapped strides: colsᵀ
        status = gemm_nogil(k, f, rr, <floating>1, cols, 1, k, delta + r0 * f, f, 1,
                            <floating>(0 if s == b0 else 1), part, f, NULL, -1, NULL, 0, 1)
        if status != 0:
            break
    return status


cdef inline Py_ssize_t _dw_groups(Py_ssize_t n_blocks) noexcept nogil:
    return min(DW_GROUPS, n_blocks)


cdef int _dw_grouped(Geometry* g, const floating* x, const floating* delta, Py_ssize_t rows,
                     floating* cols, floating* parts, floating* dw, bint accumulate, int n_threads) noexcept nogil:
    """dw (+)= colsᵀ·δ: a partial sum per group of row blocks (groups shared out among the
    threads), then the partials added in group order. Returns 0 or -1."""
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c, f = g.f
    cdef Py_ssize_t n_blocks = (m + rows - 1) // rows, n_groups = _dw_groups(n_blocks), gi, i
    cdef size_t nbytes = rows * k * sizeof(floating)
    cdef floating* mine
    cdef floating v
    cdef int failed = 0
    cdef Py_ssize_t tid
    cdef double stats[128]  # per thread: seconds in groups, groups (for the back-off's verdict)
    cdef double t_start, t_task
    if n_threads > 1 and n_groups > 1:
        for tid in range(128):
            stats[tid] = 0
        t_start = fastbp_now()
        with parallel(num_threads=n_threads):
            mine = cols if threadid() == 0 else <floating*>fastbp_conv_workspace(nbytes)
            for gi in prange(n_groups, schedule="dynamic"):  # each group its own partial: any order
                if mine == NULL:
                    failed += 1
                    continue
                t_task = fastbp_now()
                failed += _dw_group(g, x, delta, rows, gi * n_blocks // n_groups, (gi + 1) * n_blocks // n_groups,
                                    mine, parts + gi * k * f) != 0
                tid = min(threadid(), 63)
                stats[2 * tid] += fastbp_now() - t_task
                stats[2 * tid + 1] += 1
            if mine != NULL and mine != cols:
                fastbp_conv_workspace_release(mine, nbytes)
        judge_by_busiest(fastbp_now() - t_start, stats, n_threads, n_groups)
    else:
        for gi in range(n_groups):
            failed += _dw_group(g, x, delta, rows, gi * n_blocks // n_groups, (gi + 1) * n_blocks // n_groups,
                                cols, parts + gi * k * f) != 0
    if failed:
        return -1
    for i in range(k * f):
        v = parts[i]
        for gi in range(1, n_groups):
            v = v + parts[gi * k * f + i]
        dw[i] = v + dw[i] if accumulate else v
    return 0


cdef int conv2d_backward_nogil(Geometry* g, const floating* x, const floating* w,
                               const floating* z, const floating* a, const floating* grad_a, int act,
                               floating* grad_z, floating* dw, floating* db, floating* dx,
                               bint accumulate, int n_threads) noexcept nogil:
    """δ := grad_a ⊙ act'(z); dw (+)= colsᵀ·δ; db (+)= Σ_rows δ; dx := col2im(δ·Wᵀ) unless dx is NULL.

    Returns 0, or -1 when a workspace cannot be allocated.
    """
    cdef Py_ssize_t m = g.n * g.out_h * g.out_w, k = g.kh * g.kw * g.c, f = g.f
    cdef Py_ssize_t rows, s, r0, rr, images, acc_values = (f + 7) // 8 * 8, col_values, flip_values = 0
    cdef Py_ssize_t part_values = 0
    cdef floating beta = 1 if accumulate else 0
    cdef int status = 0
    cdef bint pointwise = _pointwise(g), gather = dx != NULL and _gather_dx(g)
    cdef Geometry t
    cdef size_t nbytes
    cdef double* acc
    cdef floating* flipped
    cdef floating* parts
    cdef floating* cols
    n_threads = <int>gemm_threads_now(n_threads)  # one thread while the busy-machine back-off lasts
    activation_backward_nogil(act, z, a, grad_a, grad_z, m, f, n_threads)
    rows = 0 if pointwise else _block_rows(k, m)
    col_values = rows * k
    _transposed_geometry(g, &t)
    if gather:  # the transposed convolution's blocks share the workspace
        col_values = max(col_values, _block_rows(g.kh * g.kw * f, g.n * g.h * g.w) * g.kh * g.kw * f)
        flip_values = (k * f + 15) // 16 * 16
    if not pointwise:
        part_values = _dw_groups((m + rows - 1) // rows) * k * f
    nbytes = acc_values * sizeof(double) + (flip_values + part_values + col_values) * sizeof(floating)
    acc = <double*>fastbp_conv_workspace(nbytes)
    if acc == NULL:
        return -1
    flipped = <floating*>(acc + acc_values)
    parts = flipped + flip_values
    cols = parts + part_values
    _column_sums(grad_z, m, f, acc, db, accumulate)
    if pointwise:
        status = gemm_nogil(k, f, m, <floating>1, x, 1, k, grad_z, f, 1, beta, dw, f, NULL, -1, NULL, 0, n_threads)
        if status == 0 and dx != NULL:
            status = gemm_nogil(m, k, f, <floating>1, grad_z, f, 1, w, 1, f, <floating>0, dx, k,
                                NULL, -1, NULL, 0, n_threads)
        fastbp_conv_workspace_release(acc, nbytes)
        return status
    status = _dw_grouped(g, x, grad_z, rows, cols, parts, dw, accumulate, n_threads)
    if status == 0 and gather:
        # dx := δ convolved with the flipped, transposed kernel (a gather: no scatter, no zeroing)
        _flip_weights(g, w, flipped)
        status = _conv_gemm(&t, grad_z, flipped, NULL, -1, dx, dx, cols, n_threads)
    elif status == 0 and dx != NULL:
        memset(dx, 0, g.n * g.h * g.w * g.c * sizeof(floating))
        images = _col2im_block_images(g, rows, n_threads)
        if images > 0:  # the blocks' dx do not overlap: one block per task, on one thread each
            status = _blocks_parallel(g, False, grad_z, w, NULL, -1, dx, NULL, cols,
                                      images * g.out_h * g.out_w, n_threads)
            fastbp_conv_workspace_release(acc, nbytes)
            return status
        for s in range((m + rows - 1) // rows):
            r0 = s * rows
            rr = min(rows, m - r0)
            # dcols := δ·Wᵀ (W read through swapped strides), then scattered into dx
            status = gemm_nogil(rr, k, f, <floating>1, grad_z + r0 * f, f, 1, w, 1, f, <floating>0, cols, k,
                                NULL, -1, NULL, 0, n_threads)
            if status != 0:
                break
            _col2im(g, cols, r0, rr, dx, n_threads)
    fastbp_conv_workspace_release(acc, nbytes)
    return status


# ---------------------------------------------------------------- Python API
cdef int _geometry(Geometry* g, tuple geometry, tuple x_shape, tuple w_shape, tuple z_shape) except -1:
    """Fill g from the shapes and (stride_h, stride_w, pad_top, pad_left, dilation_h, dilation_w)."""
    g.n, g.h, g.w, g.c = x_shape
    g.kh, g.kw, c_in, g.f = w_shape
    n, g.out_h, g.out_w, f = z_shape
    g.sh, g.sw, g.pt, g.pl, g.dh, g.dw = geometry
    if c_in != g.c or n != g.n or f != g.f:
        raise ValueError(f"conv2d: shapes x {x_shape}, w {w_shape}, output {z_shape} do not agree")
    # Every read of x is bounds-checked (padding is zeros), so any geometry is
    # memory-safe; what must hold is positive strides, dilations and sizes.
    if min(g.sh, g.sw, g.dh, g.dw) < 1 or min(g.pt, g.pl) < 0 or min(g.kh, g.kw, g.c) < 1:
        raise ValueError(f"conv2d: invalid geometry {geometry} for x {x_shape} and w {w_shape}")
    return 0


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w, const floating[::1] bias,
                   tuple geometry, int act, floating[:, :, :, ::1] z, floating[:, :, :, ::1] a, int n_threads):
    """z := conv(x, w) + bias; a := act(z).

    IN x (n, h, w, c_in), w (kh, kw, c_in, c_out), bias (c_out,);
    OUT z, a (n, out_h, out_w, c_out), may be the same array.
    """
    cdef Geometry g
    if act < 0 or act >= N_ACTIVATIONS:
        raise ValueError(f"unknown activation id {act}")
    _geometry(&g, geometry, tuple(x.shape)[:4], tuple(w.shape)[:4], tuple(z.shape)[:4])
    if tuple(a.shape)[:4] != tuple(z.shape)[:4] or bias.shape[0] != g.f:
        raise ValueError("conv2d_forward: a must have z's shape and bias (c_out,)")
    if g.n == 0 or g.f == 0:
        return
    cdef int status
    with nogil:
        status = conv2d_forward_nogil(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], &bias[0], act,
                                      &z[0, 0, 0, 0], &a[0, 0, 0, 0], n_threads)
    if status != 0:
        raise MemoryError("conv2d_forward: cannot allocate the workspace")


def conv2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                    const floating[:, :, :, ::1] z, const floating[:, :, :, ::1] a,
                    const floating[:, :, :, ::1] grad_a, int act, tuple geometry,
                    floating[:, :, :, ::1] grad_z, floating[:, :, :, ::1] dw, floating[::1] db,
                    floating[:, :, :, ::1] dx, bint compute_dx, bint accumulate, int n_threads):
    """Backward pass of conv2d_forward.

    grad_z := grad_a ⊙ act'(z) (may alias grad_a); dw := colsᵀ·grad_z (+ dw if
    accumulate); db := Σ_pixels grad_z (+ db); dx := col2im(grad_z·wᵀ) when
    compute_dx (dx may be None otherwise). IN x (n, h, w, c_in), w (kh, kw, c_in, c_out),
    z, a, grad_a (n, out_h, out_w, c_out); OUT grad_z like z, dw like w, db (c_out,), dx like x.
    """
    cdef Geometry g
    if act < 0 or act >= N_ACTIVATIONS:
        raise ValueError(f"unknown activation id {act}")
    shape = tuple(z.shape)[:4]
    _geometry(&g, geometry, tuple(x.shape)[:4], tuple(w.shape)[:4], shape)
    if (tuple(a.shape)[:4] != shape or tuple(grad_a.shape)[:4] != shape or tuple(grad_z.shape)[:4] != shape
            or tuple(dw.shape)[:4] != tuple(w.shape)[:4] or db.shape[0] != g.f
            or (compute_dx and (dx is None or tuple(dx.shape)[:4] != tuple(x.shape)[:4]))):
        raise ValueError("conv2d_backward: output shapes do not match x, w and z")
    if g.n == 0 or g.f == 0:
        return
    cdef floating* pdx = &dx[0, 0, 0, 0] if compute_dx else NULL
    cdef int status
    with nogil:
        status = conv2d_backward_nogil(&g, &x[0, 0, 0, 0], &w[0, 0, 0, 0], &z[0, 0, 0, 0], &a[0, 0, 0, 0],
                                       &grad_a[0, 0, 0, 0], act, &grad_z[0, 0, 0, 0], &dw[0, 0, 0, 0],
                                       &db[0], pdx, accumulate, n_threads)
    if status != 0:
        raise MemoryError("conv2d_backward: cannot allocate the workspace")

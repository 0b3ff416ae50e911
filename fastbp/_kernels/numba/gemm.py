"""BLIS-style cache-blocked GEMM with a fused bias + activation epilogue.

Design: five loops around a register-blocked micro-kernel (``microkernel.py``),
block sizes MR, NR, KC, MC, NC from the one table in ``blocking.py``:

    5th loop (jc, NC)   columns of C and B
    4th loop (pc, KC)   pack B[pc:pc+KC, jc:jc+NC] into NR-wide micro-panels
    3rd loop (ic, MC)   pack A[ic:ic+MC, pc:pc+KC] into MR-high micro-panels
    2nd loop (jr, NR)   micro-panels of packed B
    1st loop (ir, MR)   micro-panels of packed A -> micro-kernel on an MR x NR tile of C

Threads (the Cython backend's partition, from the same functions of
``blocking.py``): k is cut into near-equal KC slices (``kc_slices``), taken in
waves; per wave the threads pack B for all its slices (one prange), then take
tasks (``gemm_tasks``: row blocks, and column parts when rows are few,
~TASKS_PER_THREAD per thread) from an atomic counter, each running its slices in increasing order
with A packed into its thread's region. A thread that loses its core holds back
one task, not its static share; two parallel regions per wave (usually per
call). The thread count comes from the work (``gemm_threads``). The KC loop is
never split. Products whose smaller packed operand is small take the private
path (``private_split``, ``private_gemm``): each thread packs that operand for
itself on its first task and the tasks cut the other one, so no packed panel
moves between cores and there is no barrier inside the call. A B multiplied
many times (a recurrent weight, at every step) can be packed once in that
path's layout (``pack_b_once``) and used by the packed-B driver
(``_make_packed_b_driver``), whose tasks are the private path's, over rows;
each task ends with the caller's pass over its rows (``rows_done``: a
recurrent step's row pass, on the rows just computed, in the same region).

Epilogue: the micro-kernel applies alpha and beta on the registers (a later
KC slice passes beta = 1; edge tiles go through a buffer, ``store_edge_tile``);
after the last KC slice ``finish_tile`` adds the bias and writes act(z) while
the tile is still in L1, so the dense layer's forward is one pass over C.

Small products (at most DIRECT_MAX_MADDS multiply-adds) and float32 products
of at most DIRECT_MAX_PANELS NR-wide panels (any size), with SIMD, skip the
packing: ``direct_kernel_simd`` reads A in place (broadcasts, any strides) and
B's rows as masked vectors (B is copied row-major first if its columns are not
contiguous, when it has at most DIRECT_B_COPY_MAX values), over the same
MR x NR tiles and KC slices, so with the same bits; on several threads over
blocks of whole MR-row tiles.

Layout: A and B may have any strides (C, F, transposed, negative), read only
by the packing routines; C (z) and the activation output are C-contiguous and
read as flat arrays. Each driver is compiled once per dtype with an explicit
layout-'A' signature, so C-, F- and strided operands share one compilation.
The block sizes are closure constants of the driver, so they are baked into
the compiled code and part of Numba's cache key. That key hashes the pickled
closure, so the closure holds plain values only: a captured dispatcher pickles
with a per-process uuid, which made every process miss the cache and compile
the driver again (~10 s). Jitted helpers are module globals; ``direct_rows``
gets the block sizes as literal arguments.

Determinism: every C element is summed over k in KC slices in increasing
order, each slice in increasing k in one micro-kernel lane. Tasks only
partition C, so nothing numeric depends on the thread count or on which
thread takes a task.
"""

import threading

import numba
import numpy as np
from numba import prange, types

from ..blocking import (DIRECT_B_COPY_MAX, DIRECT_MAX_MADDS, DIRECT_MAX_PANELS, TASKS_PER_THREAD, block_sizes,
                        gemm_tasks, gemm_threads, kc_slices, private_split, wave_slices)
from .activations import activation_span
from .microkernel import direct_kernel_simd, micro_kernel_loops, micro_kernel_simd
from .packing import data_pointer, pack_a, pack_b_panel
from .. import registry as R
from ._arrays import writable
from ._threads import (ISA, VECTOR_LANES, clamp_threads, fetch_add, gemm_threads_now, judge_parallel_call,
                       monotonic_seconds, set_threads)

# The unpacked path (``direct_kernel_simd``) serves products whose packing would cost
# as much as their arithmetic: small ones (blocking.DIRECT_MAX_MADDS, below two
# threads' worth of GEMM_MADDS_PER_THREAD, so serial) and narrow float32 ones
# (blocking.DIRECT_MAX_PANELS), which a packed A would serve once or twice.
# ``act`` value of a plain GEMM: write C only, no activation output.
NO_ACTIVATION = -1
_RELU, _IDENTITY = R.RELU, R.IDENTITY

_jit = numba.njit(cache=True, nogil=True)
# The table's decisions (blocking.py), callable from jitted code.
gemm_threads_jitted = _jit(gemm_threads)
_kc_slices = _jit(kc_slices)
_gemm_tasks = _jit(gemm_tasks)
_wave_slices = _jit(wave_slices)
_private_split = _jit(private_split)


@_jit
def judge_by_busiest(wall, stats, n_threads, n_tasks):
    """The back-off's verdict on a parallel call of wall seconds and n_tasks tasks, from the thread
    that took the most (stats: per thread, seconds in tasks then tasks)."""
    busiest = 0
    for t in range(n_threads):
        if stats[2 * t + 1] > stats[2 * busiest + 1]:
            busiest = t
    judge_parallel_call(wall, stats[2 * busiest], stats[2 * busiest + 1], n_tasks)


@_jit
def store_edge_tile(ab, nr_block, rows, cols, z, c_off, ldc, beta):
    """z[tile] := ab[tile] + beta·z[tile] for the valid rows x cols of an edge tile (z unread if beta == 0).

    IN ab (MR*NR,): alpha·AB from the micro-kernel; IN/OUT z (flat m*n).
    """
    for i in range(rows):
        t = i * nr_block
        c = c_off + i * ldc
        if beta == 0.0:
            for j in range(cols):
                z[c + j] = ab[t + j]
        else:
            for j in range(cols):
                z[c + j] = ab[t + j] + beta * z[c + j]


@_jit
def finish_tile(rows, cols, z, out, c_off, ldc, bias, col0, act):
    """Dense epilogue of a finished tile: z += bias[col0:col0+cols]; out := act(z) unless act < 0.

    IN/OUT z (flat m*n); OUT out (flat m*n), may be z. relu and identity, the
    common cases, are one fused pass per row through raw pointers (flat-array
    indexing keeps a wraparound test per element, which blocks vectorisation).
    """
    has_bias = bias.shape[0] > 0
    if has_bias and (act == _RELU or act == _IDENTITY or act < 0):
        zp, op, bp = data_pointer(z), data_pointer(out), data_pointer(bias)
        # out is z (every dense layer but gelu's): one store, else the vectoriser's
        # overlap check between the two stores fails and the loop runs scalar.
        in_place = z.ctypes.data == out.ctypes.data
        for i in range(rows):  # one loop per case: no test inside the j loops
            c = c_off + i * ldc
            if act == _RELU and in_place:
                for j in range(cols):
                    v = zp[c + j] + bp[col0 + j]
                    zp[c + j] = 0.0 if v < 0 else v  # NaN stays NaN
            elif act == _RELU:
                for j in range(cols):
                    v = zp[c + j] + bp[col0 + j]
                    zp[c + j] = v
                    op[c + j] = 0.0 if v < 0 else v  # NaN stays NaN
            elif act == _IDENTITY and not in_place:
                for j in range(cols):
                    v = zp[c + j] + bp[col0 + j]
                    zp[c + j] = v
                    op[c + j] = v
            else:
                for j in range(cols):
                    zp[c + j] = zp[c + j] + bp[col0 + j]
        return
    # Other activations: the bias through pointers too (a flat-indexed loop ran scalar: a
    # 3->32 conv's forward with the step activation spent 1.5 ms of its 2.8 ms GEMM here).
    zp, bp = data_pointer(z), data_pointer(bias)
    for i in range(rows):
        c = c_off + i * ldc
        if has_bias:
            for j in range(cols):
                zp[c + j] = zp[c + j] + bp[col0 + j]
        if act >= 0:
            activation_span(act, z, c, out, c, cols)


@_jit
def reads_b_unpacked(SIMD, NARROW, NR, m, n, k, b):
    """Whether the driver runs an (m x k)·b product unpacked (``direct_rows``): with SIMD, small
    products, and narrow float32 ones (NARROW) of at most DIRECT_MAX_PANELS NR-wide panels,
    when b's columns are contiguous or b is small enough to copy (``direct_b``)."""
    return SIMD and (m * n * k <= DIRECT_MAX_MADDS or (NARROW and n <= DIRECT_MAX_PANELS * NR)) and (
        b.strides[1] == b.itemsize or k * n <= DIRECT_B_COPY_MAX)


@_jit
def direct_b(b, work):
    """(B's rows, their row stride, the workspace) for the unpacked path: B itself when its
    columns are contiguous, else (δ·Wᵀ: B = Wᵀ) a row-major copy in work, grown if needed."""
    k, n = b.shape
    item = b.itemsize
    if b.strides[1] == item:
        return b, b.strides[0] // item, work
    if work.shape[0] < k * n:
        work = np.empty(k * n, dtype=work.dtype)
    src = data_pointer(b)
    dst = data_pointer(work)
    b_rs, b_cs = b.strides[0] // item, b.strides[1] // item
    for j in range(n):  # along B's columns: contiguous reads when B is a transpose
        for p in range(k):
            dst[p * n + j] = src[p * b_rs + j * b_cs]
    return work[:k * n].reshape(k, n), n, work


@_jit
def direct_rows(MR, NV, LANES, kc_max, a, b_rows, rs_b, i0, i1, zf, alpha, beta, one):
    """zf[i0:i1] := alpha·a[i0:i1]·b + beta·zf[i0:i1] unpacked (zf flat m*n, not read when beta == 0).

    A is read in place, B from b_rows (unit column stride, row stride rs_b: see
    ``direct_b``). The tiles and the KC slices (of kc_max) are the packed path's,
    each element summed in the same order: the same bits. i0 is a multiple of MR.

    MR, NV (vectors of LANES per tile row): the driver's block sizes, passed as
    compile-time constants (the driver's closure constants arrive as literals, so
    each driver compiles its own specialization); ``one`` is 1 in zf's dtype.
    """
    NR = NV * LANES
    k = a.shape[1]
    n = b_rows.shape[1]
    item = a.itemsize
    rs_a, cs_a = a.strides[0] // item, a.strides[1] // item
    for pc in range(0, k, kc_max):  # the packed path's KC slices, in increasing order; later ones accumulate
        kc = min(kc_max, k - pc)
        beta_t = beta if pc == 0 else one
        for ic in range(i0, i1, MR):  # B's slice stays in cache for all the tiles
            rows = min(MR, i1 - ic)
            for jc in range(0, n, NR):
                cols = min(NR, n - jc)
                if cols <= LANES:
                    direct_kernel_simd(MR, 1, kc, a, ic * rs_a + pc * cs_a, rs_a, cs_a, b_rows, pc * rs_b + jc,
                                       rs_b, rows, cols, zf, ic * n + jc, n, alpha, beta_t)
                else:
                    direct_kernel_simd(MR, NV, kc, a, ic * rs_a + pc * cs_a, rs_a, cs_a, b_rows,
                                       pc * rs_b + jc, rs_b, rows, cols, zf, ic * n + jc, n, alpha, beta_t)


@_jit
def gemm_task(MR, NR, SIMD, one, task, n_blocks, n_tiles, n_parts, n_panels, m, n, k, jc, nc, s0, s1, kc_max,
              slice_stride, a, work, pa_off, zf, of, bias, act, alpha_t, beta, finish):
    """One task of the 3rd loop over KC slices s0..s1-1 (B packed at work[0:], per slice
    slice_stride apart): row block task // n_parts (whole MR tiles [blk*T/nb, (blk+1)*T/nb))
    times column part task % n_parts (whole NR micro-panels). For each slice, in increasing
    order, packs that block of A at work[pa_off:] and runs the 2nd and 1st loops on it.

    MR, NR, SIMD: the driver's tile and instruction set, compile-time constants as for
    direct_rows; ``one`` is 1 in zf's dtype."""
    blk, part = task // n_parts, task % n_parts
    i0 = (blk * n_tiles // n_blocks) * MR
    i1 = min(((blk + 1) * n_tiles // n_blocks) * MR, m)
    j0 = (part * n_panels // n_parts) * NR
    j1 = min(((part + 1) * n_panels // n_parts) * NR, nc)
    if i1 <= i0 or j1 <= j0:
        return
    ab_off = pa_off + (i1 - i0 + MR - 1) // MR * MR * kc_max
    for s in range(s0, s1):  # 4th loop (pc, KC): every slice updates the same C
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        pack_a(a, i0, i1 - i0, pc, kc, MR, work, pa_off)  # 3rd loop (ic, MC): one block
        macro_kernel(MR, NR, SIMD, one, kc, work, pa_off, work, (s - s0) * slice_stride + j0 * kc, i0, i1 - i0,
                     jc + j0, j1 - j0, n, zf, of, bias, act, alpha_t, beta if pc == 0 else one,
                     pc + kc == k and finish, work, ab_off)


@_jit
def macro_kernel(MR, NR, SIMD, one, kc, pa, pa_off, pb, pb_off, i0, mb, j0, nb, n, zf, of, bias, act,
                 alpha_t, beta_t, finish, work, ab_off):
    """The 2nd and 1st loops on one packed block: C[i0:i0+mb, j0:j0+nb] := alpha·Ap·Bp + beta_t·C
    (zf flat, n columns), Ap at pa[pa_off:] (MR-high micro-panels), Bp at pb[pb_off:] (NR-wide),
    kc deep; with ``finish`` the epilogue per tile. work[ab_off:ab_off + 2*MR*NR]: edge-tile scratch."""
    ab = work[ab_off:ab_off + MR * NR]
    ab_scratch = work[ab_off + MR * NR:ab_off + 2 * MR * NR]
    for jr in range(0, nb, NR):  # 2nd loop (jr, NR)
        cols = min(NR, nb - jr)
        for ir in range(0, mb, MR):  # 1st loop (ir, MR)
            rows = min(MR, mb - ir)
            c_off = (i0 + ir) * n + j0 + jr
            full = rows == MR and cols == NR
            # A full tile is updated in place; an edge tile goes through ab.
            tile, tile_off, ldt = (zf, c_off, n) if full else (ab, 0, NR)
            tile_beta = beta_t if full else one - one
            if SIMD:
                micro_kernel_simd(MR, NR, kc, pa, pa_off + ir * kc, pb, pb_off + jr * kc,
                                  tile, tile_off, ldt, alpha_t, tile_beta)
            else:
                micro_kernel_loops(MR, NR, kc, pa, pa_off + ir * kc, pb, pb_off + jr * kc,
                                   tile, tile_off, ldt, alpha_t, tile_beta, ab_scratch)
            if not full:
                store_edge_tile(ab, NR, rows, cols, zf, c_off, n, beta_t)
            if finish:
                finish_tile(rows, cols, zf, of, c_off, n, bias, j0 + jr, act)


@_jit
def pack_b_whole(NR, b, n_slices, kc_max, work, off):
    """Pack all of B (k, n) at work[off:] in NR-wide micro-panels, slice by slice: KC slice s
    (pc = s·kc_max) at off + n_panels·NR·pc, its panel at column jr at + jr·kc."""
    k, n = b.shape
    width = -(-n // NR) * NR
    for s in range(n_slices):
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        for jr in range(0, n, NR):
            pack_b_panel(b, pc, kc, jr, min(NR, n - jr), NR, work, off + width * pc + jr * kc)


@_jit
def pack_private(MR, NR, b_private, a, b, n_slices, kc_max, work, off):
    """Pack all of B (b_private, ``pack_b_whole``) or all of A at work[off:], slice by slice:
    slice s at off + width·pc, width the padded column count of B or row count of A."""
    if b_private:
        pack_b_whole(NR, b, n_slices, kc_max, work, off)
        return
    m, k = a.shape
    width = -(-m // MR) * MR
    for s in range(n_slices):
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        pack_a(a, 0, m, pc, kc, MR, work, off + width * pc)


@_jit
def task_rows(MR, task, n_tasks, m):
    """Rows [i0, i1) of ``task`` of n_tasks cutting m rows in whole MR tiles (the private path's
    tasks with B private)."""
    n_tiles = -(-m // MR)
    return (task * n_tiles // n_tasks) * MR, min(((task + 1) * n_tiles // n_tasks) * MR, m)


@_jit
def private_task(MR, NR, SIMD, one, b_private, task, n_tasks, a, b, n_slices, kc_max, packed, packed_off, work,
                 scratch_off, zf, of, bias, act, alpha_t, beta, finish):
    """One task of the private path: rows of whole MR tiles (b_private, ``task_rows``) or columns
    of whole NR panels, over every KC slice in increasing order; the other operand's part packed
    at work[scratch_off:] per slice, the private operand (``pack_private``) at packed[packed_off:]."""
    m, k = a.shape
    n = b.shape[1]
    n_tiles, n_panels = -(-m // MR), -(-n // NR)
    i0, i1, j0, j1 = 0, m, 0, n
    if b_private:
        i0, i1 = task_rows(MR, task, n_tasks, m)
    else:
        j0 = (task * n_panels // n_tasks) * NR
        j1 = min(((task + 1) * n_panels // n_tasks) * NR, n)
    if i1 <= i0 or j1 <= j0:
        return
    part = (-(-(i1 - i0) // MR) * MR if b_private else -(-(j1 - j0) // NR) * NR) * kc_max
    for s in range(n_slices):  # 4th loop (pc, KC), in increasing k
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        if b_private:
            pack_a(a, i0, i1 - i0, pc, kc, MR, work, scratch_off)
            pa, pa_off, pb, pb_off = work, scratch_off, packed, packed_off + n_panels * NR * pc
        else:
            for jr in range(j0, j1, NR):
                pack_b_panel(b, pc, kc, jr, min(NR, j1 - jr), NR, work, scratch_off + (jr - j0) * kc)
            pa, pa_off, pb, pb_off = packed, packed_off + n_tiles * MR * pc, work, scratch_off
        macro_kernel(MR, NR, SIMD, one, kc, pa, pa_off, pb, pb_off, i0, i1 - i0, j0, j1 - j0, n, zf, of,
                     bias, act, alpha_t, beta if pc == 0 else one, pc + kc == k and finish, work,
                     scratch_off + part)


@numba.njit(cache=True, nogil=True, parallel=True)
def private_gemm(MR, NR, SIMD, one, b_private, a, b, n_slices, kc_max, zf, of, bias, act, alpha_t, beta, finish,
                 n_threads, work):
    """The private path on n_threads (blocking.private_split): each thread packs the smaller operand
    for itself, once, when it takes its first task, then takes tasks (rows of A, or columns of B)
    from an atomic counter; nothing one thread packs is read by another, and there is no barrier
    but the region's end. Returns the workspace used."""
    m, k = a.shape
    n = b.shape[1]
    n_tiles, n_panels = -(-m // MR), -(-n // NR)
    n_tasks = min(n_tiles if b_private else n_panels, TASKS_PER_THREAD * n_threads)
    private_values = (n_panels * NR if b_private else n_tiles * MR) * k
    scratch_values = (-(-n_tiles // n_tasks) * MR if b_private else -(-n_panels // n_tasks) * NR) * kc_max
    region = -(-(private_values + scratch_values + 2 * MR * NR) // 16) * 16  # own cache lines
    if work.shape[0] < n_threads * region:
        work = np.empty(n_threads * region, dtype=work.dtype)
    counter = np.zeros(1, dtype=np.int64)
    stats = np.zeros(2 * n_threads)  # per thread: seconds in tasks, tasks (the back-off's test)
    t_start = monotonic_seconds()
    for t in prange(n_threads):
        packed = False
        while True:
            task = fetch_add(counter, 1)
            if task >= n_tasks:
                break
            t_task = monotonic_seconds()
            if not packed:
                pack_private(MR, NR, b_private, a, b, n_slices, kc_max, work, t * region)
                packed = True
            private_task(MR, NR, SIMD, one, b_private, task, n_tasks, a, b, n_slices, kc_max, work, t * region,
                         work, t * region + private_values, zf, of, bias, act, alpha_t, beta, finish)
            stats[2 * t] += monotonic_seconds() - t_task
            stats[2 * t + 1] += 1
    judge_by_busiest(monotonic_seconds() - t_start, stats, n_threads, n_tasks)
    return work


def _constants(dtype):
    """The drivers' compile-time constants for ``dtype`` on this ISA: the block sizes
    (MR, NR, KC, MC, NC), SIMD (the micro-kernel has vectors), SCALAR (the dtype's scalar
    type) and NARROW (narrow products run unpacked at any size: blocking.DIRECT_MAX_PANELS)."""
    return (block_sizes(ISA, dtype), ISA != "generic", np.float32 if dtype == "float32" else np.float64,
            dtype == "float32")


def _make_driver(dtype, parallel):
    """Compile-on-first-use GEMM driver for ``dtype`` with the block sizes of this ISA.

    ``parallel=False`` compiles the serial twin (prange runs as range): a
    parallel region costs ~1.5 µs to enter even on one thread, as much as a
    small GEMM, so one-thread and small calls take the serial driver.
    """
    PARALLEL = parallel
    (MR, NR, KC, MC, NC), SIMD, SCALAR, NARROW = _constants(dtype)
    LANES = VECTOR_LANES[dtype]
    NV = NR // LANES  # vectors per tile row

    def _gemm(a, b, z, out, bias, alpha, beta, act, n_threads, work):
        """z := alpha·a·b + beta·z + bias; out := act(z) unless act < 0.  Returns the workspace used.

        IN a (m, k), b (k, n) any strides, k >= 1; bias (n,), or (0,) for none.
        IN/OUT z (m, n) C-contiguous, not read when beta == 0.
        OUT out (m, n) C-contiguous, may be z.
        IN work: a scratch buffer, used if large enough, else replaced by a new one (returned).
        """
        m, k = a.shape
        n = b.shape[1]
        if PARALLEL:
            n_threads = gemm_threads_now(n_threads)  # run_driver's choice, unless backing off
            set_threads(n_threads)
        else:
            n_threads = 1
        zf = z.reshape(m * n)
        of = out.reshape(m * n)
        alpha_t = SCALAR(alpha)
        finish = bias.shape[0] > 0 or act >= 0

        if reads_b_unpacked(SIMD, NARROW, NR, m, n, k, b):
            b_rows, rs_b, work = direct_b(b, work)
            kc_max = _kc_slices(k, KC)[1]
            n_tiles = -(-m // MR)
            n_chunks = min(n_tiles, TASKS_PER_THREAD * n_threads) if PARALLEL and n_threads > 1 else 1
            if n_chunks < 2:
                direct_rows(MR, NV, LANES, kc_max, a, b_rows, rs_b, 0, m, zf, alpha_t, SCALAR(beta), SCALAR(1.0))
                if finish:
                    finish_tile(m, n, zf, of, 0, n, bias, 0, act)
                return work
            # Blocks of whole MR-row tiles, taken from a counter; each finishes its rows.
            # Timed like the packed path's tasks, for the busy-machine back-off.
            counter = np.zeros(1, dtype=np.int64)
            stats = np.zeros(2 * n_threads)
            t_start = monotonic_seconds()
            for t in prange(n_threads):
                while True:
                    chunk = fetch_add(counter, 1)
                    if chunk >= n_chunks:
                        break
                    t_task = monotonic_seconds()
                    i0 = (chunk * n_tiles // n_chunks) * MR
                    i1 = min(((chunk + 1) * n_tiles // n_chunks) * MR, m)
                    direct_rows(MR, NV, LANES, kc_max, a, b_rows, rs_b, i0, i1, zf, alpha_t, SCALAR(beta),
                                SCALAR(1.0))
                    if finish:
                        finish_tile(i1 - i0, n, zf, of, i0 * n, n, bias, 0, act)
                    stats[2 * t] += monotonic_seconds() - t_task
                    stats[2 * t + 1] += 1
            judge_by_busiest(monotonic_seconds() - t_start, stats, n_threads, n_chunks)
            return work

        n_slices, kc_max = _kc_slices(k, KC)
        split = _private_split(-(-m // MR), -(-n // NR), k, MR, NR, n_threads) if PARALLEL and n_threads > 1 else 0
        if split:
            return private_gemm(MR, NR, SIMD, SCALAR(1.0), split == 1, a, b, n_slices, kc_max, zf, of, bias, act,
                                alpha_t, SCALAR(beta), finish, n_threads, work)

        max_panels = -(-min(NC, n) // NR)
        n_tiles = -(-m // MR)
        n_blocks, n_parts = _gemm_tasks(n_tiles, max_panels, MR, NR, MC, n_threads)
        n_items = n_blocks * n_parts
        block_rows = -(-n_tiles // n_blocks) * MR
        slice_stride = max_panels * NR * kc_max
        wave_slices = _wave_slices(n_slices, slice_stride, n_threads)
        b_size = wave_slices * slice_stride
        region = block_rows * kc_max + 2 * MR * NR  # per thread: packed A block, edge tile, scratch
        if work.shape[0] < b_size + n_threads * region:
            work = np.empty(b_size + n_threads * region, dtype=z.dtype)
        counter = np.zeros(1, dtype=np.int64)
        stats = np.zeros(2 * n_threads)  # per task loop: seconds in tasks, tasks (the back-off's test)
        wall = 0
        all_tasks = 0

        for jc in range(0, n, NC):  # 5th loop (jc, NC)
            nc = min(NC, n - jc)
            n_panels = -(-nc // NR)
            for s0 in range(0, n_slices, wave_slices):  # waves of KC slices, in increasing k
                s1 = min(s0 + wave_slices, n_slices)
                for q in prange((s1 - s0) * n_panels):  # pack B for the wave
                    s = s0 + q // n_panels
                    pc = s * kc_max
                    kc = min(kc_max, k - pc)
                    jr = (q % n_panels) * NR
                    pack_b_panel(b, pc, kc, jc + jr, min(NR, nc - jr), NR, work, (s - s0) * slice_stride + jr * kc)
                counter[0] = 0
                t_start = monotonic_seconds()
                for t in prange(n_threads):  # tasks, from the counter
                    while True:
                        task = fetch_add(counter, 1)
                        if task >= n_items:
                            break
                        t_task = monotonic_seconds()
                        gemm_task(MR, NR, SIMD, SCALAR(1.0), task, n_blocks, n_tiles, n_parts, n_panels, m, n, k,
                                  jc, nc, s0, s1, kc_max, slice_stride, a, work, b_size + t * region, zf, of, bias,
                                  act, alpha_t, SCALAR(beta), finish)
                        stats[2 * t] += monotonic_seconds() - t_task
                        stats[2 * t + 1] += 1
                wall += monotonic_seconds() - t_start
                all_tasks += n_items
        if PARALLEL and n_threads > 1:
            judge_by_busiest(wall, stats, n_threads, all_tasks)
        return work

    nb_dtype = numba.from_dtype(np.dtype(dtype))
    matrix_any = types.Array(nb_dtype, 2, "A")
    matrix_c = types.Array(nb_dtype, 2, "C")
    vector = types.Array(nb_dtype, 1, "C")
    signature = vector(matrix_any, matrix_any, matrix_c, matrix_c, vector,
                       types.float64, types.float64, types.int64, types.int64, vector)
    return numba.njit([signature], cache=True, nogil=True, parallel=parallel)(_gemm)


def _make_b_packer(dtype):
    """Compile-on-first-use ``pack_b_once`` for ``dtype`` (see ``_make_driver``)."""
    (MR, NR, KC, MC, NC), SIMD, SCALAR, NARROW = _constants(dtype)

    def pack_b_once(m, b, packed):
        """B packed whole, as the private path packs it (``pack_b_whole``: every KC slice, every
        NR micro-panel), for products with an A of m rows by the packed-B driver: a recurrent
        weight multiplied at every step is packed once per pass instead of once per step.

        Returns (the buffer used, whether B is in it): not where such a product reads B
        unpacked (``reads_b_unpacked``: nothing to save); multiply by B itself then.
        IN b (k, n) any strides, k >= 1; IN packed: a buffer the caller keeps for the pass,
        used if large enough, else replaced by a new one (returned).
        """
        k, n = b.shape
        if reads_b_unpacked(SIMD, NARROW, NR, m, n, k, b):
            return packed, False
        size = -(-n // NR) * NR * k
        if packed.shape[0] < size:
            packed = np.empty(size, dtype=packed.dtype)
        n_slices, kc_max = _kc_slices(k, KC)
        pack_b_whole(NR, b, n_slices, kc_max, packed, 0)
        return packed, True

    nb_dtype = numba.from_dtype(np.dtype(dtype))
    vector = types.Array(nb_dtype, 1, "C")
    signature = types.Tuple((vector, types.boolean))(types.int64, types.Array(nb_dtype, 2, "A"), vector)
    return numba.njit([signature], cache=True, nogil=True)(pack_b_once)


def rows_done(rows, i0, i1):
    """Rows [i0, i1) of a packed-B product's C are final (whole MR tiles, as ``task_rows`` cuts
    them): run the caller's pass over them, on the thread that computed them, while they are in
    cache (a recurrent step's row pass, fused into its product: one parallel region per step, not
    two). ``rows`` describes the pass; its module overloads this hook for the type of ``rows``
    (the Cython backend's rows_done callback and ctx). A row's pass may read that row of C only."""


def _make_packed_b_driver(dtype, parallel, rows_type):
    """Compile-on-first-use driver of products by a B that ``pack_b_once`` packed, for
    ``dtype``, whose row blocks end with ``rows_done`` on a ``rows`` of Numba type ``rows_type``;
    ``parallel=False`` compiles the serial twin (see ``_make_driver``)."""
    PARALLEL = parallel
    (MR, NR, KC, MC, NC), SIMD, SCALAR, NARROW = _constants(dtype)

    def _gemm_packed_b(a, b, packed, z, alpha, beta, n_threads, work, rows):
        """z := alpha·a·b + beta·z, B read from ``packed`` (``pack_b_once`` for a's m rows; b
        gives its shape only), then ``rows_done(rows, i0, i1)`` on each task's rows.  Returns
        the workspace used.

        The private path's tasks with B private (``private_task``): rows of A in whole MR
        tiles (``task_rows``), each packed slice by slice, over the KC slices in increasing
        order, taken from an atomic counter (one task on one thread): the tiles and slices of
        the driver, so the bits of ``_gemm``, whatever the thread count. A task's time, timed
        for the back-off, includes its rows' pass.
        IN a (m, k) any strides; IN/OUT z (m, n) C-contiguous, not read when beta == 0;
        IN work: a scratch buffer, used if large enough, else replaced by a new one (returned).
        """
        m, k = a.shape
        n = b.shape[1]
        n_tiles = -(-m // MR)
        n_threads = min(gemm_threads_now(n_threads), n_tiles) if PARALLEL else 1
        n_tasks = min(n_tiles, TASKS_PER_THREAD * n_threads) if n_threads > 1 else 1
        n_slices, kc_max = _kc_slices(k, KC)
        # per thread: its rows of A packed (one slice), edge tile and scratch, on its own cache lines
        region = -(-(-(-n_tiles // n_tasks) * MR * kc_max + 2 * MR * NR) // 16) * 16
        if work.shape[0] < n_threads * region:
            work = np.empty(n_threads * region, dtype=z.dtype)
        zf = z.reshape(m * n)
        empty_bias = zf[:0]
        if n_threads == 1:
            private_task(MR, NR, SIMD, SCALAR(1.0), True, 0, 1, a, b, n_slices, kc_max, packed, 0, work, 0, zf,
                         zf, empty_bias, NO_ACTIVATION, SCALAR(alpha), SCALAR(beta), False)
            rows_done(rows, 0, m)
            return work
        set_threads(n_threads)
        counter = np.zeros(1, dtype=np.int64)
        stats = np.zeros(2 * n_threads)  # per thread: seconds in tasks, tasks (the back-off's test)
        t_start = monotonic_seconds()
        for t in prange(n_threads):
            while True:
                task = fetch_add(counter, 1)
                if task >= n_tasks:
                    break
                t_task = monotonic_seconds()
                private_task(MR, NR, SIMD, SCALAR(1.0), True, task, n_tasks, a, b, n_slices, kc_max, packed, 0,
                             work, t * region, zf, zf, empty_bias, NO_ACTIVATION, SCALAR(alpha), SCALAR(beta), False)
                i0, i1 = task_rows(MR, task, n_tasks, m)
                rows_done(rows, i0, i1)
                stats[2 * t] += monotonic_seconds() - t_task
                stats[2 * t + 1] += 1
        judge_by_busiest(monotonic_seconds() - t_start, stats, n_threads, n_tasks)
        return work

    nb_dtype = numba.from_dtype(np.dtype(dtype))
    matrix_any = types.Array(nb_dtype, 2, "A")
    vector = types.Array(nb_dtype, 1, "C")
    signature = vector(matrix_any, matrix_any, vector, types.Array(nb_dtype, 2, "C"), types.float64,
                       types.float64, types.int64, vector, rows_type)
    return numba.njit([signature], cache=True, nogil=True, parallel=parallel)(_gemm_packed_b)


_drivers = {}
_serial_drivers = {}
_compiled = {}  # (factory, dtype, its arguments): the packed-B drivers and packers


def driver(dtype, parallel=True):
    """The compiled GEMM driver for ``dtype`` (compiled, or loaded from cache, on first use)."""
    # Keyed by the dtype object itself: dtype.name builds a string (~2 µs), too slow per call.
    table = _drivers if parallel else _serial_drivers
    compiled = table.get(dtype)
    if compiled is None:
        compiled = table[dtype] = _make_driver(np.dtype(dtype).name, parallel)
    return compiled


def _compile_once(factory, dtype, *args):
    key = (factory, np.dtype(dtype), args)
    compiled = _compiled.get(key)
    if compiled is None:
        compiled = _compiled[key] = factory(np.dtype(dtype).name, *args)
    return compiled


def b_packer(dtype):
    """The compiled ``pack_b_once`` for ``dtype`` (compiled, or loaded from cache, on first use)."""
    return _compile_once(_make_b_packer, dtype)


def packed_b_driver(dtype, parallel, rows_type):
    """The compiled driver of products by a B packed once, for ``dtype``, with the row pass
    ``rows_done`` on a ``rows`` of Numba type ``rows_type`` (see ``driver``)."""
    return _compile_once(_make_packed_b_driver, dtype, parallel, rows_type)


_no_bias = {}


def no_bias(dtype):
    """An empty bias vector of ``dtype``: the driver adds no bias."""
    empty = _no_bias.get(dtype)
    if empty is None:
        empty = _no_bias[dtype] = np.empty(0, dtype=dtype)
    return empty


# Packing buffers, one per calling thread and dtype, grown on demand and kept,
# so that after the first call of a given size a GEMM allocates nothing.
_workspaces = threading.local()


def run_driver(a, b, z, out, bias, alpha, beta, act, n_threads):
    """Run the GEMM driver of z's dtype with this thread's cached workspace (see ``_gemm``)."""
    key = z.dtype
    cache = _workspaces.__dict__
    work = cache.get(key)
    if work is None:
        work = np.empty(0, dtype=key)
    m, k = a.shape
    n_threads = gemm_threads(m, b.shape[1], k, clamp_threads(n_threads))
    parallel = n_threads > 1
    compiled = (_drivers if parallel else _serial_drivers).get(key) or driver(key, parallel)
    cache[key] = compiled(writable(a), writable(b), z, out, bias, float(alpha), float(beta), act,
                          n_threads, work)


def gemm(a, b, c, alpha, beta, n_threads):
    """c := alpha*a·b + beta*c.  IN a (m, k), b (k, n) any strides, k >= 1; IN/OUT c (m, n), not read if beta == 0."""
    run_driver(a, b, c, c, no_bias(c.dtype), alpha, beta, NO_ACTIVATION, n_threads)


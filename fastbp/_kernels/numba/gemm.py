"""BLIS-style cache-blocked GEMM with a fused bias + activation epilogue.

Design: five loops around a register-blocked micro-kernel (``microkernel.py``),
block sizes MR, NR, KC, MC, NC from the one table in ``blocking.py``:

    5th loop (jc, NC)   columns of C and B
    4th loop (pc, KC)   pack B[pc:pc+KC, jc:jc+NC] into NR-wide micro-panels
    3rd loop (ic, MC)   pack A[ic:ic+MC, pc:pc+KC] into MR-high micro-panels
    2nd loop (jr, NR)   micro-panels of packed B
    1st loop (ir, MR)   micro-panels of packed A -> micro-kernel on an MR x NR tile of C

Threads: C is cut into one band per thread (rows, or columns when C has more
column tiles than row tiles), aligned to the MR x NR tile grid, and each task
runs the five loops on its band with its own packing buffers (a region of the
one workspace, indexed by task). That is a single parallel region per call:
~1-2 µs of OpenMP start-up, one barrier, and each core packs into its own L2;
the price is packing the shared operand once per band, a fraction
n_threads/n (or n_threads/m) of the work. The KC loop is never split.

Epilogue: the micro-kernel applies alpha and beta on the registers (a later
KC slice passes beta = 1; edge tiles go through a buffer, ``store_edge_tile``);
after the last KC slice ``finish_tile`` adds the bias and writes act(z) while
the tile is still in L1, so the dense layer's forward is one pass over C.

Small products (at most DIRECT_MAX_MADDS multiply-adds, with SIMD) skip the
packing: ``direct_kernel_simd`` reads A in place (broadcasts, any strides) and
B's rows as masked vectors (B is copied row-major first if its columns are not
contiguous), over the same MR x NR tiles and KC slices, so with the same bits.

Layout: A and B may have any strides (C, F, transposed, negative), read only
by the packing routines; C (z) and the activation output are C-contiguous and
read as flat arrays. Each driver is compiled once per dtype with an explicit
layout-'A' signature, so C-, F- and strided operands share one compilation.
The block sizes are closure constants of the driver, so they are baked into
the compiled code and part of Numba's cache key. That key hashes the pickled
closure, so the closure holds plain values only: a captured dispatcher pickles
with a per-process uuid, which made every process miss the cache and compile
the driver again (~10 s). Jitted helpers are module globals; ``direct_gemm``
gets the block sizes as literal arguments.

Determinism: every C element is summed over k in KC slices in increasing
order, each slice in increasing k in one micro-kernel lane. Tasks only
partition C, so nothing numeric depends on the thread count.
"""

import threading

import numba
import numpy as np
from numba import prange, types

from ..blocking import block_sizes
from .activations import activation_span
from .microkernel import direct_kernel_simd, micro_kernel_loops, micro_kernel_simd
from .packing import data_pointer, pack_a, pack_b_panel
from .. import registry as R
from ._arrays import writable
from ._threads import ISA, VECTOR_LANES, clamp_threads, set_threads

# Below this many flops (2mnk) the GEMM runs on one thread.
PARALLEL_MIN_FLOPS = 1 << 22
# Up to this many multiply-adds (mnk) the GEMM runs unpacked (``direct_kernel_simd``):
# packing both operands costs as much as the arithmetic of a small product. Always
# below PARALLEL_MIN_FLOPS, so the unpacked path is serial whatever n_threads.
DIRECT_MAX_MADDS = 1 << 20
# ``act`` value of a plain GEMM: write C only, no activation output.
NO_ACTIVATION = -1
_RELU, _IDENTITY = R.RELU, R.IDENTITY

_jit = numba.njit(cache=True, nogil=True)


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
    for i in range(rows):
        c = c_off + i * ldc
        if has_bias:
            for j in range(cols):
                z[c + j] = z[c + j] + bias[col0 + j]
        if act >= 0:
            activation_span(act, z, c, out, c, cols)


@_jit
def direct_gemm(MR, NV, LANES, KC, a, b, zf, alpha, beta, one, work):
    """zf := alpha·a·b + beta·zf unpacked (zf flat m*n, not read when beta == 0).  Returns the workspace.

    MR, NV (vectors of LANES per tile row), KC: the driver's block sizes, passed
    as compile-time constants (the driver's closure constants arrive as literals,
    so each driver compiles its own specialization); ``one`` is 1 in zf's dtype.

    A is read in place; B too when its columns are contiguous, else it is first
    copied row-major into work (δ·Wᵀ: B = Wᵀ). The tiles and the KC slices are the
    packed path's, each element summed in the same order: the same bits.
    """
    NR = NV * LANES
    m, k = a.shape
    n = b.shape[1]
    item = a.itemsize
    rs_a, cs_a = a.strides[0] // item, a.strides[1] // item
    b_src, rs_b = b, b.strides[0] // item
    if b.strides[1] != item:
        if work.shape[0] < k * n:
            work = np.empty(k * n, dtype=work.dtype)
        src = data_pointer(b)
        dst = data_pointer(work)
        b_rs, b_cs = b.strides[0] // item, b.strides[1] // item
        for j in range(n):  # along B's columns: contiguous reads when B is a transpose
            for p in range(k):
                dst[p * n + j] = src[p * b_rs + j * b_cs]
        b_src, rs_b = work[:k * n].reshape(k, n), n
    for jc in range(0, n, NR):
        cols = min(NR, n - jc)
        for ic in range(0, m, MR):
            rows = min(MR, m - ic)
            for pc in range(0, k, KC):  # the packed path's KC slices; later ones accumulate
                kc = min(KC, k - pc)
                beta_t = beta if pc == 0 else one
                if cols <= LANES:
                    direct_kernel_simd(MR, 1, kc, a, ic * rs_a + pc * cs_a, rs_a, cs_a, b_src, pc * rs_b + jc,
                                       rs_b, rows, cols, zf, ic * n + jc, n, alpha, beta_t)
                else:
                    direct_kernel_simd(MR, NV, kc, a, ic * rs_a + pc * cs_a, rs_a, cs_a, b_src,
                                       pc * rs_b + jc, rs_b, rows, cols, zf, ic * n + jc, n, alpha, beta_t)
    return work


def _make_driver(dtype, parallel):
    """Compile-on-first-use GEMM driver for ``dtype`` with the block sizes of this ISA.

    ``parallel=False`` compiles the serial twin (prange runs as range): a
    parallel region costs ~1.5 µs to enter even on one thread, as much as a
    small GEMM, so one-thread and small calls take the serial driver.
    """
    PARALLEL = parallel
    MR, NR, KC, MC, NC = block_sizes(ISA, dtype)
    SIMD = ISA != "generic"
    SCALAR = np.float32 if dtype == "float32" else np.float64
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
            n_threads = n_threads if 2.0 * m * n * k >= PARALLEL_MIN_FLOPS else 1
            set_threads(n_threads)
        else:
            n_threads = 1
        zf = z.reshape(m * n)
        of = out.reshape(m * n)
        alpha_t = SCALAR(alpha)
        finish = bias.shape[0] > 0 or act >= 0

        if SIMD and m * n * k <= DIRECT_MAX_MADDS:
            work = direct_gemm(MR, NV, LANES, KC, a, b, zf, alpha_t, SCALAR(beta), SCALAR(1.0), work)
            if finish:
                finish_tile(m, n, zf, of, 0, n, bias, 0, act)
            return work

        # One task per thread, each owning a band of C aligned to the MR x NR tile
        # grid: rows when there are more row tiles than column tiles, else columns.
        row_tiles = -(-m // MR)
        col_tiles = -(-n // NR)
        split_rows = row_tiles >= col_tiles
        tiles = row_tiles if split_rows else col_tiles
        n_tasks = min(n_threads, tiles)
        band = -(-tiles // n_tasks) * (MR if split_rows else NR)
        n_tasks = -(-(m if split_rows else n) // band)
        band_cols = n if split_rows else band

        pb_size = KC * (-(-min(NC, band_cols) // NR) * NR)
        pa_size = MC * KC
        task_size = pb_size + pa_size + 2 * MR * NR  # packed B panel, packed A block, edge tile, scratch
        if work.shape[0] < n_tasks * task_size:
            work = np.empty(n_tasks * task_size, dtype=z.dtype)

        for task in prange(n_tasks):
            pb_off = task * task_size
            pa_off = pb_off + pb_size
            ab = work[pa_off + pa_size:pa_off + pa_size + MR * NR]
            ab_scratch = work[pa_off + pa_size + MR * NR:pa_off + pa_size + 2 * MR * NR]
            row_lo, row_hi, col_lo, col_hi = 0, m, 0, n
            if split_rows:
                row_lo, row_hi = task * band, min(m, (task + 1) * band)
            else:
                col_lo, col_hi = task * band, min(n, (task + 1) * band)
            for jc in range(col_lo, col_hi, NC):  # 5th loop (jc, NC)
                nc = min(NC, col_hi - jc)
                for pc in range(0, k, KC):  # 4th loop (pc, KC)
                    kc = min(KC, k - pc)
                    beta_t = SCALAR(beta) if pc == 0 else SCALAR(1.0)  # later slices accumulate
                    last = pc + kc == k
                    for jr in range(0, nc, NR):
                        pack_b_panel(b, pc, kc, jc + jr, min(NR, nc - jr), NR, work, pb_off + jr * kc)
                    for ic in range(row_lo, row_hi, MC):  # 3rd loop (ic, MC)
                        mc = min(MC, row_hi - ic)
                        pack_a(a, ic, mc, pc, kc, MR, work, pa_off)
                        for jr in range(0, nc, NR):  # 2nd loop (jr, NR)
                            cols = min(NR, nc - jr)
                            for ir in range(0, mc, MR):  # 1st loop (ir, MR)
                                rows = min(MR, mc - ir)
                                c_off = (ic + ir) * n + jc + jr
                                full = rows == MR and cols == NR
                                # A full tile is updated in place; an edge tile goes through ab.
                                tile, tile_off, ldt = (zf, c_off, n) if full else (ab, 0, NR)
                                tile_beta = beta_t if full else SCALAR(0.0)
                                if SIMD:
                                    micro_kernel_simd(MR, NR, kc, work, pa_off + ir * kc, work, pb_off + jr * kc,
                                                      tile, tile_off, ldt, alpha_t, tile_beta)
                                else:
                                    micro_kernel_loops(MR, NR, kc, work, pa_off + ir * kc, work, pb_off + jr * kc,
                                                       tile, tile_off, ldt, alpha_t, tile_beta, ab_scratch)
                                if not full:
                                    store_edge_tile(ab, NR, rows, cols, zf, c_off, n, beta_t)
                                if last and finish:
                                    finish_tile(rows, cols, zf, of, c_off, n, bias, jc + jr, act)
        return work

    nb_dtype = numba.from_dtype(np.dtype(dtype))
    matrix_any = types.Array(nb_dtype, 2, "A")
    matrix_c = types.Array(nb_dtype, 2, "C")
    vector = types.Array(nb_dtype, 1, "C")
    signature = vector(matrix_any, matrix_any, matrix_c, matrix_c, vector,
                       types.float64, types.float64, types.int64, types.int64, vector)
    return numba.njit([signature], cache=True, nogil=True, parallel=parallel)(_gemm)


_drivers = {}
_serial_drivers = {}


def driver(dtype, parallel=True):
    """The compiled GEMM driver for ``dtype`` (compiled, or loaded from cache, on first use)."""
    # Keyed by the dtype object itself: dtype.name builds a string (~2 µs), too slow per call.
    table = _drivers if parallel else _serial_drivers
    compiled = table.get(dtype)
    if compiled is None:
        compiled = table[dtype] = _make_driver(np.dtype(dtype).name, parallel)
    return compiled


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
    parallel = n_threads > 1 and 2.0 * m * b.shape[1] * k >= PARALLEL_MIN_FLOPS
    compiled = (_drivers if parallel else _serial_drivers).get(key) or driver(key, parallel)
    cache[key] = compiled(writable(a), writable(b), z, out, bias, float(alpha), float(beta), act,
                          clamp_threads(n_threads) if parallel else 1, work)


def gemm(a, b, c, alpha, beta, n_threads):
    """c := alpha*a·b + beta*c.  IN a (m, k), b (k, n) any strides, k >= 1; IN/OUT c (m, n), not read if beta == 0."""
    run_driver(a, b, c, c, no_bias(c.dtype), alpha, beta, NO_ACTIVATION, n_threads)

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""fastbp's GEMM, C := alpha*A·B + beta*C, float32 and float64."""
# Design: BLIS's five loops around a register-blocked micro-kernel.
#   5th loop (jc, NC)  columns of C and B
#   4th loop (pc, KC)  the shared dimension, in waves of KC slices: the
#                      threads pack B[pc:pc+kc, jc:jc+nc] for every slice of
#                      the wave into NR-wide, zero-padded micro-panels
#                      (pack_b), then, after the one barrier,
#   3rd loop (ic, MC)  tasks, taken dynamically by the threads: blocks of whole
#                      MR-row tiles (at most MC rows) times column parts of whole
#                      NR micro-panels, about TASKS_PER_THREAD per thread; a task
#                      runs over the wave's KC slices in increasing order, packing
#                      A[ic:ic+mc, pc:pc+kc] into MR-high micro-panels in its
#                      thread's region of the workspace, and runs
#   2nd loop (jr, NR)  macro_kernel: over the packed B micro-panels,
#   1st loop (ir, MR)  over the packed A micro-panels -> micro_kernel, one
#                      MR x NR tile of C, written with intrinsics in microkernels.h.
# Threads: one parallel region per wave (usually one per call), dynamically
# scheduled, so a thread that loses its core (a busy machine, NumPy's BLAS pool
# still spinning after its call) delays the call by one task, not by its static
# share; the thread count comes from the work (gemm_threads, blocking.py).
# Private path: when the smaller packed operand is small (blocking.private_split,
# every layer of the peer networks), each thread packs all of it for itself when
# it takes its first task, and the tasks cut the other operand (rows of A or
# columns of B, each packed by its task): no packed value crosses between cores
# and no barrier splits the call. Same tiles, same KC slices: the same bits.
# Layout: A and B have any element strides (transposes arrive as views; negative
# and zero strides work); C is row-major with row stride ldc.
# Determinism: the KC loop is never parallel. Each C element is summed over k
# in KC slices in increasing order (the first slice applies beta, the others
# add; the slices split k evenly, which depends on k only), each slice in
# increasing k inside one micro-kernel call; edge tiles go through the same
# kernel on a temporary tile. Tasks only group whole tiles, and each task runs
# its slices in order, so neither the thread count (which sets the task sizes)
# nor which thread takes a task changes anything numerically.
# Epilogue: dense_forward's bias and activation are applied to each tile right
# after its last KC slice, while it is in L1.
# Workspace: the packed panels live in a buffer per calling thread, grown on
# demand and kept (fastbp_workspace in microkernels.h): no malloc per call.
# Block sizes (MR, NR, KC, MC, NC) come from fastbp._kernels.blocking for the
# ISA found at import (CPUID); MR and NR are checked against the compiled kernels.

import os

from cython.parallel cimport parallel, prange, threadid
from libc.stddef cimport ptrdiff_t

from fastbp._kernels.cython._threads cimport gemm_threads_now, judge_by_busiest
from fastbp._kernels.cython._activations cimport ACT_IDENTITY, ACT_RELU, act_row

cdef extern from "microkernels.h" nogil:
    ctypedef void (*fastbp_ukr_s)(ptrdiff_t kc, const float* ap, const float* bp,
                                  float* c, ptrdiff_t ldc, float alpha, float beta)
    ctypedef void (*fastbp_ukr_d)(ptrdiff_t kc, const double* ap, const double* bp,
                                  double* c, ptrdiff_t ldc, double alpha, double beta)
    int fastbp_openmp()
    int fastbp_detect_isa()
    void fastbp_tile(int isa, int double_, int* mr, int* nr)
    fastbp_ukr_s fastbp_select_ukr_s(int isa)
    fastbp_ukr_d fastbp_select_ukr_d(int isa)
    fastbp_ukr_s fastbp_select_short_ukr_s(int isa, int rows)
    fastbp_ukr_d fastbp_select_short_ukr_d(int isa, int rows)
    void fastbp_edge_s(fastbp_ukr_s ukr, int MR, int NR, int mr, int nr, ptrdiff_t kc,
                       const float* ap, const float* bp, float* c, ptrdiff_t ldc,
                       float alpha, float beta)
    void fastbp_edge_d(fastbp_ukr_d ukr, int MR, int NR, int mr, int nr, ptrdiff_t kc,
                       const double* ap, const double* bp, double* c, ptrdiff_t ldc,
                       double alpha, double beta)
    int FASTBP_ISA_AVX512
    int FASTBP_ISA_AVX2
    int fastbp_pack_transpose_s(int isa, const float* src, ptrdiff_t rs, int rows, ptrdiff_t kc,
                                float* dst, ptrdiff_t ld, int nw)
    int fastbp_direct_s(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                        const float* a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                        const float* b, ptrdiff_t rs_b, float beta, float* c, ptrdiff_t ldc)
    double fastbp_now()
    void* fastbp_workspace(size_t nbytes)
    void fastbp_workspace_release(void* p, size_t nbytes)
    void* fastbp_packed_b_workspace(size_t nbytes)
    void fastbp_packed_b_workspace_release(void* p, size_t nbytes)


cdef struct Blocking:
    Py_ssize_t mr, nr, kc, mc, nc

# Set once at import by _configure().
cdef Blocking _BLOCKING_S, _BLOCKING_D
cdef fastbp_ukr_s _ukr_s = NULL
cdef fastbp_ukr_d _ukr_d = NULL
# Short-tile kernels for the first 4 or 8 rows of a tile (NULL where the ISA has none).
cdef fastbp_ukr_s _ukr4_s = NULL, _ukr8_s = NULL
cdef fastbp_ukr_d _ukr4_d = NULL, _ukr8_d = NULL

# Thread decisions, from fastbp._kernels.blocking (set by _configure_threads):
# one thread per GEMM_MADDS_PER_THREAD multiply-adds, about TASKS_PER_THREAD
# dynamically scheduled tasks per thread.
cdef Py_ssize_t GEMM_MADDS_PER_THREAD = 1 << 20
cdef Py_ssize_t TASKS_PER_THREAD = 4
cdef Py_ssize_t MIN_PART_COLUMNS = 128
# The unpacked float32 path (microkernels.h, AVX-512 and AVX2), from
# fastbp._kernels.blocking (set by _configure_direct): products of at most
# DIRECT_MAX_MADDS multiply-adds with k <= KC, and products of at most
# DIRECT_MAX_PANELS NR-wide column panels at any size; a B without unit column
# stride is copied row-major first when it has at most DIRECT_B_COPY_MAX values.
cdef Py_ssize_t DIRECT_MAX_MADDS = 1 << 20
cdef Py_ssize_t DIRECT_MAX_PANELS = 2
cdef Py_ssize_t DIRECT_B_COPY_MAX = 1 << 14
cdef int _isa = 0
# Values of packed B per wave of KC slices, about (blocking.B_WAVE_VALUES).
cdef Py_ssize_t B_WAVE_VALUES = 1 << 21
# Products whose smaller packed operand has at most this many values run on several
# threads with that operand packed by every thread for itself (blocking.PRIVATE_MAX_VALUES).
cdef Py_ssize_t PRIVATE_MAX_VALUES = 1 << 18

ISA_NAMES = ("generic", "avx2", "avx512")


# ---------------------------------------------------------------- packing
cdef void pack_a(const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                 Py_ssize_t i0, Py_ssize_t i1, Py_ssize_t pc, Py_ssize_t kc,
                 Py_ssize_t mr, floating* ap) noexcept nogil:
    """ap := A[i0:i1, pc:pc+kc] as MR-high micro-panels (ap[p*MR + r]), rows past i1 zero.

    IN a with element strides rs_a, cs_a; OUT ap, ceil((i1-i0)/MR)*MR*kc values.
    """
    cdef Py_ssize_t t, ip, r, p, rows
    cdef const floating* src
    cdef floating* dst
    for t in range((i1 - i0 + mr - 1) // mr):
        ip = i0 + t * mr
        rows = min(mr, i1 - ip)
        dst = ap + (ip - i0) * kc
        if rs_a == 1:  # column-major A (e.g. a transposed C-ordered array)
            for p in range(kc):
                src = a + ip + (pc + p) * cs_a
                for r in range(rows):
                    dst[p * mr + r] = src[r]
        elif cs_a == 1:
            if floating is float:  # row-major A: register transposes (AVX-512 16x16, AVX2 8x8)
                if mr <= 16 and fastbp_pack_transpose_s(_isa, a + ip * rs_a + pc, rs_a, <int>rows, kc,
                                                        dst, mr, <int>mr):
                    continue
            for r in range(rows):
                src = a + (ip + r) * rs_a + pc
                for p in range(kc):
                    dst[p * mr + r] = src[p]
        else:
            for r in range(rows):
                src = a + (ip + r) * rs_a + pc * cs_a
                for p in range(kc):
                    dst[p * mr + r] = src[p * cs_a]
        for r in range(rows, mr):
            for p in range(kc):
                dst[p * mr + r] = 0


cdef void pack_b(const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                 Py_ssize_t j0, Py_ssize_t j1, Py_ssize_t pc, Py_ssize_t kc,
                 Py_ssize_t nr, floating* bp) noexcept nogil:
    """bp := B[pc:pc+kc, j0:j1] as one NR-wide micro-panel (bp[p*NR + col]), j1 - j0 <= NR, zero-padded.

    IN b with element strides rs_b, cs_b; OUT bp, NR*kc values.
    """
    cdef Py_ssize_t p, col, cols = j1 - j0
    cdef const floating* src
    cdef Py_ssize_t half
    if rs_b == 1 and cs_b != 1:  # column-major B (e.g. a transposed C-ordered array): read along k
        if floating is float:  # register transposes, one per 16 columns (AVX-512, AVX2)
            if nr % 16 == 0 and _isa >= FASTBP_ISA_AVX2:
                for half in range(nr // 16):
                    fastbp_pack_transpose_s(_isa, b + pc + (j0 + 16 * half) * cs_b, cs_b,
                                            <int>max(0, min(16, cols - 16 * half)), kc, bp + 16 * half, nr, 16)
                return
        for col in range(cols):
            src = b + pc + (j0 + col) * cs_b
            for p in range(kc):
                bp[p * nr + col] = src[p]
        for col in range(cols, nr):
            for p in range(kc):
                bp[p * nr + col] = 0
    else:  # row-major or strided B: k outer, contiguous writes
        for p in range(kc):
            src = b + (pc + p) * rs_b + j0 * cs_b
            if cs_b == 1:
                for col in range(cols):
                    bp[p * nr + col] = src[col]
            else:
                for col in range(cols):
                    bp[p * nr + col] = src[col * cs_b]
            for col in range(cols, nr):
                bp[p * nr + col] = 0


# ---------------------------------------------------------------- kernels
cdef inline void micro_kernel(Blocking* bs, Py_ssize_t mr, Py_ssize_t nr, Py_ssize_t kc,
                              const floating* ap, const floating* bp, floating* c,
                              Py_ssize_t ldc, floating alpha, floating beta) noexcept nogil:
    """C[0:mr, 0:nr] := alpha*ap·bp + beta*C, through the MR x NR kernel of the ISA, or for a
    tile of at most 4 or 8 rows its short twin (same arithmetic per element, less of it); a
    tile narrower than NR, or shorter than its kernel, goes through a temporary tile."""
    cdef fastbp_ukr_s ukr_s = _ukr_s
    cdef fastbp_ukr_d ukr_d = _ukr_d
    cdef Py_ssize_t rows = bs.mr
    if floating is float:
        if mr < bs.mr and mr <= 8 and _ukr8_s != NULL:
            rows, ukr_s = (4, _ukr4_s) if mr <= 4 else (8, _ukr8_s)
        if mr == rows and nr == bs.nr:
            ukr_s(kc, ap, bp, c, ldc, alpha, beta)
        else:
            fastbp_edge_s(ukr_s, <int>bs.mr, <int>bs.nr, <int>mr, <int>nr, kc, ap, bp, c, ldc, alpha, beta)
    else:
        if mr < bs.mr and mr <= 8 and _ukr8_d != NULL:
            rows, ukr_d = (4, _ukr4_d) if mr <= 4 else (8, _ukr8_d)
        if mr == rows and nr == bs.nr:
            ukr_d(kc, ap, bp, c, ldc, alpha, beta)
        else:
            fastbp_edge_d(ukr_d, <int>bs.mr, <int>bs.nr, <int>mr, <int>nr, kc, ap, bp, c, ldc, alpha, beta)


cdef inline void epilogue(floating* c, Py_ssize_t ldc, const floating* bias, int act,
                          floating* out, Py_ssize_t ldo, Py_ssize_t mr, Py_ssize_t nr) noexcept nogil:
    """C[i, :] += bias; out[i, :] := act(C[i, :]) on an mr x nr tile (bias/act skipped when NULL/-1).

    relu and identity, the common cases, are one fused pass per row (inlined,
    vectorised); other activations call act_row once per row after the bias.
    """
    cdef Py_ssize_t i, j
    cdef floating* row
    cdef floating* dst
    cdef floating v
    # Separate loops for out == C (z and a one buffer, the usual case): with
    # two stores to possibly aliasing rows the compiler keeps the loop scalar
    # (relu on a 32 x 32 tile: 1.6 us instead of 0.1 us).
    if act == ACT_RELU and bias != NULL:
        for i in range(mr):
            row = c + i * ldc
            dst = out + i * ldo
            if dst == row:
                for j in range(nr):
                    v = row[j] + bias[j]
                    row[j] = 0 if v < 0 else v  # NaN stays NaN
            else:
                for j in range(nr):
                    v = row[j] + bias[j]
                    row[j] = v
                    dst[j] = 0 if v < 0 else v
        return
    if (act == ACT_IDENTITY or act < 0) and bias != NULL:
        for i in range(mr):
            row = c + i * ldc
            dst = out + i * ldo if act >= 0 else row
            for j in range(nr):
                row[j] = row[j] + bias[j]
            if dst != row:
                for j in range(nr):
                    dst[j] = row[j]
        return
    for i in range(mr):
        row = c + i * ldc
        if bias != NULL:
            for j in range(nr):
                row[j] = row[j] + bias[j]
        if act >= 0:
            act_row(act, row, out + i * ldo, nr)


cdef void macro_kernel(Blocking* bs, Py_ssize_t mb, Py_ssize_t nc, Py_ssize_t kc,
                       const floating* ap, const floating* bp, floating alpha, floating beta,
                       floating* c, Py_ssize_t ldc, bint last,
                       const floating* bias, int act, floating* out, Py_ssize_t ldo) noexcept nogil:
    """C[0:mb, 0:nc] := alpha*Ap·Bp + beta*C for one packed block; epilogue after the last slice."""
    cdef Py_ssize_t q, t, jr, ir, mr, nr
    cdef bint fused = last and (bias != NULL or act >= 0)
    # 2nd loop (jr, NR)
    for q in range((nc + bs.nr - 1) // bs.nr):
        jr = q * bs.nr
        nr = min(bs.nr, nc - jr)
        # 1st loop (ir, MR)
        for t in range((mb + bs.mr - 1) // bs.mr):
            ir = t * bs.mr
            mr = min(bs.mr, mb - ir)
            micro_kernel(bs, mr, nr, kc, ap + ir * kc, bp + jr * kc,
                         c + ir * ldc + jr, ldc, alpha, beta)
            if fused:
                epilogue(c + ir * ldc + jr, ldc, (bias + jr) if bias != NULL else NULL, act,
                         (out + ir * ldo + jr) if act >= 0 else NULL, ldo, mr, nr)


cdef void _pack_b_panel(Blocking* bs, const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                        Py_ssize_t jc, Py_ssize_t nc, Py_ssize_t pc, Py_ssize_t kc,
                        Py_ssize_t q, floating* bpack) noexcept nogil:
    """Pack micro-panel q of B[pc:pc+kc, jc:jc+nc]."""
    cdef Py_ssize_t j0 = jc + q * bs.nr
    pack_b(b, rs_b, cs_b, j0, min(j0 + bs.nr, jc + nc), pc, kc, bs.nr, bpack + q * bs.nr * kc)


cdef void _task(Blocking* bs, Py_ssize_t item, Py_ssize_t n_blocks, Py_ssize_t n_tiles,
                Py_ssize_t n_parts, Py_ssize_t n_panels, Py_ssize_t m, Py_ssize_t jc, Py_ssize_t nc,
                Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t kc_max, Py_ssize_t k,
                floating alpha, const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                const floating* bpack, Py_ssize_t slice_stride, floating beta, floating* c, Py_ssize_t ldc,
                const floating* bias, int act, floating* out, Py_ssize_t ldo,
                floating* apack) noexcept nogil:
    """One task of the 3rd loop over KC slices s0..s1-1 of a wave: block blk = item // n_parts
    (rows of whole MR tiles [blk*T/nb, (blk+1)*T/nb)) times column part item % n_parts (whole NR
    micro-panels of the packed B). For each slice, in increasing order, packs that block of A
    into apack (the running thread's region) and runs the macro-kernel on it."""
    cdef Py_ssize_t blk = item // n_parts, part = item % n_parts
    cdef Py_ssize_t i0 = (blk * n_tiles // n_blocks) * bs.mr
    cdef Py_ssize_t i1 = min(((blk + 1) * n_tiles // n_blocks) * bs.mr, m)
    cdef Py_ssize_t j0 = (part * n_panels // n_parts) * bs.nr
    cdef Py_ssize_t j1 = min(((part + 1) * n_panels // n_parts) * bs.nr, nc)
    cdef Py_ssize_t s, pc, kc
    if i1 <= i0 or j1 <= j0:
        return
    for s in range(s0, s1):  # 4th loop (pc, KC), in increasing k: every slice updates the same C
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        pack_a(a, rs_a, cs_a, i0, i1, pc, kc, bs.mr, apack)
        macro_kernel(bs, i1 - i0, j1 - j0, kc, apack, bpack + (s - s0) * slice_stride + j0 * kc,
                     alpha, beta if pc == 0 else 1, c + i0 * ldc + jc + j0, ldc, pc + kc == k,
                     (bias + jc + j0) if bias != NULL else NULL, act,
                     (out + i0 * ldo + jc + j0) if act >= 0 else NULL, ldo)


cdef inline void _pack_b_wave(Blocking* bs, Py_ssize_t q, Py_ssize_t n_panels,
                              const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                              Py_ssize_t jc, Py_ssize_t nc, Py_ssize_t s0, Py_ssize_t kc_max, Py_ssize_t k,
                              floating* bpack, Py_ssize_t slice_stride) noexcept nogil:
    """Pack micro-panel q % n_panels of B[pc:pc+kc, jc:jc+nc] for KC slice s0 + q // n_panels."""
    cdef Py_ssize_t s = s0 + q // n_panels
    cdef Py_ssize_t pc = s * kc_max
    _pack_b_panel(bs, b, rs_b, cs_b, jc, nc, pc, min(kc_max, k - pc), q % n_panels,
                  bpack + (s - s0) * slice_stride)


cdef void _scale_c(Py_ssize_t m, Py_ssize_t n, floating beta, floating* c, Py_ssize_t ldc,
                   const floating* bias, int act, floating* out, Py_ssize_t ldo) noexcept nogil:
    """k == 0: C := beta*C (0 when beta == 0, C not read), then the epilogue."""
    cdef Py_ssize_t i, j
    for i in range(m):
        for j in range(n):
            c[i * ldc + j] = 0 if beta == 0 else beta * c[i * ldc + j]
    epilogue(c, ldc, bias, act, out, ldo, m, n)


cdef void _direct_rows_s(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t kc_max, float alpha,
                         const float* a, Py_ssize_t rs_a, Py_ssize_t cs_a, const float* b, Py_ssize_t rs_b,
                         float beta, float* c, Py_ssize_t ldc) noexcept nogil:
    """C[0:m] := alpha*A·B + beta*C unpacked, over k in the packed path's KC slices (so the same bits)."""
    cdef Py_ssize_t s, pc
    for s in range((k + kc_max - 1) // kc_max):
        pc = s * kc_max
        fastbp_direct_s(_isa, m, n, min(kc_max, k - pc), alpha, a + pc * cs_a, rs_a, cs_a,
                        b + pc * rs_b, rs_b, beta if s == 0 else 1, c, ldc)


cdef int _direct_s(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t kc_max, float alpha,
                   const float* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                   const float* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                   float beta, float* c, Py_ssize_t ldc,
                   const float* bias, int act, float* out, Py_ssize_t ldo, int nt) noexcept nogil:
    """The unpacked product with the epilogue, on nt threads over blocks of whole MR-row
    tiles, over gemm_nogil's KC slices of kc_max; a B without unit column stride (δ·Wᵀ)
    is first copied row-major when small.
    Returns 0 when done, -1 when the packed path must run."""
    cdef Py_ssize_t mr = _BLOCKING_S.mr  # the unpacked tiles are the packed kernel's MR rows
    cdef Py_ssize_t p, j, t, i0, i1, n_tiles = (m + mr - 1) // mr
    cdef float* rows = NULL
    if cs_b != 1:
        if k * n > DIRECT_B_COPY_MAX:
            return -1
        rows = <float*>fastbp_workspace(k * n * sizeof(float))
        if rows == NULL:
            return -1
        for j in range(n):  # along B's columns: contiguous reads when B is a transpose (rs_b == 1)
            for p in range(k):
                rows[p * n + j] = b[p * rs_b + j * cs_b]
        b, rs_b = rows, n
    cdef Py_ssize_t n_chunks = min(n_tiles, TASKS_PER_THREAD * nt) if nt > 1 else 1
    if n_chunks < 2:
        _direct_rows_s(m, n, k, kc_max, alpha, a, rs_a, cs_a, b, rs_b, beta, c, ldc)
        if bias != NULL or act >= 0:
            epilogue(c, ldc, bias, act, out, ldo, m, n)
    else:
        for t in prange(n_chunks, schedule="dynamic", num_threads=nt):
            i0 = (t * n_tiles // n_chunks) * mr
            i1 = min(((t + 1) * n_tiles // n_chunks) * mr, m)
            _direct_rows_s(i1 - i0, n, k, kc_max, alpha, a + i0 * rs_a, rs_a, cs_a, b, rs_b, beta,
                           c + i0 * ldc, ldc)
            if bias != NULL or act >= 0:
                epilogue(c + i0 * ldc, ldc, bias, act, (out + i0 * ldo) if act >= 0 else NULL, ldo,
                         i1 - i0, n)
    if rows != NULL:
        fastbp_workspace_release(rows, k * n * sizeof(float))
    return 0


cdef bint isa_is_avx512() noexcept nogil:
    return _isa >= FASTBP_ISA_AVX512


cdef inline Py_ssize_t gemm_threads(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int n_threads) noexcept nogil:
    """blocking.gemm_threads: one thread per GEMM_MADDS_PER_THREAD multiply-adds, in [1, n_threads]."""
    return max(1, min(<Py_ssize_t>n_threads, (m * n * k) // GEMM_MADDS_PER_THREAD))


cdef void gemm_tasks(Py_ssize_t n_tiles, Py_ssize_t n_panels, Py_ssize_t mr, Py_ssize_t nr, Py_ssize_t mc,
                     Py_ssize_t nt, Py_ssize_t* n_blocks, Py_ssize_t* n_parts) noexcept nogil:
    """blocking.gemm_tasks: (row blocks, column parts) of the 3rd loop's tasks."""
    cdef Py_ssize_t tiles_per_mc = max(1, mc // mr)
    cdef Py_ssize_t target = TASKS_PER_THREAD * nt
    n_blocks[0] = (n_tiles + tiles_per_mc - 1) // tiles_per_mc
    n_parts[0] = 1
    if nt > 1:
        n_blocks[0] = min(n_tiles, max(n_blocks[0], target))
        if n_blocks[0] < target:
            n_parts[0] = max(1, min(n_panels * nr // MIN_PART_COLUMNS, (target + n_blocks[0] - 1) // n_blocks[0]))
        while (n_blocks[0] * n_parts[0]) % nt != 0 and n_blocks[0] < n_tiles:
            n_blocks[0] += 1


def _gemm_tasks(Py_ssize_t n_tiles, Py_ssize_t n_panels, Py_ssize_t mr, Py_ssize_t nr, Py_ssize_t mc,
                Py_ssize_t nt):
    """gemm_tasks, for the test that it agrees with blocking.gemm_tasks."""
    cdef Py_ssize_t n_blocks, n_parts
    gemm_tasks(n_tiles, n_panels, mr, nr, mc, nt, &n_blocks, &n_parts)
    return n_blocks, n_parts


def _gemm_threads(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, int n_threads):
    """gemm_threads, for the test that it agrees with blocking.gemm_threads."""
    return gemm_threads(m, n, k, n_threads)


cdef inline Py_ssize_t wave_length(Py_ssize_t n_slices, Py_ssize_t slice_values, Py_ssize_t nt) noexcept nogil:
    """blocking.wave_slices: KC slices of B packed at once."""
    if nt == 1:
        return 1
    return min(n_slices, max(1, B_WAVE_VALUES // slice_values))


cdef inline int private_split(Py_ssize_t n_tiles, Py_ssize_t n_panels, Py_ssize_t k, Py_ssize_t mr,
                              Py_ssize_t nr, Py_ssize_t nt) noexcept nogil:
    """blocking.private_split: 0 (the shared path), 1 (B private, tasks over rows) or 2 (A private,
    tasks over columns)."""
    cdef Py_ssize_t a_values = n_tiles * mr * k, b_values = n_panels * nr * k
    cdef bint by_rows = (b_values <= a_values and n_tiles >= nt) or n_panels < nt
    if by_rows:
        return 1 if b_values <= PRIVATE_MAX_VALUES and n_tiles >= nt else 0
    return 2 if a_values <= PRIVATE_MAX_VALUES else 0


def _private_split(Py_ssize_t n_tiles, Py_ssize_t n_panels, Py_ssize_t k, Py_ssize_t mr, Py_ssize_t nr,
                   Py_ssize_t nt):
    """private_split, for the test that it agrees with blocking.private_split."""
    return private_split(n_tiles, n_panels, k, mr, nr, nt)


cdef void _pack_private(Blocking* bs, bint b_private, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                        Py_ssize_t n_slices, Py_ssize_t kc_max,
                        const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b, floating* dst) noexcept nogil:
    """Pack all of B (b_private) or all of A, slice by slice: slice s at dst + width*pc, width the
    operand's padded column (B) or row (A) count, in the packed layout of the shared path."""
    cdef Py_ssize_t s, pc, kc, q, n_panels = (n + bs.nr - 1) // bs.nr
    cdef Py_ssize_t width = n_panels * bs.nr if b_private else ((m + bs.mr - 1) // bs.mr) * bs.mr
    for s in range(n_slices):
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        if b_private:
            for q in range(n_panels):
                _pack_b_panel(bs, b, rs_b, cs_b, 0, n, pc, kc, q, dst + width * pc)
        else:
            pack_a(a, rs_a, cs_a, 0, m, pc, kc, bs.mr, dst + width * pc)


cdef void _private_task(Blocking* bs, bint b_private, Py_ssize_t task, Py_ssize_t n_tasks,
                        Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t n_slices, Py_ssize_t kc_max,
                        floating alpha, const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                        const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                        floating beta, floating* c, Py_ssize_t ldc,
                        const floating* bias, int act, floating* out, Py_ssize_t ldo,
                        const floating* packed, floating* scratch) noexcept nogil:
    """One task of the private path: rows [i0, i1) of whole MR tiles (b_private) or columns
    [j0, j1) of whole NR panels, over every KC slice in increasing order. The other operand's
    part is packed into scratch slice by slice; ``packed`` is this thread's private operand."""
    cdef Py_ssize_t n_tiles = (m + bs.mr - 1) // bs.mr, n_panels = (n + bs.nr - 1) // bs.nr
    cdef Py_ssize_t i0 = 0, i1 = m, j0 = 0, j1 = n, s, pc, kc, q
    cdef const floating* ap
    cdef const floating* bp
    if b_private:
        i0 = (task * n_tiles // n_tasks) * bs.mr
        i1 = min(((task + 1) * n_tiles // n_tasks) * bs.mr, m)
    else:
        j0 = (task * n_panels // n_tasks) * bs.nr
        j1 = min(((task + 1) * n_panels // n_tasks) * bs.nr, n)
    if i1 <= i0 or j1 <= j0:
        return
    for s in range(n_slices):  # 4th loop (pc, KC), in increasing k
        pc = s * kc_max
        kc = min(kc_max, k - pc)
        if b_private:
            pack_a(a, rs_a, cs_a, i0, i1, pc, kc, bs.mr, scratch)
            ap = scratch
            bp = packed + n_panels * bs.nr * pc
        else:
            for q in range((j1 - j0 + bs.nr - 1) // bs.nr):
                _pack_b_panel(bs, b, rs_b, cs_b, j0, j1 - j0, pc, kc, q, scratch)
            ap = packed + n_tiles * bs.mr * pc
            bp = scratch
        macro_kernel(bs, i1 - i0, j1 - j0, kc, ap, bp, alpha, beta if pc == 0 else 1,
                     c + i0 * ldc + j0, ldc, pc + kc == k,
                     (bias + j0) if bias != NULL else NULL, act,
                     (out + i0 * ldo + j0) if act >= 0 else NULL, ldo)


cdef int _gemm_private(Blocking* bs, bint b_private, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       Py_ssize_t n_slices, Py_ssize_t kc_max, floating alpha,
                       const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                       const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                       floating beta, floating* c, Py_ssize_t ldc,
                       const floating* bias, int act, floating* out, Py_ssize_t ldo,
                       Py_ssize_t nt) noexcept nogil:
    """The private path on nt threads: each thread packs the smaller operand for itself, once, when
    it takes its first task, so no packed value crosses between cores and one parallel loop with
    no barrier inside does the call (a shared packed B cost ~30 us per call in cross-core cache
    transfers and the barrier: 128x256x128 took as long on 2 quiet threads as on one)."""
    cdef Py_ssize_t n_tiles = (m + bs.mr - 1) // bs.mr, n_panels = (n + bs.nr - 1) // bs.nr
    cdef Py_ssize_t n_tasks = min(n_tiles if b_private else n_panels, TASKS_PER_THREAD * nt)
    cdef Py_ssize_t private_values = (n_panels * bs.nr if b_private else n_tiles * bs.mr) * k
    # scratch: the largest row block of A, or column part of B, for one KC slice
    cdef Py_ssize_t scratch_values = (((n_tiles + n_tasks - 1) // n_tasks) * bs.mr if b_private
                                      else ((n_panels + n_tasks - 1) // n_tasks) * bs.nr) * kc_max
    cdef Py_ssize_t region = (private_values + scratch_values + 15) // 16 * 16  # own cache lines
    cdef size_t work_bytes = nt * region * sizeof(floating)
    cdef floating* work = <floating*>fastbp_workspace(work_bytes)
    if work == NULL:
        return -1
    cdef char packed[64]
    cdef double stats[128]  # per thread (later ones share the last slot): time in tasks, tasks
    cdef Py_ssize_t tid, task
    cdef double t_start, t_task
    cdef floating* mine
    for tid in range(64):
        packed[tid] = 0
        stats[2 * tid] = 0
        stats[2 * tid + 1] = 0
    t_start = fastbp_now()
    for task in prange(n_tasks, schedule="dynamic", num_threads=nt):
        t_task = fastbp_now()
        tid = threadid()
        mine = work + tid * region
        if not packed[min(tid, 63)]:
            _pack_private(bs, b_private, m, n, k, n_slices, kc_max, a, rs_a, cs_a, b, rs_b, cs_b, mine)
            packed[min(tid, 63)] = 1
        _private_task(bs, b_private, task, n_tasks, m, n, k, n_slices, kc_max, alpha, a, rs_a, cs_a,
                      b, rs_b, cs_b, beta, c, ldc, bias, act, out, ldo, mine, mine + private_values)
        tid = min(tid, 63)  # its task times, for the back-off
        stats[2 * tid] += fastbp_now() - t_task
        stats[2 * tid + 1] += 1
    judge_by_busiest(fastbp_now() - t_start, stats, nt, n_tasks)
    fastbp_workspace_release(work, work_bytes)
    return 0


# ---------------------------------------------------------------- B packed once, used many times
cdef floating* pack_b_once(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* b, Py_ssize_t rs_b,
                           Py_ssize_t cs_b) noexcept nogil:
    """B (k, n) packed whole, as the private path packs it (every KC slice, every NR micro-panel),
    into the calling thread's packed-B workspace, for gemm_packed_b with A of m rows: a recurrent
    weight multiplied at every step is packed once per sequence instead of once per step.

    Returns NULL where the product reads B unpacked (nothing to save: the float32 unpacked path)
    or memory is short; call gemm_nogil with B then. Give the buffer back with release_packed_b.
    """
    cdef Blocking bs
    if floating is float:
        bs = _BLOCKING_S
    else:
        bs = _BLOCKING_D
    if m <= 0 or n <= 0 or k <= 0:
        return NULL
    if floating is float:
        if _isa >= FASTBP_ISA_AVX2 and ((k <= bs.kc and m * n * k <= DIRECT_MAX_MADDS)
                                        or n <= DIRECT_MAX_PANELS * bs.nr):
            return NULL
    cdef Py_ssize_t n_slices = (k + bs.kc - 1) // bs.kc
    cdef Py_ssize_t kc_max = (k + n_slices - 1) // n_slices
    cdef floating* packed = <floating*>fastbp_packed_b_workspace(_packed_b_bytes(&bs, n, k, sizeof(floating)))
    if packed != NULL:
        _pack_private(&bs, True, m, n, k, n_slices, kc_max, NULL, 0, 0, b, rs_b, cs_b, packed)
    return packed


cdef inline size_t _packed_b_bytes(Blocking* bs, Py_ssize_t n, Py_ssize_t k, size_t itemsize) noexcept nogil:
    return ((n + bs.nr - 1) // bs.nr) * bs.nr * k * itemsize


cdef void release_packed_b(floating* packed, Py_ssize_t n, Py_ssize_t k) noexcept nogil:
    """Give back what pack_b_once returned (NULL is fine)."""
    if packed != NULL:
        if floating is float:
            fastbp_packed_b_workspace_release(packed, _packed_b_bytes(&_BLOCKING_S, n, k, sizeof(float)))
        else:
            fastbp_packed_b_workspace_release(packed, _packed_b_bytes(&_BLOCKING_D, n, k, sizeof(double)))


cdef int gemm_packed_b(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                       const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                       const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b, const floating* packed,
                       floating beta, floating* c, Py_ssize_t ldc, int n_threads,
                       rows_done_fn rows_done, void* ctx) noexcept nogil:
    """C := alpha*A·B + beta*C with B as pack_b_once packed it for (m, n, k), or, when packed is
    NULL, read from b by gemm_nogil; then rows_done(ctx, i0, i1) on each finished row block.
    The tasks cut rows of A (whole MR tiles), each packing its rows slice by slice, over the KC
    slices in increasing order: the tiles and slices of gemm_nogil, so the same bits. 0, or -1
    if out of memory."""
    cdef int status
    if packed == NULL:
        status = gemm_nogil(m, n, k, alpha, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, ldc, NULL, -1, NULL, 0,
                            n_threads)
        if status == 0 and rows_done != NULL:
            rows_done(ctx, 0, m)
        return status
    cdef Blocking bs
    if floating is float:
        bs = _BLOCKING_S
    else:
        bs = _BLOCKING_D
    cdef Py_ssize_t nt = gemm_threads_now(gemm_threads(m, n, k, n_threads))
    cdef Py_ssize_t n_slices = (k + bs.kc - 1) // bs.kc
    cdef Py_ssize_t kc_max = (k + n_slices - 1) // n_slices
    cdef Py_ssize_t n_tiles = (m + bs.mr - 1) // bs.mr
    cdef Py_ssize_t n_tasks = min(n_tiles, TASKS_PER_THREAD * nt) if nt > 1 else 1
    nt = min(nt, n_tasks)
    cdef Py_ssize_t region = (((n_tiles + n_tasks - 1) // n_tasks) * bs.mr * kc_max + 15) // 16 * 16
    cdef size_t work_bytes = nt * region * sizeof(floating)
    cdef floating* work = <floating*>fastbp_workspace(work_bytes)
    if work == NULL:
        return -1
    cdef double stats[128]  # per thread (later ones share the last slot): time in tasks, tasks
    cdef Py_ssize_t tid, task
    cdef double t_start, t_task
    if nt == 1:
        _private_task(&bs, True, 0, 1, m, n, k, n_slices, kc_max, alpha, a, rs_a, cs_a, NULL, 0, 0,
                      beta, c, ldc, NULL, -1, NULL, 0, packed, work)
        if rows_done != NULL:
            rows_done(ctx, 0, m)
    else:
        for tid in range(128):
            stats[tid] = 0
        t_start = fastbp_now()
        for task in prange(n_tasks, schedule="dynamic", num_threads=nt):
            t_task = fastbp_now()
            tid = threadid()
            _private_task(&bs, True, task, n_tasks, m, n, k, n_slices, kc_max, alpha, a, rs_a, cs_a,
                          NULL, 0, 0, beta, c, ldc, NULL, -1, NULL, 0, packed, work + tid * region)
            if rows_done != NULL:  # the rows of this task (as _private_task cuts them)
                rows_done(ctx, (task * n_tiles // n_tasks) * bs.mr,
                          min(((task + 1) * n_tiles // n_tasks) * bs.mr, m))
            tid = min(tid, 63)  # its task times, for the back-off
            stats[2 * tid] += fastbp_now() - t_task
            stats[2 * tid + 1] += 1
        judge_by_busiest(fastbp_now() - t_start, stats, nt, n_tasks)
    fastbp_workspace_release(work, work_bytes)
    return 0


cdef int gemm_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                    const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                    const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                    floating beta, floating* c, Py_ssize_t ldc,
                    const floating* bias, int act, floating* out, Py_ssize_t ldo,
                    int n_threads) noexcept nogil:
    """C := alpha*A·B + beta*C (then C += bias; out := act(C) per tile). 0, or -1 if out of memory."""
    cdef Blocking bs
    if floating is float:
        bs = _BLOCKING_S
    else:
        bs = _BLOCKING_D
    if m <= 0 or n <= 0:
        return 0
    if k <= 0:
        _scale_c(m, n, beta, c, ldc, bias, act, out, ldo)
        return 0

    cdef Py_ssize_t nt = gemm_threads_now(gemm_threads(m, n, k, n_threads))
    # KC slices of equal length (k = 784 gives 4 x 196, not 3 x 256 + 16).
    cdef Py_ssize_t n_slices = (k + bs.kc - 1) // bs.kc
    cdef Py_ssize_t kc_max = (k + n_slices - 1) // n_slices

    if floating is float:
        # Unpacked: small products, and narrow ones, whose packed A would serve at most
        # DIRECT_MAX_PANELS micro-panels of B (see blocking.DIRECT_MAX_PANELS).
        if _isa >= FASTBP_ISA_AVX2 and ((k <= bs.kc and m * n * k <= DIRECT_MAX_MADDS)
                                        or n <= DIRECT_MAX_PANELS * bs.nr):
            if _direct_s(m, n, k, kc_max, alpha, a, rs_a, cs_a, b, rs_b, cs_b, beta, c, ldc,
                         bias, act, out, ldo, <int>nt) == 0:
                return 0

    cdef int split = private_split((m + bs.mr - 1) // bs.mr, (n + bs.nr - 1) // bs.nr, k,
                                   bs.mr, bs.nr, nt) if nt > 1 else 0
    if split:
        return _gemm_private(&bs, split == 1, m, n, k, n_slices, kc_max, alpha, a, rs_a, cs_a, b, rs_b, cs_b,
                             beta, c, ldc, bias, act, out, ldo, nt)

    cdef Py_ssize_t nc_max = min(bs.nc, n)
    cdef Py_ssize_t max_panels = (nc_max + bs.nr - 1) // bs.nr
    # 3rd-loop tasks (blocking.gemm_tasks), taken dynamically by the threads.
    cdef Py_ssize_t n_tiles = (m + bs.mr - 1) // bs.mr
    cdef Py_ssize_t n_blocks, n_parts
    gemm_tasks(n_tiles, max_panels, bs.mr, bs.nr, bs.mc, nt, &n_blocks, &n_parts)
    cdef Py_ssize_t n_items = n_blocks * n_parts
    cdef Py_ssize_t block_rows = ((n_tiles + n_blocks - 1) // n_blocks) * bs.mr
    # KC slices of B packed at once (a wave, blocking.wave_slices): one parallel
    # region and one barrier per wave, not per slice.
    cdef Py_ssize_t slice_stride = max_panels * bs.nr * kc_max
    cdef Py_ssize_t wave_slices = wave_length(n_slices, slice_stride, nt)
    cdef Py_ssize_t a_region = block_rows * kc_max
    cdef size_t work_bytes = (nt * a_region + wave_slices * slice_stride) * sizeof(floating)
    cdef floating* work = <floating*>fastbp_workspace(work_bytes)
    if work == NULL:
        return -1
    cdef floating* bpack = work
    cdef floating* apack = work + wave_slices * slice_stride

    cdef Py_ssize_t jj, ww, jc, nc, n_panels, s0, s1, q, item, all_tasks = 0
    cdef double t_start, t_task, wall = 0
    # per thread (up to 64; later ones share the last slot): time in tasks, tasks
    cdef double stats[128]
    cdef Py_ssize_t tid
    for tid in range(128):
        stats[tid] = 0
    # 5th loop (jc, NC)
    for jj in range((n + bs.nc - 1) // bs.nc):
        jc = jj * bs.nc
        nc = min(bs.nc, n - jc)
        n_panels = (nc + bs.nr - 1) // bs.nr
        # waves of KC slices, in increasing k
        for ww in range((n_slices + wave_slices - 1) // wave_slices):
            s0 = ww * wave_slices
            s1 = min(s0 + wave_slices, n_slices)
            if nt == 1:
                for q in range((s1 - s0) * n_panels):
                    _pack_b_wave(&bs, q, n_panels, b, rs_b, cs_b, jc, nc, s0, kc_max, k, bpack, slice_stride)
                for item in range(n_items):
                    _task(&bs, item, n_blocks, n_tiles, n_parts, n_panels, m, jc, nc, s0, s1, kc_max, k,
                          alpha, a, rs_a, cs_a, bpack, slice_stride, beta, c, ldc, bias, act, out, ldo, apack)
            else:
                t_start = fastbp_now()
                with parallel(num_threads=nt):
                    for q in prange((s1 - s0) * n_panels, schedule="dynamic"):
                        _pack_b_wave(&bs, q, n_panels, b, rs_b, cs_b, jc, nc, s0, kc_max, k,
                                     bpack, slice_stride)
                    # (the implicit barrier of the loop above: B is packed)
                    for item in prange(n_items, schedule="dynamic"):
                        t_task = fastbp_now()
                        _task(&bs, item, n_blocks, n_tiles, n_parts, n_panels, m, jc, nc, s0, s1,
                              kc_max, k, alpha, a, rs_a, cs_a, bpack, slice_stride, beta, c, ldc,
                              bias, act, out, ldo, apack + threadid() * a_region)
                        tid = min(threadid(), 63)  # its task times, for the back-off
                        stats[2 * tid] += fastbp_now() - t_task
                        stats[2 * tid + 1] += 1
                wall += fastbp_now() - t_start
                all_tasks += n_items
    if nt > 1:
        judge_by_busiest(wall, stats, nt, all_tasks)
    fastbp_workspace_release(work, work_bytes)
    return 0


# ---------------------------------------------------------------- Python API
def gemm(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c,
         double alpha, double beta, int n_threads):
    """c := alpha*a·b + beta*c.  IN a (m, k), b (k, n), any strides; IN/OUT c (m, n) C-contiguous.

    c is not read when beta == 0.
    """
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n:
        raise ValueError(
            f"gemm: shapes a {tuple(a.shape)[:2]}, b {tuple(b.shape)[:2]}, c {tuple(c.shape)[:2]} do not agree")
    if m == 0 or n == 0:
        return
    cdef Py_ssize_t itemsize = sizeof(floating)
    cdef const floating* pa = &a[0, 0] if k > 0 else NULL
    cdef const floating* pb = &b[0, 0] if k > 0 else NULL
    cdef int status
    with nogil:
        status = gemm_nogil(m, n, k, <floating>alpha,
                            pa, a.strides[0] // itemsize, a.strides[1] // itemsize,
                            pb, b.strides[0] // itemsize, b.strides[1] // itemsize,
                            <floating>beta, &c[0, 0], n, NULL, -1, NULL, 0, n_threads)
    if status != 0:
        raise MemoryError("gemm: cannot allocate the packing workspace")


def _gemm_packed_b(const floating[:, :] a, const floating[:, :] b, floating[:, ::1] c,
                   double alpha, double beta, int n_threads):
    """c := alpha*a·b + beta*c through pack_b_once and gemm_packed_b, for the test that it gives
    gemm's bits. Returns whether B was packed once (False: the product reads B unpacked)."""
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], n = b.shape[1]
    if b.shape[0] != k or c.shape[0] != m or c.shape[1] != n or min(m, n, k) == 0:
        raise ValueError(f"_gemm_packed_b: shapes a {tuple(a.shape)[:2]}, b {tuple(b.shape)[:2]}, "
                         f"c {tuple(c.shape)[:2]} do not agree or are empty")
    cdef Py_ssize_t itemsize = sizeof(floating)
    cdef Py_ssize_t rs_b = b.strides[0] // itemsize, cs_b = b.strides[1] // itemsize
    cdef floating* packed
    cdef int status
    with nogil:
        packed = pack_b_once(m, n, k, &b[0, 0], rs_b, cs_b)
        status = gemm_packed_b(m, n, k, <floating>alpha, &a[0, 0], a.strides[0] // itemsize,
                               a.strides[1] // itemsize, &b[0, 0], rs_b, cs_b, packed, <floating>beta,
                               &c[0, 0], n, n_threads, NULL, NULL)
        release_packed_b(packed, n, k)
    if status != 0:
        raise MemoryError("_gemm_packed_b: cannot allocate the packing workspace")
    return packed != NULL


# ---------------------------------------------------------------- set-up
def _detect_isa():
    """Best ISA of this CPU, lowered (never raised) by FASTBP_CYTHON_ISA=avx2|generic."""
    best = fastbp_detect_isa()
    forced = os.environ.get("FASTBP_CYTHON_ISA")
    if forced:
        if forced not in ISA_NAMES:
            raise ValueError(f"FASTBP_CYTHON_ISA must be one of {ISA_NAMES}, got {forced!r}")
        best = min(best, ISA_NAMES.index(forced))
    return best


def _configure(int isa, sizes_s, sizes_d):
    """Select the micro-kernels of ``isa`` and the block sizes (MR, NR, KC, MC, NC) per dtype.

    Raises AssertionError when the table's MR, NR are not those compiled for ``isa``.
    """
    global _BLOCKING_S, _BLOCKING_D, _ukr_s, _ukr_d, _ukr4_s, _ukr8_s, _ukr4_d, _ukr8_d, _isa
    cdef int mr, nr
    cdef Blocking bs
    for is_double, sizes in ((0, sizes_s), (1, sizes_d)):
        fastbp_tile(isa, is_double, &mr, &nr)
        MR, NR, KC, MC, NC = (int(v) for v in sizes)
        if (MR, NR) != (mr, nr):
            raise AssertionError(
                f"blocking table gives MR, NR = {MR}, {NR} for {ISA_NAMES[isa]} "
                f"{'float64' if is_double else 'float32'}, but the compiled micro-kernel is {mr} x {nr}")
        if min(KC, MC, NC) < 1:
            raise ValueError(f"block sizes must be positive, got KC, MC, NC = {KC}, {MC}, {NC}")
        bs.mr, bs.nr, bs.kc, bs.mc, bs.nc = MR, NR, KC, MC, NC
        if is_double:
            _BLOCKING_D = bs
        else:
            _BLOCKING_S = bs
    _ukr_s = fastbp_select_ukr_s(isa)
    _ukr_d = fastbp_select_ukr_d(isa)
    _ukr4_s, _ukr8_s = fastbp_select_short_ukr_s(isa, 4), fastbp_select_short_ukr_s(isa, 8)
    _ukr4_d, _ukr8_d = fastbp_select_short_ukr_d(isa, 4), fastbp_select_short_ukr_d(isa, 8)
    _isa = isa


def _configure_threads(Py_ssize_t madds_per_thread, Py_ssize_t tasks_per_thread,
                       Py_ssize_t min_part_columns, Py_ssize_t b_wave_values,
                       Py_ssize_t private_max_values):
    """Set the thread decisions of fastbp._kernels.blocking (GEMM_MADDS_PER_THREAD,
    TASKS_PER_THREAD, MIN_PART_COLUMNS, B_WAVE_VALUES, PRIVATE_MAX_VALUES)."""
    global GEMM_MADDS_PER_THREAD, TASKS_PER_THREAD, MIN_PART_COLUMNS, B_WAVE_VALUES, PRIVATE_MAX_VALUES
    if min(madds_per_thread, tasks_per_thread, min_part_columns, b_wave_values, private_max_values) < 1:
        raise ValueError(f"thread thresholds must be positive, got {madds_per_thread}, "
                         f"{tasks_per_thread}, {min_part_columns}, {b_wave_values}, {private_max_values}")
    PRIVATE_MAX_VALUES = private_max_values
    GEMM_MADDS_PER_THREAD = madds_per_thread
    TASKS_PER_THREAD = tasks_per_thread
    MIN_PART_COLUMNS = min_part_columns
    B_WAVE_VALUES = b_wave_values


def _configure_direct(Py_ssize_t max_madds, Py_ssize_t max_panels, Py_ssize_t b_copy_max):
    """Set the unpacked path's limits of fastbp._kernels.blocking (DIRECT_MAX_MADDS,
    DIRECT_MAX_PANELS, DIRECT_B_COPY_MAX)."""
    global DIRECT_MAX_MADDS, DIRECT_MAX_PANELS, DIRECT_B_COPY_MAX
    if min(max_madds, b_copy_max) < 1 or max_panels < 0:
        raise ValueError(f"unpacked path limits must be positive, got {max_madds}, {max_panels}, {b_copy_max}")
    DIRECT_MAX_MADDS, DIRECT_MAX_PANELS, DIRECT_B_COPY_MAX = max_madds, max_panels, b_copy_max


def _blocking(dtype):
    """(MR, NR, KC, MC, NC) in use for ``dtype`` ('float32' or 'float64')."""
    cdef Blocking bs = _BLOCKING_D if str(dtype) == "float64" else _BLOCKING_S
    return (bs.mr, bs.nr, bs.kc, bs.mc, bs.nc)


def _openmp():
    """True when this module was compiled with OpenMP."""
    return bool(fastbp_openmp())

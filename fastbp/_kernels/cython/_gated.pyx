# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Gated recurrent kernels: LSTM and GRU over whole sequences, forward and BPTT,
float32 and float64 (PyTorch's equations and gate order; see reference.py)."""
# Design: each pass is one nogil call. The input projection of every batch·T
# row is ONE dense_forward_nogil (x·w_ih + bias) written into the gate cache;
# the time loop then does, per step, one GEMM for the recurrent product against
# w_hh packed once per pass (_gemm.pack_b_once / gemm_packed_b; w_hhᵀ going
# back), its tasks cutting the batch rows between threads, and fused into it the
# step's row pass: as soon as a task's rows of the product are final, the same
# thread applies the gate nonlinearities and the cell update (going back: the
# gate gradients) to those rows while they are in cache (_step_rows). One
# parallel region per step, not two; a row's result does not depend on the
# thread that computes it. Backward runs the same loop in reverse and keeps per
# step only the element-wise gate gradients; dx, dw_ih and dbias are then two
# GEMMs and a column sum over the batch·T rows, dw_hh one GEMM over the flat
# arrays shifted by one row: row r of the gate gradients pairs with row r-1 of
# hs, except the first step of each sequence, which pairs with h0 (one small
# GEMM h0ᵀ·dgates_0 first; those rows are zeroed for the big GEMM and restored
# after). Every sum runs in a fixed order: results do not depend on n_threads,
# bit for bit. (Batch 64, H 128, Zen 4, 2 threads: packing w_hh per step and a
# separate row pass cost the LSTM ~40 % of its time.)
# Layout: every array C-contiguous; sequences batch-major (batch, T, ·), so the
# rows of step t are a matrix with row stride T·width, used in place. ``work``
# is caller-provided scratch cut into contiguous (batch, ·) blocks: nothing is
# allocated in the time loop (the GEMM keeps its packing workspaces).

from cython.parallel cimport prange
from cython cimport floating
from libc.string cimport memcpy, memset

from fastbp._kernels.cython._gemm cimport gemm_nogil, gemm_packed_b, pack_b_once, release_packed_b, rows_done_fn
from fastbp._kernels.cython._dense cimport dense_forward_nogil
from fastbp._kernels.cython._activations cimport ACT_IDENTITY
from fastbp._kernels.cython._threads cimport backing_off
from fastbp._kernels.reference import GATED_WORK

cdef extern from "gated_rows.h" nogil:
    void fastbp_lstm_cell_row_s(float* z, const float* c_prev, float* c, float* h, Py_ssize_t n)
    void fastbp_lstm_cell_row_d(double* z, const double* c_prev, double* c, double* h, Py_ssize_t n)
    void fastbp_gru_cell_row_s(float* gate, const float* rec, const float* bias_hn, const float* h_prev,
                               float* hn, float* h, Py_ssize_t n)
    void fastbp_gru_cell_row_d(double* gate, const double* rec, const double* bias_hn, const double* h_prev,
                               double* hn, double* h, Py_ssize_t n)
    void fastbp_lstm_grad_row_s(const float* gate, const float* c_prev, const float* c, const float* dh,
                                float* dc, float* dgate, Py_ssize_t n)
    void fastbp_lstm_grad_row_d(const double* gate, const double* c_prev, const double* c,
                                const double* dh, double* dc, double* dgate, Py_ssize_t n)
    void fastbp_gru_grad_row_s(const float* gate, const float* hn, const float* h_prev, const float* grad,
                               const float* carry, float* direct, int has_carry, float* dgate, float* dghh,
                               Py_ssize_t n)
    void fastbp_column_sums_block_s(const float* g, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                                    Py_ssize_t j0, float* out)
    void fastbp_column_sums_block_d(const double* g, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                                    Py_ssize_t j0, double* out)
    void fastbp_gru_grad_row_d(const double* gate, const double* hn, const double* h_prev, const double* grad,
                               const double* carry, double* direct, int has_carry, double* dgate, double* dghh,
                               Py_ssize_t n)

# Thread thresholds, from fastbp._kernels.blocking (set by _configure; see there):
# a step's row pass runs on the calling thread below RECURRENT_PARALLEL_MIN_ELEMENTS
# gate values, the bias gradients' column sums below GATED_COLUMN_SUMS_PARALLEL_MIN_ELEMENTS.
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 14
cdef Py_ssize_t COLUMN_SUMS_PARALLEL_MIN_ELEMENTS = 1 << 20


def _configure(Py_ssize_t parallel_min_elements, Py_ssize_t column_sums_parallel_min_elements):
    """Set blocking.RECURRENT_PARALLEL_MIN_ELEMENTS and GATED_COLUMN_SUMS_PARALLEL_MIN_ELEMENTS."""
    global PARALLEL_MIN_ELEMENTS, COLUMN_SUMS_PARALLEL_MIN_ELEMENTS
    if min(parallel_min_elements, column_sums_parallel_min_elements) < 1:
        raise ValueError(f"thread thresholds must be positive, got {parallel_min_elements}, "
                         f"{column_sums_parallel_min_elements}")
    PARALLEL_MIN_ELEMENTS = parallel_min_elements
    COLUMN_SUMS_PARALLEL_MIN_ELEMENTS = column_sums_parallel_min_elements


def _thresholds():
    """(row pass, column sums) thresholds in use, for tests."""
    return PARALLEL_MIN_ELEMENTS, COLUMN_SUMS_PARALLEL_MIN_ELEMENTS


def _check_work(str kernel, Py_ssize_t size, Py_ssize_t m, Py_ssize_t n):
    """work must hold GATED_WORK[kernel]·batch·hidden values (the one table, in reference.py)."""
    kind, direction = kernel.split("_")
    need = GATED_WORK[kind, direction] * m * n
    if size < need:
        raise ValueError(f"{kernel}: work needs {need} values, got {size}")


def _check(str kernel, str name, tuple shape, tuple expected):
    if shape != expected:
        raise ValueError(f"{kernel}: {name} has shape {shape}, expected {expected}")


cdef inline int _row_threads(Py_ssize_t elements, int n_threads) noexcept nogil:
    """Threads of a row pass: 1 below PARALLEL_MIN_ELEMENTS (blocking.RECURRENT_PARALLEL_MIN_ELEMENTS)
    and while the busy-machine back-off is on (as every other kernel: a parallel region per step
    whose second thread has no core stalls every step)."""
    return n_threads if n_threads > 1 and elements >= PARALLEL_MIN_ELEMENTS and not backing_off() else 1


cdef void _zero_steps(floating* a, Py_ssize_t m, Py_ssize_t t_end, Py_ssize_t ld,
                      Py_ssize_t width) noexcept nogil:
    """a[b, t, :] := 0 for t < t_end, a (m, T, width) with row stride ld = T·width."""
    cdef Py_ssize_t b
    if t_end > 0:
        for b in range(m):
            memset(a + b * ld, 0, t_end * width * sizeof(floating))


cdef void _copy_step(const floating* src, Py_ssize_t ld, floating* dst, Py_ssize_t m,
                     Py_ssize_t n) noexcept nogil:
    """dst (m, n) contiguous := the rows of one step of src (row stride ld)."""
    cdef Py_ssize_t b
    for b in range(m):
        memcpy(dst + b * n, src + b * ld, n * sizeof(floating))


cdef int _previous_states_product(Py_ssize_t m, Py_ssize_t n_steps, Py_ssize_t n, Py_ssize_t width,
                                  const floating* h0, const floating* hs, floating* grads,
                                  floating* saved, bint first_step_live, floating* dw,
                                  int n_threads) noexcept nogil:
    """dw := Σ_b Σ_t h_{b,t-1}ᵀ·grads_{b,t} (h_{b,-1} = h0_b): two GEMMs, fixed order.

    IN h0 (m, n), hs (m, T, n); IN/OUT grads (m, T, width), restored on return;
    OUT dw (n, width); saved: scratch of (m - 1)·width. Returns 0 or -1.
    """
    cdef Py_ssize_t b, ld = n_steps * width
    cdef int status
    # h0ᵀ·grads_0: the first step of every sequence
    status = gemm_nogil(n, width, m, <floating>1, h0, 1, n, grads, ld, 1,
                        <floating>0, dw, width, NULL, -1, NULL, 0, n_threads)
    if status != 0 or m * n_steps == 1:
        return status
    # Σ_r hs_flat[r-1]ᵀ·grads_flat[r] over r = 1..m·T-1 without the rows (b >= 1, t = 0),
    # which would pair grads_{b,0} with the last state of sequence b-1.
    if first_step_live:
        for b in range(1, m):
            memcpy(saved + (b - 1) * width, grads + b * ld, width * sizeof(floating))
            memset(grads + b * ld, 0, width * sizeof(floating))
    status = gemm_nogil(n, width, m * n_steps - 1, <floating>1, hs, 1, n, grads + width, width, 1,
                        <floating>1, dw, width, NULL, -1, NULL, 0, n_threads)
    if first_step_live:
        for b in range(1, m):
            memcpy(grads + b * ld, saved + (b - 1) * width, width * sizeof(floating))
    return status


# ---------------------------------------------------------------- a step's row pass
# The element-wise part of step t (the cell update going forward, the gate gradients going
# back) for the rows of one batch block: run by gemm_packed_b on each row block of the step's
# recurrent product as soon as the block is final, on the thread that computed it, while its
# rows are in cache, instead of in a second parallel region after the product. A row's pass
# reads that row of the product only, so no row depends on which thread or block ran it.
cdef enum StepKind:
    LSTM_CELL
    LSTM_GRAD
    GRU_CELL
    GRU_GRAD


cdef struct StepRows:
    StepKind kind
    bint is_double
    Py_ssize_t n_steps, n, t, m
    # the arrays of the kind's row kernel (NULL where unused); sequences are (batch, T, ·)
    void* gates      # (batch, T, G·H)
    void* state0     # h0 (GRU) or c0 (LSTM), (batch, H)
    void* cs         # LSTM: cell states (batch, T, H)
    void* hs         # hidden states (batch, T, H)
    void* step       # (batch, G·H or H) for step t: GRU_CELL rec; LSTM_GRAD dh; GRU_GRAD carry
    void* carry      # (batch, H): LSTM_GRAD dc; GRU_GRAD direct
    void* dgates     # (batch, T, G·H)
    void* dghh       # GRU_GRAD (batch, T, 3H)
    void* hn         # GRU (batch, T, H)
    void* grad_hs    # GRU_GRAD (batch, T, H)
    void* bias_hn    # GRU_CELL (H,)


cdef StepRows _step_kind(StepKind kind, floating* gates, Py_ssize_t m, Py_ssize_t n_steps,
                         Py_ssize_t n) noexcept nogil:
    """A StepRows of ``kind`` over ``gates``, every other array NULL (the caller sets its own)."""
    cdef StepRows s
    memset(&s, 0, sizeof(StepRows))
    s.kind, s.is_double, s.gates, s.m, s.n_steps, s.n = kind, floating is double, gates, m, n_steps, n
    return s


cdef void _step_rows(void* ctx, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    """Rows [i0, i1) of the step described by ctx (a StepRows); a rows_done_fn."""
    cdef StepRows* s = <StepRows*>ctx
    if s.is_double:
        _step_rows_typed(s, <double*>NULL, i0, i1)
    else:
        _step_rows_typed(s, <float*>NULL, i0, i1)


cdef void _step_rows_typed(StepRows* s, floating* dtype, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil:
    cdef Py_ssize_t b, n = s.n, t = s.t, ldh = s.n_steps * s.n
    cdef Py_ssize_t g = 4 * n if s.kind == LSTM_CELL or s.kind == LSTM_GRAD else 3 * n
    cdef Py_ssize_t ldg = s.n_steps * g
    cdef floating* gates = <floating*>s.gates
    cdef floating* state0 = <floating*>s.state0
    cdef floating* cs = <floating*>s.cs
    cdef floating* hs = <floating*>s.hs
    cdef floating* step = <floating*>s.step
    cdef floating* carry = <floating*>s.carry
    cdef floating* dgates = <floating*>s.dgates
    cdef floating* dghh = <floating*>s.dghh
    cdef floating* hn = <floating*>s.hn
    cdef floating* grad_hs = <floating*>s.grad_hs
    cdef floating* prev  # the state before step t: (h or c)_{t-1}, or state0 at t = 0
    for b in range(i0, i1):
        if s.kind == LSTM_CELL:
            prev = state0 + b * n if t == 0 else cs + b * ldh + (t - 1) * n
            _lstm_cell_row(gates + b * ldg + t * g, prev, cs + b * ldh + t * n, hs + b * ldh + t * n, n)
        elif s.kind == LSTM_GRAD:
            prev = state0 + b * n if t == 0 else cs + b * ldh + (t - 1) * n
            _lstm_grad_row(gates + b * ldg + t * g, prev, cs + b * ldh + t * n, step + b * n, carry + b * n,
                           dgates + b * ldg + t * g, n)
        elif s.kind == GRU_CELL:
            prev = state0 + b * n if t == 0 else hs + b * ldh + (t - 1) * n
            _gru_cell_row(gates + b * ldg + t * g, step + b * g, <floating*>s.bias_hn, prev,
                          hn + b * ldh + t * n, hs + b * ldh + t * n, n)
        else:
            prev = state0 + b * n if t == 0 else hs + b * ldh + (t - 1) * n
            _gru_grad_row(gates + b * ldg + t * g, hn + b * ldh + t * n, prev, grad_hs + b * ldh + t * n,
                          step + b * n, carry + b * n, t < s.n_steps - 1, dgates + b * ldg + t * g,
                          dghh + b * ldg + t * g, n)


cdef void _rows_pass(StepRows* s, int n_threads) noexcept nogil:
    """Every row of the step, apart from its product: rows in parallel from
    PARALLEL_MIN_ELEMENTS gate values (where no product runs: the last step going back, or
    one whose B is read unpacked)."""
    cdef Py_ssize_t b, g = 4 if s.kind == LSTM_CELL or s.kind == LSTM_GRAD else 3
    cdef int threads = _row_threads(s.m * g * s.n, n_threads)
    if threads < 2:
        _step_rows(s, 0, s.m)
    else:
        for b in prange(s.m, schedule="static", num_threads=threads):
            _step_rows(s, b, b + 1)


cdef int _step_product(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* a, Py_ssize_t lda,
                       const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b, const floating* packed,
                       floating beta, floating* c, Py_ssize_t ldc, StepRows* rows, int n_threads) noexcept nogil:
    """C := A·B + beta*C, the step's recurrent product, then its row pass: fused into the
    product's row blocks when B is packed once; after it otherwise. 0, or -1."""
    cdef int status
    if packed != NULL:
        return gemm_packed_b(m, n, k, <floating>1, a, lda, 1, b, rs_b, cs_b, packed, beta, c, ldc,
                             n_threads, _step_rows, rows)
    status = gemm_nogil(m, n, k, <floating>1, a, lda, 1, b, rs_b, cs_b, beta, c, ldc, NULL, -1, NULL, 0,
                        n_threads)
    if status == 0:
        _rows_pass(rows, n_threads)
    return status


# ---------------------------------------------------------------- LSTM
cdef inline void _lstm_cell_row(floating* z, const floating* c_prev, floating* c, floating* h,
                                Py_ssize_t n) noexcept nogil:
    """One row of one step (gated_rows.h): gates z = (i, f, g, o) pre-activations, activated
    in place; c := f⊙c_prev + i⊙g; h := o⊙tanh(c)."""
    if floating is float:
        fastbp_lstm_cell_row_s(z, c_prev, c, h, n)
    else:
        fastbp_lstm_cell_row_d(z, c_prev, c, h, n)


cdef inline void _lstm_grad_row(const floating* gate, const floating* c_prev, const floating* c,
                                const floating* dh, floating* dc, floating* dgate, Py_ssize_t n) noexcept nogil:
    """One row of one backward step (gated_rows.h): dgate := the gate pre-activation gradients;
    dc (IN the carry dc_{t+1}⊙f_{t+1}, OUT dc_t⊙f_t)."""
    if floating is float:
        fastbp_lstm_grad_row_s(gate, c_prev, c, dh, dc, dgate, n)
    else:
        fastbp_lstm_grad_row_d(gate, c_prev, c, dh, dc, dgate, n)


def lstm_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 const floating[::1] bias, const floating[:, ::1] h0, const floating[:, ::1] c0,
                 floating[:, :, ::1] hs, floating[:, :, ::1] cs, floating[:, :, ::1] gates,
                 floating[::1] work, int n_threads):
    """LSTM over whole sequences: gates_t = x_t·w_ih + bias + h_{t-1}·w_hh; (i, f, g, o);
    c_t = f⊙c_{t-1} + i⊙g; h_t = o⊙tanh(c_t), from (h0, c0).

    IN x (batch, T, n_in), w_ih (n_in, 4H), w_hh (H, 4H), bias (4H,), h0, c0 (batch, H);
    OUT hs, cs (batch, T, H), gates (batch, T, 4H) activated; work (4·batch·H,) scratch (unused here).
    """
    cdef Py_ssize_t m = x.shape[0], n_steps = x.shape[1], k = x.shape[2], n = h0.shape[1], t
    _check("lstm_forward", "w_ih", tuple(w_ih.shape)[:2], (k, 4 * n))
    _check("lstm_forward", "w_hh", tuple(w_hh.shape)[:2], (n, 4 * n))
    _check("lstm_forward", "bias", tuple(bias.shape)[:1], (4 * n,))
    _check("lstm_forward", "h0", tuple(h0.shape)[:2], (m, n))
    _check("lstm_forward", "c0", tuple(c0.shape)[:2], (m, n))
    _check("lstm_forward", "hs", tuple(hs.shape)[:3], (m, n_steps, n))
    _check("lstm_forward", "cs", tuple(cs.shape)[:3], (m, n_steps, n))
    _check("lstm_forward", "gates", tuple(gates.shape)[:3], (m, n_steps, 4 * n))
    if m == 0 or n_steps == 0 or n == 0 or k == 0:
        raise ValueError("lstm_forward: batch, time, n_in and hidden must be >= 1")
    _check_work("lstm_forward", work.shape[0], m, n)
    cdef Py_ssize_t ldh = n_steps * n, ldg = n_steps * 4 * n
    cdef floating* pg = &gates[0, 0, 0]
    cdef floating* ph = &hs[0, 0, 0]
    cdef floating* pc = &cs[0, 0, 0]
    cdef floating* w_packed
    cdef StepRows rows = _step_kind(LSTM_CELL, pg, m, n_steps, n)
    rows.state0, rows.cs, rows.hs = <floating*>&c0[0, 0], pc, ph
    cdef int status
    with nogil:
        # every step's input projection, one GEMM over the batch·T rows
        status = dense_forward_nogil(m * n_steps, 4 * n, k, &x[0, 0, 0], k, 1, &w_ih[0, 0], 4 * n, 1,
                                     &bias[0], ACT_IDENTITY, pg, pg, n_threads)
        w_packed = pack_b_once(m, 4 * n, n, &w_hh[0, 0], 4 * n, 1)
        t = 0
        while status == 0 and t < n_steps:
            # gates_t += h_{t-1}·w_hh, then the cell update of its rows
            rows.t = t
            status = _step_product(m, 4 * n, n, &h0[0, 0] if t == 0 else ph + (t - 1) * n, n if t == 0 else ldh,
                                   &w_hh[0, 0], 4 * n, 1, w_packed, <floating>1, pg + t * 4 * n, ldg, &rows,
                                   n_threads)
            t += 1
        release_packed_b(w_packed, 4 * n, n)
    if status != 0:
        raise MemoryError("lstm_forward: cannot allocate the GEMM workspace")


def lstm_backward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                  const floating[:, ::1] h0, const floating[:, ::1] c0, const floating[:, :, ::1] hs,
                  const floating[:, :, ::1] cs, const floating[:, :, ::1] gates,
                  const floating[:, :, ::1] grad_hs, Py_ssize_t truncate, floating[:, :, ::1] dgates,
                  floating[:, :, ::1] dx, floating[:, ::1] dw_ih, floating[:, ::1] dw_hh, floating[::1] dbias,
                  floating[:, ::1] dh0, floating[:, ::1] dc0, floating[::1] work, int n_threads):
    """BPTT for lstm_forward over the last ``truncate`` steps (see reference.lstm_backward).

    IN x, w_ih, w_hh, h0, c0; hs, cs, gates from lstm_forward; grad_hs (batch, T, H).
    OUT dgates (batch, T, 4H), dx (batch, T, n_in), dw_ih, dw_hh, dbias, dh0, dc0;
    work (7·batch·H,) scratch.
    """
    cdef Py_ssize_t m = x.shape[0], n_steps = x.shape[1], k = x.shape[2], n = h0.shape[1], t
    _check("lstm_backward", "w_ih", tuple(w_ih.shape)[:2], (k, 4 * n))
    _check("lstm_backward", "w_hh", tuple(w_hh.shape)[:2], (n, 4 * n))
    for name, arr in (("c0", c0), ("dh0", dh0), ("dc0", dc0)):
        _check("lstm_backward", name, tuple(arr.shape)[:2], (m, n))
    for name, arr in (("hs", hs), ("cs", cs), ("grad_hs", grad_hs)):
        _check("lstm_backward", name, tuple(arr.shape)[:3], (m, n_steps, n))
    _check("lstm_backward", "gates", tuple(gates.shape)[:3], (m, n_steps, 4 * n))
    _check("lstm_backward", "dgates", tuple(dgates.shape)[:3], (m, n_steps, 4 * n))
    _check("lstm_backward", "dx", tuple(dx.shape)[:3], (m, n_steps, k))
    _check("lstm_backward", "dw_ih", tuple(dw_ih.shape)[:2], (k, 4 * n))
    _check("lstm_backward", "dw_hh", tuple(dw_hh.shape)[:2], (n, 4 * n))
    _check("lstm_backward", "dbias", tuple(dbias.shape)[:1], (4 * n,))
    if m == 0 or n_steps == 0 or n == 0 or k == 0:
        raise ValueError("lstm_backward: batch, time, n_in and hidden must be >= 1")
    _check_work("lstm_backward", work.shape[0], m, n)
    if not 1 <= truncate <= n_steps:
        raise ValueError(f"lstm_backward: truncate must lie in [1, {n_steps}], got {truncate}")
    cdef Py_ssize_t ldh = n_steps * n, ldg = n_steps * 4 * n, t0 = n_steps - truncate
    cdef floating* pd = &dgates[0, 0, 0]
    cdef floating* dh = &work[0]
    cdef floating* dc = dh + m * n
    cdef floating* saved = dc + 2 * m * n  # work: dh, dc, (unused here: numba's tanh(c)), saved rows
    cdef floating* w_packed
    cdef StepRows rows = _step_kind(LSTM_GRAD, <floating*>&gates[0, 0, 0], m, n_steps, n)
    rows.state0, rows.cs, rows.step, rows.carry, rows.dgates = <floating*>&c0[0, 0], <floating*>&cs[0, 0, 0], dh, dc, pd
    cdef int status = 0
    with nogil:
        _zero_steps(pd, m, t0, ldg, 4 * n)
        memset(dc, 0, m * n * sizeof(floating))
        w_packed = pack_b_once(m, n, 4 * n, &w_hh[0, 0], 1, 4 * n)  # w_hhᵀ (swapped strides)
        t = n_steps - 1
        while status == 0 and t >= t0:
            # dh := grad_hs_t + dgates_{t+1}·w_hhᵀ, then the gate gradients of its rows
            rows.t = t
            _copy_step(&grad_hs[0, 0, 0] + t * n, ldh, dh, m, n)
            if t < n_steps - 1:
                status = _step_product(m, n, 4 * n, pd + (t + 1) * 4 * n, ldg, &w_hh[0, 0], 1, 4 * n, w_packed,
                                       <floating>1, dh, n, &rows, n_threads)
            else:
                _rows_pass(&rows, n_threads)
            t -= 1
        if status == 0:
            if t0 == 0:  # dh0 := dgates_0·w_hhᵀ; dc0 := dc_0⊙f_0 (the carry)
                status = gemm_packed_b(m, n, 4 * n, <floating>1, pd, ldg, 1, &w_hh[0, 0], 1, 4 * n, w_packed,
                                       <floating>0, &dh0[0, 0], n, n_threads, NULL, NULL)
                memcpy(&dc0[0, 0], dc, m * n * sizeof(floating))
            else:
                memset(&dh0[0, 0], 0, m * n * sizeof(floating))
                memset(&dc0[0, 0], 0, m * n * sizeof(floating))
        release_packed_b(w_packed, n, 4 * n)
        if status == 0:  # dx, dw_ih, dbias over the batch·T rows
            status = _input_side_backward(m * n_steps, 4 * n, k, &x[0, 0, 0], &w_ih[0, 0], pd, &dx[0, 0, 0],
                                          &dw_ih[0, 0], &dbias[0], n_threads)
        if status == 0:
            status = _previous_states_product(m, n_steps, n, 4 * n, &h0[0, 0], &hs[0, 0, 0], pd, saved,
                                              t0 == 0, &dw_hh[0, 0], n_threads)
    if status != 0:
        raise MemoryError("lstm_backward: cannot allocate the GEMM workspace")


# ---------------------------------------------------------------- GRU
cdef inline void _gru_cell_row(floating* gate, const floating* rec, const floating* bias_hn,
                               const floating* h_prev, floating* hn, floating* h, Py_ssize_t n) noexcept nogil:
    """One row of one step (gated_rows.h): gate (xr, xz, xn) input projections, rec = h_prev·w_hh;
    gate := (r, z, n) activated; hn := rec_n + bias_hn; h := (1-z)⊙n + z⊙h_prev."""
    if floating is float:
        fastbp_gru_cell_row_s(gate, rec, bias_hn, h_prev, hn, h, n)
    else:
        fastbp_gru_cell_row_d(gate, rec, bias_hn, h_prev, hn, h, n)


cdef inline void _gru_grad_row(const floating* gate, const floating* hn, const floating* h_prev,
                               const floating* grad, const floating* carry, floating* direct, bint has_carry,
                               floating* dgate, floating* dghh, Py_ssize_t n) noexcept nogil:
    """One row of one backward step (gated_rows.h): dh = grad + carry + direct (the last two from
    step t+1); dgate := (dar, daz, dan), dghh := (dar, daz, dan⊙r); direct := dh⊙z for step t-1."""
    if floating is float:
        fastbp_gru_grad_row_s(gate, hn, h_prev, grad, carry, direct, has_carry, dgate, dghh, n)
    else:
        fastbp_gru_grad_row_d(gate, hn, h_prev, grad, carry, direct, has_carry, dgate, dghh, n)


cdef void _column_sums(const floating* g, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                       floating* out, int n_threads) noexcept nogil:
    """out[j] := Σ_i g[i·ld + j], each column summed in row order in double (gated_rows.h),
    blocks of 64 columns split between threads."""
    cdef Py_ssize_t block, n_blocks = (cols + 63) // 64
    cdef int threads = (n_threads if n_blocks > 1 and rows * cols >= COLUMN_SUMS_PARALLEL_MIN_ELEMENTS
                        and not backing_off() else 1)
    if threads < 2:
        for block in range(n_blocks):
            _column_sums_block(g, rows, cols, ld, block * 64, out)
    else:
        for block in prange(n_blocks, schedule="static", num_threads=threads):
            _column_sums_block(g, rows, cols, ld, block * 64, out)


cdef inline void _column_sums_block(const floating* g, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t ld,
                                    Py_ssize_t j0, floating* out) noexcept nogil:
    if floating is float:
        fastbp_column_sums_block_s(g, rows, cols, ld, j0, out)
    else:
        fastbp_column_sums_block_d(g, rows, cols, ld, j0, out)


cdef int _input_side_backward(Py_ssize_t rows, Py_ssize_t width, Py_ssize_t k, const floating* x,
                              const floating* w_ih, const floating* dgates, floating* dx, floating* dw_ih,
                              floating* dbias, int n_threads) noexcept nogil:
    """Over all batch·T rows: dx := dgates·w_ihᵀ; dw_ih := xᵀ·dgates; dbias := Σ_rows dgates.
    IN x (rows, k), w_ih (k, width), dgates (rows, width). Returns 0 or -1."""
    cdef int status
    status = gemm_nogil(rows, k, width, <floating>1, dgates, width, 1, w_ih, 1, width,
                        <floating>0, dx, k, NULL, -1, NULL, 0, n_threads)
    if status == 0:
        status = gemm_nogil(k, width, rows, <floating>1, x, 1, k, dgates, width, 1,
                            <floating>0, dw_ih, width, NULL, -1, NULL, 0, n_threads)
    _column_sums(dgates, rows, width, width, dbias, n_threads)
    return status


def gru_forward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                const floating[::1] bias, const floating[::1] bias_hn, const floating[:, ::1] h0,
                floating[:, :, ::1] hs, floating[:, :, ::1] gates, floating[:, :, ::1] hn,
                floating[::1] work, int n_threads):
    """GRU over whole sequences: r, z = σ(x·w_ih + bias + h·w_hh) blocks; hn = h·w_hn + bias_hn;
    n = tanh(xn + r⊙hn); h_t = (1-z)⊙n + z⊙h_{t-1}, from h0.

    IN x (batch, T, n_in), w_ih (n_in, 3H), w_hh (H, 3H), bias (3H,), bias_hn (H,), h0 (batch, H);
    OUT hs (batch, T, H), gates (batch, T, 3H) activated, hn (batch, T, H); work (3·batch·H,) scratch.
    """
    cdef Py_ssize_t m = x.shape[0], n_steps = x.shape[1], k = x.shape[2], n = h0.shape[1], t
    _check("gru_forward", "w_ih", tuple(w_ih.shape)[:2], (k, 3 * n))
    _check("gru_forward", "w_hh", tuple(w_hh.shape)[:2], (n, 3 * n))
    _check("gru_forward", "bias", tuple(bias.shape)[:1], (3 * n,))
    _check("gru_forward", "bias_hn", tuple(bias_hn.shape)[:1], (n,))
    _check("gru_forward", "h0", tuple(h0.shape)[:2], (m, n))
    _check("gru_forward", "hs", tuple(hs.shape)[:3], (m, n_steps, n))
    _check("gru_forward", "hn", tuple(hn.shape)[:3], (m, n_steps, n))
    _check("gru_forward", "gates", tuple(gates.shape)[:3], (m, n_steps, 3 * n))
    if m == 0 or n_steps == 0 or n == 0 or k == 0:
        raise ValueError("gru_forward: batch, time, n_in and hidden must be >= 1")
    _check_work("gru_forward", work.shape[0], m, n)
    cdef Py_ssize_t ldh = n_steps * n
    cdef floating* pg = &gates[0, 0, 0]
    cdef floating* ph = &hs[0, 0, 0]
    cdef floating* rec = &work[0]
    cdef floating* w_packed
    cdef StepRows rows = _step_kind(GRU_CELL, pg, m, n_steps, n)
    rows.state0, rows.hs, rows.step, rows.hn, rows.bias_hn = <floating*>&h0[0, 0], ph, rec, &hn[0, 0, 0], <floating*>&bias_hn[0]
    cdef int status
    with nogil:
        status = dense_forward_nogil(m * n_steps, 3 * n, k, &x[0, 0, 0], k, 1, &w_ih[0, 0], 3 * n, 1,
                                     &bias[0], ACT_IDENTITY, pg, pg, n_threads)
        w_packed = pack_b_once(m, 3 * n, n, &w_hh[0, 0], 3 * n, 1)
        t = 0
        while status == 0 and t < n_steps:
            # rec := h_{t-1}·w_hh (kept apart: its n block is gated by r), then the cell update
            rows.t = t
            status = _step_product(m, 3 * n, n, &h0[0, 0] if t == 0 else ph + (t - 1) * n, n if t == 0 else ldh,
                                   &w_hh[0, 0], 3 * n, 1, w_packed, <floating>0, rec, 3 * n, &rows, n_threads)
            t += 1
        release_packed_b(w_packed, 3 * n, n)
    if status != 0:
        raise MemoryError("gru_forward: cannot allocate the GEMM workspace")


def gru_backward(const floating[:, :, ::1] x, const floating[:, ::1] w_ih, const floating[:, ::1] w_hh,
                 const floating[:, ::1] h0, const floating[:, :, ::1] hs, const floating[:, :, ::1] gates,
                 const floating[:, :, ::1] hn, const floating[:, :, ::1] grad_hs, Py_ssize_t truncate,
                 floating[:, :, ::1] dgates, floating[:, :, ::1] dghh, floating[:, :, ::1] dx,
                 floating[:, ::1] dw_ih, floating[:, ::1] dw_hh, floating[::1] dbias, floating[::1] dbias_hn,
                 floating[:, ::1] dh0, floating[::1] work, int n_threads):
    """BPTT for gru_forward over the last ``truncate`` steps (see reference.gru_backward).

    IN x, w_ih, w_hh, h0; hs, gates, hn from gru_forward; grad_hs (batch, T, H).
    OUT dgates, dghh (batch, T, 3H), dx (batch, T, n_in), dw_ih, dw_hh, dbias, dbias_hn, dh0;
    work (5·batch·H,) scratch.
    """
    cdef Py_ssize_t m = x.shape[0], n_steps = x.shape[1], k = x.shape[2], n = h0.shape[1], t
    _check("gru_backward", "w_ih", tuple(w_ih.shape)[:2], (k, 3 * n))
    _check("gru_backward", "w_hh", tuple(w_hh.shape)[:2], (n, 3 * n))
    _check("gru_backward", "dh0", tuple(dh0.shape)[:2], (m, n))
    for name, arr in (("hs", hs), ("hn", hn), ("grad_hs", grad_hs)):
        _check("gru_backward", name, tuple(arr.shape)[:3], (m, n_steps, n))
    for name, arr in (("gates", gates), ("dgates", dgates), ("dghh", dghh)):
        _check("gru_backward", name, tuple(arr.shape)[:3], (m, n_steps, 3 * n))
    _check("gru_backward", "dx", tuple(dx.shape)[:3], (m, n_steps, k))
    _check("gru_backward", "dw_ih", tuple(dw_ih.shape)[:2], (k, 3 * n))
    _check("gru_backward", "dw_hh", tuple(dw_hh.shape)[:2], (n, 3 * n))
    _check("gru_backward", "dbias", tuple(dbias.shape)[:1], (3 * n,))
    _check("gru_backward", "dbias_hn", tuple(dbias_hn.shape)[:1], (n,))
    if m == 0 or n_steps == 0 or n == 0 or k == 0:
        raise ValueError("gru_backward: batch, time, n_in and hidden must be >= 1")
    _check_work("gru_backward", work.shape[0], m, n)
    if not 1 <= truncate <= n_steps:
        raise ValueError(f"gru_backward: truncate must lie in [1, {n_steps}], got {truncate}")
    cdef Py_ssize_t ldh = n_steps * n, ldg = n_steps * 3 * n, t0 = n_steps - truncate, b, j
    cdef floating* pd = &dgates[0, 0, 0]
    cdef floating* pdh = &dghh[0, 0, 0]
    cdef floating* carry = &work[0]
    cdef floating* direct = carry + m * n
    cdef floating* saved = direct + m * n
    cdef floating* w_packed
    cdef StepRows rows = _step_kind(GRU_GRAD, <floating*>&gates[0, 0, 0], m, n_steps, n)
    rows.state0, rows.hs, rows.step, rows.carry = <floating*>&h0[0, 0], <floating*>&hs[0, 0, 0], carry, direct
    rows.dgates, rows.dghh, rows.hn, rows.grad_hs = pd, pdh, <floating*>&hn[0, 0, 0], <floating*>&grad_hs[0, 0, 0]
    cdef int status = 0
    with nogil:
        _zero_steps(pd, m, t0, ldg, 3 * n)
        _zero_steps(pdh, m, t0, ldg, 3 * n)
        w_packed = pack_b_once(m, n, 3 * n, &w_hh[0, 0], 1, 3 * n)  # w_hhᵀ (swapped strides)
        t = n_steps - 1
        while status == 0 and t >= t0:
            # carry := dghh_{t+1}·w_hhᵀ; the row pass adds grad_hs_t and direct = dh_{t+1}⊙z_{t+1}
            rows.t = t
            if t < n_steps - 1:
                status = _step_product(m, n, 3 * n, pdh + (t + 1) * 3 * n, ldg, &w_hh[0, 0], 1, 3 * n, w_packed,
                                       <floating>0, carry, n, &rows, n_threads)
            else:
                _rows_pass(&rows, n_threads)
            t -= 1
        if status == 0:
            if t0 == 0:  # dh0 := dghh_0·w_hhᵀ + dh_0⊙z_0
                status = gemm_packed_b(m, n, 3 * n, <floating>1, pdh, ldg, 1, &w_hh[0, 0], 1, 3 * n, w_packed,
                                       <floating>0, &dh0[0, 0], n, n_threads, NULL, NULL)
                for b in range(m):
                    for j in range(n):
                        dh0[b, j] = dh0[b, j] + direct[b * n + j]
            else:
                memset(&dh0[0, 0], 0, m * n * sizeof(floating))
        release_packed_b(w_packed, n, 3 * n)
        if status == 0:  # dx, dw_ih, dbias over the batch·T rows
            status = _input_side_backward(m * n_steps, 3 * n, k, &x[0, 0, 0], &w_ih[0, 0], pd, &dx[0, 0, 0],
                                          &dw_ih[0, 0], &dbias[0], n_threads)
        if status == 0:
            _column_sums(pdh + 2 * n, m * n_steps, n, 3 * n, &dbias_hn[0], n_threads)
            status = _previous_states_product(m, n_steps, n, 3 * n, &h0[0, 0], &hs[0, 0, 0], pdh, saved,
                                              t0 == 0, &dw_hh[0, 0], n_threads)
    if status != 0:
        raise MemoryError("gru_backward: cannot allocate the GEMM workspace")

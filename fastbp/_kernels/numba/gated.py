"""Gated recurrent kernels: LSTM and GRU over whole sequences, forward and BPTT
(PyTorch's equations and gate order; see reference.py).

Design: each pass is ONE jitted function. The input projection of every
batch·T row is one dense forward (x·w_ih + bias, the GEMM driver) into the
gate cache; the time loop then does, per step, one GEMM for the recurrent
product (the same serial/parallel twin and threshold as ``gemm.run_driver``)
into a contiguous (batch, ·) block of ``work``, and fused into it the step's
row pass: as soon as a task of the product has its rows final, the same
thread adds them to the step's gate tile, applies the gate nonlinearities and
the cell update (going back: the gate gradients) while the rows are in cache
(``gemm.rows_done`` on a ``StepRows``, through ``mlp._run_gemm_packed_b``):
one parallel region per step, not two. Where the product reads w_hh unpacked
(small products) and where no product runs (the last step going back), the
row pass runs after it, over the rows of the batch (``_rows_pass``: on one
thread below blocking.RECURRENT_PARALLEL_MIN_ELEMENTS gate values per step and
while the busy-machine back-off lasts, decided per step as the Cython kernels
do). A row's pass reads that row of the product only, and its result does
not depend on the thread that computes it; the GEMM only partitions its
output, so nothing depends on n_threads. Backward runs the loop in reverse
keeping only the element-wise gate gradients; dx, dw_ih, dbias are then one
dense backward over the batch·T rows, dw_hh one GEMM over the flat arrays
shifted by one row, plus h0ᵀ·dgates_0 for the first step of each sequence
(whose rows are zeroed meanwhile: they would pair with the last state of the
previous sequence).

Layout: every array C-contiguous, read as flat arrays through raw pointers in
the row passes (flat indexing keeps a wraparound test that blocks
vectorisation); sequences batch-major, so step t's rows are a strided view.
``work`` is caller-provided scratch: nothing is allocated in the time loop.
w_hh, the B of every step's product (w_hhᵀ going back), is packed once per pass
(``mlp._pack_b_once``) into ``packed``, a buffer kept per calling thread and
dtype like the GEMM's workspace, not once per step: the private path's layout,
so the products give the driver's bits.
"""

import math
import threading
from collections import namedtuple

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload, register_jitable

from .. import registry as R
from ..blocking import RECURRENT_PARALLEL_MIN_ELEMENTS
from ._arrays import transposed, writable
from ._threads import clamp_threads, region_threads, set_threads
from .activations import tanh as gate_tanh
from .gemm import NO_ACTIVATION, no_bias, rows_done
from .mlp import _dense_backward, _dense_forward, _pack_b_once, _run_gemm, _run_gemm_packed_b, _workspaces
from .packing import data_pointer

_IDENTITY = R.IDENTITY

# error_model="numpy": no exception branch for a division, so the row loops vectorise.
_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_jit_parallel = numba.njit(cache=True, nogil=True, parallel=True, error_model="numpy")


# ---------------------------------------------------------------- gate nonlinearities
# float32: tanh is activations.tanh (the Cython backend's rational function) and
# σ(z) = (1 + tanh(z/2))/2: branch-free, so the row loops vectorise (Numba has no vector
# exp/tanh here: a libm call per element cost more than the step's GEMM). float64:
# math.tanh and the exact two-branch sigmoid.
_HALF = np.float32(0.5)


def gate_sigmoid(x):
    """σ(x) for a gate (see above)."""


@overload(gate_sigmoid)
def _gate_sigmoid(x):
    if x == types.float32:
        return lambda x: _HALF + _HALF * gate_tanh(_HALF * x)

    def impl(x):
        e = math.exp(-abs(x))
        return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
    return impl


@_jit
def _zero_steps(a, t_end):
    """a[:, :t_end] := 0 for a (batch, T, width)."""
    for b in range(a.shape[0]):
        for t in range(t_end):
            a[b, t, :] = 0.0


@_jit
def _previous_states_product(h0, hs, grads, saved, first_step_live, dw, n_threads, gemm_work, bias0):
    """dw := Σ_b Σ_t h_{b,t-1}ᵀ·grads_{b,t} (h_{b,-1} = h0_b): two GEMMs in a fixed order.

    IN h0 (m, n), hs (m, T, n); IN/OUT grads (m, T, width), restored; OUT dw (n, width);
    saved: scratch of (m - 1)·width. Returns the GEMM workspace.
    """
    m, n_steps, n = hs.shape
    width = grads.shape[2]
    gemm_work = _run_gemm(h0.T, grads[:, 0], dw, dw, bias0, 0.0, NO_ACTIVATION, n_threads, gemm_work)
    if m * n_steps == 1:
        return gemm_work
    if first_step_live:
        for b in range(1, m):
            saved[(b - 1) * width:b * width] = grads[b, 0]
            grads[b, 0, :] = 0.0
    flat_h = hs.reshape(m * n_steps, n)
    flat_g = grads.reshape(m * n_steps, width)
    gemm_work = _run_gemm(flat_h[:-1].T, flat_g[1:], dw, dw, bias0, 1.0, NO_ACTIVATION, n_threads, gemm_work)
    if first_step_live:
        for b in range(1, m):
            grads[b, 0, :] = saved[(b - 1) * width:b * width]
    return gemm_work


# ---------------------------------------------------------------- a step's row pass
# The row pass of one step (forward: the gate nonlinearities and the cell update; going
# back: the gate gradients), described for gemm.rows_done: run on each task's rows of the
# step's recurrent product as soon as they are final, on the thread that computed them
# (or after the product, _rows_pass). kind: which pass; the arrays are raw pointers to
# their data (C order), which the pass function holds for the step: no reference counts
# (arrays would have theirs updated at every task, atomic writes to cache lines that
# every thread then shares); one Numba type per dtype for every kind (one compilation of
# the packed-B driver per dtype and twin). A kind's unused arrays point anywhere (at the gates).
_LSTM_CELL, _LSTM_GRAD, _GRU_CELL, _GRU_GRAD, _NO_ROWS = range(5)
StepRows = namedtuple("StepRows", [
    "kind", "t", "m", "n_steps", "n",
    "gates",    # (batch, T, G·H)
    "state0",   # c0 (LSTM) or h0 (GRU), (batch, H)
    "cs",       # LSTM: cell states (batch, T, H)
    "hs",       # hidden states (batch, T, H)
    "step",     # the step's product, (batch, G·H or H): *_CELL rec; LSTM_GRAD dh; GRU_GRAD carry
    "carry",    # (batch, H): LSTM_GRAD dc; GRU_GRAD direct
    "scratch",  # LSTM_GRAD tanh(c_t), (batch, H)
    "dgates",   # (batch, T, G·H)
    "dghh",     # GRU_GRAD (batch, T, 3H)
    "hn",       # GRU (batch, T, H)
    "grad_hs",  # *_GRAD (batch, T, H)
    "bias_hn",  # GRU_CELL (H,)
])


@register_jitable  # compiled into its caller, kind typed int64 (a jitted function would compile per literal kind)
def _step_rows_of(kind, m, n_steps, n, gates, state0, cs, hs, step, carry, scratch, dgates, dghh, hn, grad_hs,
                  bias_hn):
    """The pass ``kind`` (at step 0) over these C-contiguous arrays."""
    return StepRows(kind, 0, m, n_steps, n, data_pointer(gates), data_pointer(state0), data_pointer(cs),
                    data_pointer(hs), data_pointer(step), data_pointer(carry), data_pointer(scratch),
                    data_pointer(dgates), data_pointer(dghh), data_pointer(hn), data_pointer(grad_hs),
                    data_pointer(bias_hn))


@register_jitable
def _at_step(s, kind, t):
    """The pass ``kind`` of step t over s's arrays."""
    return StepRows(kind, t, s.m, s.n_steps, s.n, s.gates, s.state0, s.cs, s.hs, s.step, s.carry, s.scratch,
                    s.dgates, s.dghh, s.hn, s.grad_hs, s.bias_hn)


@register_jitable
def _is_lstm(s):
    return s.kind == _LSTM_CELL or s.kind == _LSTM_GRAD


@register_jitable
def _gate_width(s):
    """G·H: the gate values of one row of one step."""
    return 4 * s.n if _is_lstm(s) else 3 * s.n


@_jit
def _step_rows(s, i0, i1):
    """Rows [i0, i1) of the pass s (a StepRows) of step s.t."""
    kind, t, n = s.kind, s.t, s.n
    width = _gate_width(s)
    ldg, ldh = s.n_steps * width, s.n_steps * n
    has_carry = t < s.n_steps - 1  # going back: step t+1 sent a gradient
    # the state the step updates (c for the LSTM, h for the GRU) before step t: row b at prev[b·ldp + p0]
    prev = s.state0 if t == 0 else (s.cs if _is_lstm(s) else s.hs)
    ldp, p0 = (n, 0) if t == 0 else (ldh, (t - 1) * n)
    if kind == _LSTM_CELL:
        for b in range(i0, i1):
            h = b * ldh + t * n
            _lstm_cell_row(s.gates, b * ldg + t * width, s.step, b * width, prev, b * ldp + p0, s.cs, h, s.hs, h, n)
    elif kind == _LSTM_GRAD:
        for b in range(i0, i1):
            _lstm_grad_row(s.gates, b * ldg + t * width, prev, b * ldp + p0, s.cs, b * ldh + t * n, s.grad_hs,
                           b * n, s.step, s.carry, s.scratch, has_carry, s.dgates, n)
    elif kind == _GRU_CELL:
        for b in range(i0, i1):
            h = b * ldh + t * n
            _gru_cell_row(s.gates, b * ldg + t * width, s.step, b * width, s.bias_hn, prev, b * ldp + p0, s.hn,
                          s.hs, h, n)
    elif kind == _GRU_GRAD:
        for b in range(i0, i1):
            h = b * ldh + t * n
            _gru_grad_row(s.gates, b * ldg + t * width, s.hn, h, prev, b * ldp + p0, s.grad_hs, s.step, s.carry,
                          b * n, has_carry, s.dgates, s.dghh, n)


@overload(rows_done)
def _rows_done_step(rows, i0, i1):
    if isinstance(rows, types.BaseNamedTuple) and rows.instance_class is StepRows:
        return lambda rows, i0, i1: _step_rows(rows, i0, i1)


@_jit_parallel
def _rows_pass(s, n_threads):
    """Every row of the pass s, apart from a product (the last step going back, or a product that
    reads w_hh unpacked): rows in parallel from RECURRENT_PARALLEL_MIN_ELEMENTS gate values."""
    threads = region_threads(s.m * _gate_width(s), RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads)
    # rows as int64, as the driver passes them: one compilation of _step_rows per dtype (a literal 0
    # or prange's unsigned index would each compile another)
    if threads < 2:
        _step_rows(s, np.int64(0), s.m)
        return
    set_threads(threads)
    for b in prange(s.m):
        _step_rows(s, np.int64(b), np.int64(b) + 1)


@_jit
def _step_product(a, w, packed, is_packed, z, n_threads, gemm_work, s):
    """z := a·w, the step's recurrent product, then the row pass s: fused into the product's tasks
    where w is packed once (is_packed), after it otherwise.  Returns the GEMM workspace."""
    if is_packed:
        return _run_gemm_packed_b(a, w, packed, True, z, 0.0, n_threads, gemm_work, s)
    gemm_work = _run_gemm(a, w, z, z, packed[:0], 0.0, NO_ACTIVATION, n_threads, gemm_work)
    _rows_pass(s, n_threads)
    return gemm_work


# ---------------------------------------------------------------- LSTM
@_jit
def _lstm_cell_row(gp, g, rp, r, pp, p, cp, c, hp, h, n):
    """One row of one step (raw pointers: gates, rec, c_prev, cs, hs): gates gp[g:+4n] += rp[r:+4n],
    activated (i, f, g, o) in place; c := f⊙c_prev + i⊙g; h := o⊙tanh(c)."""
    for j in range(2 * n):  # i, f
        gp[g + j] = gate_sigmoid(gp[g + j] + rp[r + j])
    for j in range(2 * n, 3 * n):  # g
        gp[g + j] = gate_tanh(gp[g + j] + rp[r + j])
    for j in range(3 * n, 4 * n):  # o
        gp[g + j] = gate_sigmoid(gp[g + j] + rp[r + j])
    for j in range(n):
        cj = gp[g + n + j] * pp[p + j] + gp[g + j] * gp[g + 2 * n + j]
        cp[c + j] = cj
        hp[h + j] = gp[g + 3 * n + j] * gate_tanh(cj)


@_jit
def _lstm_forward(x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, work, n_threads, gemm_work, packed):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 4 * n
    flat_gates = gates.reshape(m * n_steps, width)
    gemm_work = _dense_forward(x.reshape(m * n_steps, k), w_ih, bias, _IDENTITY, flat_gates, flat_gates, True,
                               n_threads, gemm_work)
    rec = work[:m * width].reshape(m, width)
    gf = gates.reshape(-1)
    none = gf[:0]
    rows = _step_rows_of(_LSTM_CELL, m, n_steps, n, gf, c0.reshape(-1), cs.reshape(-1), hs.reshape(-1),
                    rec.reshape(-1), none, none, none, none, none, none, none)
    packed, is_packed = _pack_b_once(m, w_hh, packed)
    for t in range(n_steps):
        # rec := h_{t-1}·w_hh, then the cell update of its rows
        h_prev = h0 if t == 0 else hs[:, t - 1]
        gemm_work = _step_product(h_prev, w_hh, packed, is_packed, rec, n_threads, gemm_work,
                                  _at_step(rows, _LSTM_CELL, t))
    return gemm_work, packed


@_jit
def _lstm_grad_row(gp, g, pp, p, sp, c, gr, dh, hp, cp, tp, has_carry, dp, n):
    """One row of one backward step (raw pointers: gates, c_prev, cs, grad_hs, dh, dc, tanh(c),
    dgates; states and grad at offset c, the row's scratch at dh): hp[dh:+n] := grad (+ itself,
    the product dgates_{t+1}·w_hhᵀ); dp[g:+4n] := the gate pre-activation gradients;
    cp (dc): IN dc_{t+1}⊙f_{t+1}, OUT dc_t⊙f_t."""
    if has_carry:
        for j in range(n):
            hp[dh + j] = gr[c + j] + hp[dh + j]
    else:
        for j in range(n):
            hp[dh + j] = gr[c + j]
    for j in range(n):
        tp[dh + j] = gate_tanh(sp[c + j])
    for j in range(n):
        i = gp[g + j]
        f = gp[g + n + j]
        gg = gp[g + 2 * n + j]
        o = gp[g + 3 * n + j]
        tc = tp[dh + j]
        d = hp[dh + j]
        dcj = cp[dh + j] + d * o * (1 - tc * tc)
        dp[g + j] = dcj * gg * (i * (1 - i))
        dp[g + n + j] = dcj * pp[p + j] * (f * (1 - f))
        dp[g + 2 * n + j] = dcj * i * (1 - gg * gg)
        dp[g + 3 * n + j] = d * tc * (o * (1 - o))
        cp[dh + j] = dcj * f


@_jit
def _lstm_backward(x, w_ih, w_hh_t, h0, c0, hs, cs, gates, grad_hs, t0, dgates, dx, dw_ih, dw_hh, dbias, dh0,
                   dc0, work, n_threads, gemm_work, packed, bias0):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 4 * n
    size = m * n
    dh = work[:size].reshape(m, n)
    dc = work[size:2 * size]
    saved = work[3 * size:]
    gf = gates.reshape(-1)
    none = gf[:0]
    rows = _step_rows_of(_LSTM_GRAD, m, n_steps, n, gf, c0.reshape(-1), cs.reshape(-1), none, work[:size], dc,
                    work[2 * size:3 * size], dgates.reshape(-1), none, none, grad_hs.reshape(-1), none)
    _zero_steps(dgates, t0)
    dc[:] = 0.0
    packed, is_packed = _pack_b_once(m, w_hh_t, packed)
    for t in range(n_steps - 1, t0 - 1, -1):
        step = _at_step(rows, _LSTM_GRAD, t)
        if t < n_steps - 1:  # dh := dgates_{t+1}·w_hhᵀ, then the gate gradients of its rows (adding grad_hs_t)
            gemm_work = _step_product(dgates[:, t + 1], w_hh_t, packed, is_packed, dh, n_threads, gemm_work, step)
        else:
            _rows_pass(step, n_threads)
    if t0 == 0:  # dh0 := dgates_0·w_hhᵀ; dc0 := dc_0⊙f_0 (the carry)
        gemm_work = _run_gemm_packed_b(dgates[:, 0], w_hh_t, packed, is_packed, dh0, 0.0, n_threads, gemm_work,
                                       _at_step(rows, _NO_ROWS, 0))
        dc0.reshape(-1)[:] = dc
    else:
        dh0[:] = 0.0
        dc0[:] = 0.0
    flat_dg = dgates.reshape(m * n_steps, width)
    gemm_work = _dense_backward(x.reshape(m * n_steps, k), w_ih, flat_dg, flat_dg, flat_dg, _IDENTITY, flat_dg,
                                dw_ih, dbias, dx.reshape(m * n_steps, k), True, n_threads, gemm_work, bias0)
    return _previous_states_product(h0, hs, dgates, saved, t0 == 0, dw_hh, n_threads, gemm_work, bias0), packed


# ---------------------------------------------------------------- GRU
@_jit
def _gru_cell_row(gp, g, rp, r, bp, pp, p, hn_out, hp, h, n):
    """One row of one step (raw pointers: gates, rec, bias_hn, h_prev, hn, hs): gate gp[g:+3n]
    (xr, xz, xn) := (r, z, n) activated, with rec = h_prev·w_hh; hn := rec_n + bias_hn;
    h := (1-z)⊙n + z⊙h_prev."""
    for j in range(2 * n):  # r, z
        gp[g + j] = gate_sigmoid(gp[g + j] + rp[r + j])
    for j in range(n):
        v = rp[r + 2 * n + j] + bp[j]
        hn_out[h + j] = v
        cand = gate_tanh(gp[g + 2 * n + j] + gp[g + j] * v)
        gp[g + 2 * n + j] = cand
        z = gp[g + n + j]
        hp[h + j] = (1 - z) * cand + z * pp[p + j]


@_jit
def _gru_forward(x, w_ih, w_hh, bias, bias_hn, h0, hs, gates, hn, work, n_threads, gemm_work, packed):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 3 * n
    flat_gates = gates.reshape(m * n_steps, width)
    gemm_work = _dense_forward(x.reshape(m * n_steps, k), w_ih, bias, _IDENTITY, flat_gates, flat_gates, True,
                               n_threads, gemm_work)
    rec = work[:m * width].reshape(m, width)
    gf = gates.reshape(-1)
    none = gf[:0]
    rows = _step_rows_of(_GRU_CELL, m, n_steps, n, gf, h0.reshape(-1), none, hs.reshape(-1), rec.reshape(-1), none,
                    none, none, none, hn.reshape(-1), none, bias_hn)
    packed, is_packed = _pack_b_once(m, w_hh, packed)
    for t in range(n_steps):
        # rec := h_{t-1}·w_hh (kept apart: its n block is gated by r), then the update of its rows
        h_prev = h0 if t == 0 else hs[:, t - 1]
        gemm_work = _step_product(h_prev, w_hh, packed, is_packed, rec, n_threads, gemm_work,
                                  _at_step(rows, _GRU_CELL, t))
    return gemm_work, packed


@_jit
def _gru_grad_row(gp, g, hnp, s, pp, p, gr, cp, dirp, q, has_carry, dp, dhp, n):
    """One row of one backward step (raw pointers: gates, hn, h_prev, grad_hs, carry, direct,
    dgates, dghh): dh = grad (+ carry + direct, from step t+1); dp[g:+3n] := (dar, daz, dan),
    dhp[g:+3n] := (dar, daz, dan⊙r); direct := dh⊙z."""
    for j in range(n):
        r = gp[g + j]
        z = gp[g + n + j]
        c = gp[g + 2 * n + j]
        dh = gr[s + j] + (cp[q + j] + dirp[q + j]) if has_carry else gr[s + j]
        dan = dh * (1 - z) * (1 - c * c)
        dar = dan * hnp[s + j] * (r * (1 - r))
        daz = dh * (pp[p + j] - c) * (z * (1 - z))
        dp[g + j] = dar
        dp[g + n + j] = daz
        dp[g + 2 * n + j] = dan
        dhp[g + j] = dar
        dhp[g + n + j] = daz
        dhp[g + 2 * n + j] = dan * r
        dirp[q + j] = dh * z


@_jit
def _gru_backward(x, w_ih, w_hh_t, h0, hs, gates, hn, grad_hs, t0, dgates, dghh, dx, dw_ih, dw_hh, dbias,
                  dbias_hn, dh0, work, n_threads, gemm_work, packed, bias0):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 3 * n
    size = m * n
    carry = work[:size].reshape(m, n)
    direct = work[size:2 * size]
    saved = work[2 * size:]
    gf, dghf = gates.reshape(-1), dghh.reshape(-1)
    none = gf[:0]
    rows = _step_rows_of(_GRU_GRAD, m, n_steps, n, gf, h0.reshape(-1), none, hs.reshape(-1), work[:size], direct,
                    none, dgates.reshape(-1), dghf, hn.reshape(-1), grad_hs.reshape(-1), none)
    _zero_steps(dgates, t0)
    _zero_steps(dghh, t0)
    packed, is_packed = _pack_b_once(m, w_hh_t, packed)
    for t in range(n_steps - 1, t0 - 1, -1):
        step = _at_step(rows, _GRU_GRAD, t)
        if t < n_steps - 1:  # carry := dghh_{t+1}·w_hhᵀ, then the gate gradients of its rows
            gemm_work = _step_product(dghh[:, t + 1], w_hh_t, packed, is_packed, carry, n_threads, gemm_work,
                                      step)
        else:
            _rows_pass(step, n_threads)
    if t0 == 0:  # dh0 := dghh_0·w_hhᵀ + dh_0⊙z_0
        gemm_work = _run_gemm_packed_b(dghh[:, 0], w_hh_t, packed, is_packed, dh0, 0.0, n_threads, gemm_work,
                                       _at_step(rows, _NO_ROWS, 0))
        dh0f = dh0.reshape(-1)
        for i in range(size):
            dh0f[i] = dh0f[i] + direct[i]
    else:
        dh0[:] = 0.0
    flat_dg = dgates.reshape(m * n_steps, width)
    gemm_work = _dense_backward(x.reshape(m * n_steps, k), w_ih, flat_dg, flat_dg, flat_dg, _IDENTITY, flat_dg,
                                dw_ih, dbias, dx.reshape(m * n_steps, k), True, n_threads, gemm_work, bias0)
    sums = np.zeros(n)  # dbias_hn: each column summed in row order, in float64
    for r in range(m * n_steps):
        for j in range(n):
            sums[j] += dghf[r * width + 2 * n + j]
    for j in range(n):
        dbias_hn[j] = sums[j]
    return _previous_states_product(h0, hs, dghh, saved, t0 == 0, dw_hh, n_threads, gemm_work, bias0), packed


# ---------------------------------------------------------------- the contract's entry points
@_jit
def _product_by_packed_b(a, b, c, beta, n_threads, work, packed):
    """c := a·b + beta·c as the passes multiply by w_hh: packed once, by the packed-B driver they
    compile (a StepRows of no pass).  Returns (workspace, packed buffer, whether B was packed)."""
    packed, is_packed = _pack_b_once(a.shape[0], b, packed)
    cf = c.reshape(-1)
    rows = _step_rows_of(_NO_ROWS, 0, 0, 0, cf, cf, cf, cf, cf, cf, cf, cf, cf, cf, cf, cf)
    return _run_gemm_packed_b(a, b, packed, is_packed, c, beta, n_threads, work, rows), packed, is_packed


def _gemm_packed_b(a, b, c, alpha, beta, n_threads):
    """c := alpha*a·b + beta*c (alpha 1, as the passes multiply) through ``mlp._pack_b_once`` and
    the packed-B driver, the passes' way, for the test that it gives gemm's bits. Returns whether B
    was packed once (False: the product reads B unpacked, and runs as ``gemm``)."""
    if alpha != 1.0:
        raise ValueError(f"_gemm_packed_b: the passes multiply with alpha 1, got {alpha}")
    dtype = c.dtype
    return _product_by_packed_b(writable(a), writable(b), c, float(beta), clamp_threads(n_threads),
                                np.empty(0, dtype), np.empty(0, dtype))[2]


def _gemm_workspace(dtype):
    work = _workspaces.__dict__.get(dtype)
    return np.empty(0, dtype) if work is None else work


# The packed w_hh of a pass (``mlp._pack_b_once``), one buffer per calling thread and
# dtype, grown on demand and kept, like the GEMM's workspace.
_packed_weights = threading.local()


def _packed_workspace(dtype):
    packed = _packed_weights.__dict__.get(dtype)
    return np.empty(0, dtype) if packed is None else packed


def _keep(dtype, workspaces):
    """Keep a pass's (GEMM workspace, packed-weight buffer) for the next pass of this thread."""
    _workspaces.__dict__[dtype], _packed_weights.__dict__[dtype] = workspaces


def lstm_forward(x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, work, n_threads):
    """LSTM over whole sequences (see reference.lstm_forward).

    IN x (batch, T, n_in), w_ih (n_in, 4H), w_hh (H, 4H), bias (4H,), h0, c0 (batch, H);
    OUT hs, cs (batch, T, H), gates (batch, T, 4H) activated; work (4·batch·H,) scratch.
    """
    dtype = x.dtype
    _keep(dtype, _lstm_forward(
        writable(x), writable(w_ih), writable(w_hh), writable(bias), writable(h0), writable(c0), hs, cs, gates,
        work, clamp_threads(n_threads), _gemm_workspace(dtype), _packed_workspace(dtype)))


def lstm_backward(x, w_ih, w_hh, h0, c0, hs, cs, gates, grad_hs, truncate, dgates, dx, dw_ih, dw_hh, dbias,
                  dh0, dc0, work, n_threads):
    """BPTT for lstm_forward over the last ``truncate`` steps (see reference.lstm_backward).

    OUT dgates (batch, T, 4H), dx (batch, T, n_in), dw_ih, dw_hh, dbias, dh0, dc0; work (7·batch·H,).
    """
    dtype = x.dtype
    _keep(dtype, _lstm_backward(
        writable(x), writable(w_ih), transposed(w_hh), writable(h0), writable(c0), writable(hs),
        writable(cs), writable(gates), writable(grad_hs), x.shape[1] - int(truncate), dgates, dx, dw_ih, dw_hh,
        dbias, dh0, dc0, work, clamp_threads(n_threads), _gemm_workspace(dtype), _packed_workspace(dtype),
        no_bias(dtype)))


def gru_forward(x, w_ih, w_hh, bias, bias_hn, h0, hs, gates, hn, work, n_threads):
    """GRU over whole sequences (see reference.gru_forward).

    IN x (batch, T, n_in), w_ih (n_in, 3H), w_hh (H, 3H), bias (3H,), bias_hn (H,), h0 (batch, H);
    OUT hs (batch, T, H), gates (batch, T, 3H) activated, hn (batch, T, H); work (3·batch·H,).
    """
    dtype = x.dtype
    _keep(dtype, _gru_forward(
        writable(x), writable(w_ih), writable(w_hh), writable(bias), writable(bias_hn), writable(h0), hs, gates,
        hn, work, clamp_threads(n_threads), _gemm_workspace(dtype), _packed_workspace(dtype)))


def gru_backward(x, w_ih, w_hh, h0, hs, gates, hn, grad_hs, truncate, dgates, dghh, dx, dw_ih, dw_hh, dbias,
                 dbias_hn, dh0, work, n_threads):
    """BPTT for gru_forward over the last ``truncate`` steps (see reference.gru_backward).

    OUT dgates, dghh (batch, T, 3H), dx (batch, T, n_in), dw_ih, dw_hh, dbias, dbias_hn, dh0; work (5·batch·H,).
    """
    dtype = x.dtype
    _keep(dtype, _gru_backward(
        writable(x), writable(w_ih), transposed(w_hh), writable(h0), writable(hs), writable(gates),
        writable(hn), writable(grad_hs), x.shape[1] - int(truncate), dgates, dghh, dx, dw_ih, dw_hh, dbias,
        dbias_hn, dh0, work, clamp_threads(n_threads), _gemm_workspace(dtype), _packed_workspace(dtype),
        no_bias(dtype)))

"""Gated recurrent kernels: LSTM and GRU over whole sequences, forward and BPTT
(PyTorch's equations and gate order; see reference.py).

Design: each pass is ONE jitted function. The input projection of every
batch·T row is one dense forward (x·w_ih + bias, the GEMM driver) into the
gate cache; the time loop then does, per step, one GEMM for the recurrent
product (the same serial/parallel twin and threshold as ``gemm.run_driver``,
through ``mlp._run_gemm_packed_b``) into a contiguous (batch, ·) block of
``work``, and ONE ``prange`` over the rows of the batch that adds it to the
step's gate tile, applies the gate nonlinearities and the cell update while
the row is in L1 (on one thread below blocking.RECURRENT_PARALLEL_MIN_ELEMENTS
gate values per step and while the busy-machine back-off lasts, decided per step
as the Cython kernels do). A row's result does not depend on the thread that
computes it, and the GEMM only partitions its output, so nothing depends on
n_threads. Backward runs the loop in reverse keeping only the element-wise
gate gradients; dx, dw_ih, dbias are then one dense backward over the batch·T
rows, dw_hh one GEMM over the flat arrays shifted by one row, plus h0ᵀ·dgates_0
for the first step of each sequence (whose rows are zeroed meanwhile: they
would pair with the last state of the previous sequence).

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

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from .. import registry as R
from ..blocking import RECURRENT_PARALLEL_MIN_ELEMENTS
from ._arrays import writable
from ._threads import clamp_threads, region_threads, set_threads
from .activations import tanh as gate_tanh
from .gemm import NO_ACTIVATION, no_bias
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


# ---------------------------------------------------------------- LSTM
@_jit
def _lstm_cell_row(gf, g, rec, r, c_prev, p, cf, c, hf, h, n):
    """One row of one step: gates gf[g:+4n] += rec[r:+4n], activated (i, f, g, o) in place;
    c := f⊙c_prev + i⊙g; h := o⊙tanh(c)."""
    gp, rp, pp, cp, hp = data_pointer(gf), data_pointer(rec), data_pointer(c_prev), data_pointer(cf), \
        data_pointer(hf)
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


@_jit_parallel
def _lstm_forward(x, w_ih, w_hh, bias, h0, c0, hs, cs, gates, work, n_threads, gemm_work, packed):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 4 * n
    flat_gates = gates.reshape(m * n_steps, width)
    gemm_work = _dense_forward(x.reshape(m * n_steps, k), w_ih, bias, _IDENTITY, flat_gates, flat_gates, True,
                               n_threads, gemm_work)
    rec = work[:m * width].reshape(m, width)
    gf, cf, hf, c0f = gates.reshape(-1), cs.reshape(-1), hs.reshape(-1), c0.reshape(-1)
    ldg, ldh = n_steps * width, n_steps * n
    packed, is_packed = _pack_b_once(m, w_hh, packed)
    for t in range(n_steps):
        # rec := h_{t-1}·w_hh
        if t == 0:
            gemm_work = _run_gemm_packed_b(h0, w_hh, packed, is_packed, rec, 0.0, n_threads, gemm_work)
        else:
            gemm_work = _run_gemm_packed_b(hs[:, t - 1], w_hh, packed, is_packed, rec, 0.0, n_threads, gemm_work)
        recf = rec.reshape(-1)
        set_threads(region_threads(m * width, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for b in prange(m):
            if t == 0:
                _lstm_cell_row(gf, b * ldg, recf, b * width, c0f, b * n, cf, b * ldh, hf, b * ldh, n)
            else:
                _lstm_cell_row(gf, b * ldg + t * width, recf, b * width, cf, b * ldh + (t - 1) * n,
                               cf, b * ldh + t * n, hf, b * ldh + t * n, n)
    return gemm_work, packed


@_jit
def _lstm_grad_row(gf, g, c_prev, p, cf, c, gradf, dh, dhp, dc, tanh_c, has_carry, dgf, n):
    """One row of one backward step (states and grad at offset c, the row's scratch at dh):
    dhp[dh:+n] := grad (+ itself, the product dgates_{t+1}·w_hhᵀ);
    dgf[g:+4n] := the gate pre-activation gradients; dc: IN dc_{t+1}⊙f_{t+1}, OUT dc_t⊙f_t."""
    gp, pp, gr = data_pointer(gf), data_pointer(c_prev), data_pointer(gradf)
    hp, cp, tp, dp = data_pointer(dhp), data_pointer(dc), data_pointer(tanh_c), data_pointer(dgf)
    sp = data_pointer(cf)
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


@_jit_parallel
def _lstm_backward(x, w_ih, w_hh_t, h0, c0, hs, cs, gates, grad_hs, t0, dgates, dx, dw_ih, dw_hh, dbias, dh0,
                   dc0, work, n_threads, gemm_work, packed, bias0):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 4 * n
    size = m * n
    dh = work[:size].reshape(m, n)
    dc = work[size:2 * size]
    tanh_c = work[2 * size:3 * size]
    saved = work[3 * size:]
    dhf = work[:size]
    gf, cf, c0f, gradf, dgf = gates.reshape(-1), cs.reshape(-1), c0.reshape(-1), grad_hs.reshape(-1), \
        dgates.reshape(-1)
    ldg, ldh = n_steps * width, n_steps * n
    _zero_steps(dgates, t0)
    dc[:] = 0.0
    packed, is_packed = _pack_b_once(m, w_hh_t, packed)
    for t in range(n_steps - 1, t0 - 1, -1):
        has_carry = t < n_steps - 1
        if has_carry:  # dh := dgates_{t+1}·w_hhᵀ; the row pass adds grad_hs_t
            gemm_work = _run_gemm_packed_b(dgates[:, t + 1], w_hh_t, packed, is_packed, dh, 0.0, n_threads,
                                           gemm_work)
        set_threads(region_threads(m * width, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for b in prange(m):
            if t == 0:
                _lstm_grad_row(gf, b * ldg, c0f, b * n, cf, b * ldh, gradf, b * n, dhf, dc, tanh_c, has_carry,
                               dgf, n)
            else:
                _lstm_grad_row(gf, b * ldg + t * width, cf, b * ldh + (t - 1) * n, cf, b * ldh + t * n, gradf,
                               b * n, dhf, dc, tanh_c, has_carry, dgf, n)
    if t0 == 0:  # dh0 := dgates_0·w_hhᵀ; dc0 := dc_0⊙f_0 (the carry)
        gemm_work = _run_gemm_packed_b(dgates[:, 0], w_hh_t, packed, is_packed, dh0, 0.0, n_threads, gemm_work)
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
def _gru_cell_row(gf, g, rec, r, bias_hn, h_prev, p, hnf, hf, h, n):
    """One row of one step: gate gf[g:+3n] (xr, xz, xn) := (r, z, n) activated, with rec = h_prev·w_hh;
    hn := rec_n + bias_hn; h := (1-z)⊙n + z⊙h_prev."""
    gp, rp, bp, pp = data_pointer(gf), data_pointer(rec), data_pointer(bias_hn), data_pointer(h_prev)
    hn_out, hp = data_pointer(hnf), data_pointer(hf)
    for j in range(2 * n):  # r, z
        gp[g + j] = gate_sigmoid(gp[g + j] + rp[r + j])
    for j in range(n):
        v = rp[r + 2 * n + j] + bp[j]
        hn_out[h + j] = v
        cand = gate_tanh(gp[g + 2 * n + j] + gp[g + j] * v)
        gp[g + 2 * n + j] = cand
        z = gp[g + n + j]
        hp[h + j] = (1 - z) * cand + z * pp[p + j]


@_jit_parallel
def _gru_forward(x, w_ih, w_hh, bias, bias_hn, h0, hs, gates, hn, work, n_threads, gemm_work, packed):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 3 * n
    flat_gates = gates.reshape(m * n_steps, width)
    gemm_work = _dense_forward(x.reshape(m * n_steps, k), w_ih, bias, _IDENTITY, flat_gates, flat_gates, True,
                               n_threads, gemm_work)
    rec = work[:m * width].reshape(m, width)
    gf, hf, hnf, h0f = gates.reshape(-1), hs.reshape(-1), hn.reshape(-1), h0.reshape(-1)
    ldg, ldh = n_steps * width, n_steps * n
    packed, is_packed = _pack_b_once(m, w_hh, packed)
    for t in range(n_steps):
        # rec := h_{t-1}·w_hh (kept apart: its n block is gated by r)
        if t == 0:
            gemm_work = _run_gemm_packed_b(h0, w_hh, packed, is_packed, rec, 0.0, n_threads, gemm_work)
        else:
            gemm_work = _run_gemm_packed_b(hs[:, t - 1], w_hh, packed, is_packed, rec, 0.0, n_threads, gemm_work)
        recf = rec.reshape(-1)
        set_threads(region_threads(m * width, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for b in prange(m):
            if t == 0:
                _gru_cell_row(gf, b * ldg, recf, b * width, bias_hn, h0f, b * n, hnf, hf, b * ldh, n)
            else:
                _gru_cell_row(gf, b * ldg + t * width, recf, b * width, bias_hn, hf, b * ldh + (t - 1) * n,
                              hnf, hf, b * ldh + t * n, n)
    return gemm_work, packed


@_jit
def _gru_grad_row(gf, g, hnf, s, h_prev, p, gradf, carry, direct, q, has_carry, dgf, dghf, n):
    """One row of one backward step: dh = grad (+ carry + direct, from step t+1);
    dgf[g:+3n] := (dar, daz, dan), dghf[g:+3n] := (dar, daz, dan⊙r); direct := dh⊙z."""
    gp, hnp, pp, gr = data_pointer(gf), data_pointer(hnf), data_pointer(h_prev), data_pointer(gradf)
    cp, dirp, dp, dhp = data_pointer(carry), data_pointer(direct), data_pointer(dgf), data_pointer(dghf)
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


@_jit_parallel
def _gru_backward(x, w_ih, w_hh_t, h0, hs, gates, hn, grad_hs, t0, dgates, dghh, dx, dw_ih, dw_hh, dbias,
                  dbias_hn, dh0, work, n_threads, gemm_work, packed, bias0):
    m, n_steps, k = x.shape
    n = h0.shape[1]
    width = 3 * n
    size = m * n
    carry = work[:size].reshape(m, n)
    carryf = work[:size]
    direct = work[size:2 * size]
    saved = work[2 * size:]
    gf, hnf, hf, h0f, gradf = gates.reshape(-1), hn.reshape(-1), hs.reshape(-1), h0.reshape(-1), \
        grad_hs.reshape(-1)
    dgf, dghf = dgates.reshape(-1), dghh.reshape(-1)
    ldg, ldh = n_steps * width, n_steps * n
    _zero_steps(dgates, t0)
    _zero_steps(dghh, t0)
    packed, is_packed = _pack_b_once(m, w_hh_t, packed)
    for t in range(n_steps - 1, t0 - 1, -1):
        has_carry = t < n_steps - 1
        if has_carry:  # carry := dghh_{t+1}·w_hhᵀ
            gemm_work = _run_gemm_packed_b(dghh[:, t + 1], w_hh_t, packed, is_packed, carry, 0.0, n_threads,
                                           gemm_work)
        set_threads(region_threads(m * width, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for b in prange(m):
            if t == 0:
                _gru_grad_row(gf, b * ldg, hnf, b * ldh, h0f, b * n, gradf, carryf, direct, b * n, has_carry,
                              dgf, dghf, n)
            else:
                _gru_grad_row(gf, b * ldg + t * width, hnf, b * ldh + t * n, hf, b * ldh + (t - 1) * n, gradf,
                              carryf, direct, b * n, has_carry, dgf, dghf, n)
    if t0 == 0:  # dh0 := dghh_0·w_hhᵀ + dh_0⊙z_0
        gemm_work = _run_gemm_packed_b(dghh[:, 0], w_hh_t, packed, is_packed, dh0, 0.0, n_threads, gemm_work)
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
        writable(x), writable(w_ih), np.ascontiguousarray(w_hh.T), writable(h0), writable(c0), writable(hs),
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
        writable(x), writable(w_ih), np.ascontiguousarray(w_hh.T), writable(h0), writable(hs), writable(gates),
        writable(hn), writable(grad_hs), x.shape[1] - int(truncate), dgates, dghh, dx, dw_ih, dw_hh, dbias,
        dbias_hn, dh0, work, clamp_threads(n_threads), _gemm_workspace(dtype), _packed_workspace(dtype),
        no_bias(dtype)))

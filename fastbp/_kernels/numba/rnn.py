"""Recurrent kernels: the RNN time loop (forward and BPTT) and the fixed-point
relaxation with its Almeida-Pineda adjoint.

Design: each time loop (or relaxation loop) runs inside ONE jitted function.
An RNN step is one call of the GEMM driver for the recurrent product (h_{t-1}·Wh,
or δ_{t+1}·Whᵀ from a transposed copy of Wh made once per call; the same
serial/parallel twin and threshold as ``gemm.run_driver``, through
``mlp._run_gemm``) into a (batch, hidden) buffer, then a ``prange`` over the
rows of the batch adds it and applies the activation (or its derivative)
while the row is in L1. A fixed-point sweep is a ``prange`` over rows, a row
being one task: ``row_times_matrix`` accumulates src_row·W into the
destination row in the axpy order (k outer, the contiguous j inner, which
LLVM vectorises). A row's result does not depend on which thread computes
it and the GEMM only partitions its output, so nothing depends on the thread
count. dWh = Σ_t h_{t-1}ᵀ·δ_t is one call of
the GEMM after the loop, over the batch*T - 1 rows of the flat arrays shifted
by one row, with δ_{b,0} (b >= 1) zeroed meanwhile (those rows pair δ with the
last state of the previous sequence); the GEMM sums in a fixed order.

Layout: every array C-contiguous, read as flat arrays; (batch, T, hidden)
sequences are batch-major. Activations are element-wise, their derivative
taken from the output (registry.RECURRENT_ACTIVATIONS).
"""

import numba
import numpy as np
from numba import prange

from ..blocking import FIXED_POINT_PARALLEL_MIN_FLOPS, RECURRENT_PARALLEL_MIN_ELEMENTS
from ._arrays import kept_array, kept_copy, transposed, writable
from ._threads import clamp_threads, region_threads, set_threads
from .activations import activation_span, derivative_span
from .gemm import NO_ACTIVATION, gemm, no_bias
from .mlp import _run_gemm, _workspaces

_jit = numba.njit(cache=True, nogil=True)


@_jit
def row_times_matrix(src, src_off, w, n, dst, dst_off):
    """dst[dst_off:+n] += src[src_off:+n]·w, w (n, n) read flat.  IN src, w; IN/OUT dst."""
    for k in range(n):
        s = src[src_off + k]
        row = k * n
        for j in range(n):
            dst[dst_off + j] += s * w[row + j]


@numba.njit(cache=True, nogil=True, parallel=True)
def _rnn_forward(act, x_proj, wh, hs, rec, n_threads, gemm_work, bias0):
    m, n_steps, n = x_proj.shape
    xf = x_proj.reshape(m * n_steps * n)
    hf = hs.reshape(m * n_steps * n)
    rf = rec.reshape(m * n)
    ld = n_steps * n
    for t in range(n_steps):
        if t > 0:
            gemm_work = _run_gemm(hs[:, t - 1], wh, rec, rec, bias0, 0.0, NO_ACTIVATION, n_threads, gemm_work)
        set_threads(region_threads(m * n, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for i in prange(m):
            off = i * ld + t * n
            if t > 0:
                for j in range(n):
                    hf[off + j] = xf[off + j] + rf[i * n + j]
                activation_span(act, hf, off, hf, off, n)
            else:
                activation_span(act, xf, off, hf, off, n)
    return gemm_work


@numba.njit(cache=True, nogil=True, parallel=True)
def _bptt_deltas(act, hs, wh_t, grad_hs, t0, delta, rec, n_threads, gemm_work, bias0):
    m, n_steps, n = hs.shape
    hf = hs.reshape(m * n_steps * n)
    gf = grad_hs.reshape(m * n_steps * n)
    df = delta.reshape(m * n_steps * n)
    rf = rec.reshape(m * n)
    ld = n_steps * n
    for t in range(n_steps - 1, t0 - 1, -1):
        if t < n_steps - 1:
            gemm_work = _run_gemm(delta[:, t + 1], wh_t, rec, rec, bias0, 0.0, NO_ACTIVATION, n_threads, gemm_work)
        set_threads(region_threads(m * n, RECURRENT_PARALLEL_MIN_ELEMENTS, n_threads))
        for i in prange(m):
            off = i * ld + t * n
            if t < n_steps - 1:
                for j in range(n):
                    df[off + j] = gf[off + j] + rf[i * n + j]
            else:
                for j in range(n):
                    df[off + j] = gf[off + j]
            derivative_span(act, hf, hf, df, df, off, n)
    for i in range(m):
        for t in range(t0):
            off = i * ld + t * n
            for j in range(n):
                df[off + j] = 0.0
    return gemm_work


def _gemm_workspace(dtype):
    work = _workspaces.__dict__.get(dtype)
    return np.empty(0, dtype) if work is None else work


def _step_product(hs):
    """Scratch for one step's recurrent product, (batch, hidden), kept between calls."""
    return kept_array("step product", (hs.shape[0], hs.shape[2]), hs.dtype)


def rnn_forward(x_proj, wh, act, hs, n_threads):
    """hs[:, t] := act(x_proj[:, t] + hs[:, t-1]·wh), t = 0..T-1, from h_{-1} = 0.

    IN x_proj (batch, T, hidden), wh (hidden, hidden); OUT hs (batch, T, hidden), may be x_proj.
    """
    if hs.size:
        dtype = hs.dtype
        _workspaces.__dict__[dtype] = _rnn_forward(act, writable(x_proj), writable(wh), hs, _step_product(hs),
                                                   clamp_threads(n_threads), _gemm_workspace(dtype), no_bias(dtype))


def rnn_backward(hs, wh, act, grad_hs, truncate, delta, dwh, n_threads):
    """BPTT over the last ``truncate`` steps (t0 = T - truncate):
    δ_t := (grad_hs_t + δ_{t+1}·whᵀ) ⊙ act'(h_t) for t >= t0, δ_t := 0 for t < t0;
    dwh := Σ_{t>=1} h_{t-1}ᵀ·δ_t.

    IN hs, grad_hs (batch, T, hidden), wh (hidden, hidden);
    OUT delta (batch, T, hidden), may be grad_hs; OUT dwh (hidden, hidden).
    """
    m, n_steps, n = hs.shape
    if n == 0:
        return
    if m == 0 or n_steps == 0 or n_steps == 1:
        if m and n_steps:
            _workspaces.__dict__[hs.dtype] = _bptt_deltas(
                act, writable(hs), transposed(wh), writable(grad_hs), 0, delta, _step_product(hs),
                clamp_threads(n_threads), _gemm_workspace(hs.dtype), no_bias(hs.dtype))
        dwh.fill(0)
        return
    n_threads = clamp_threads(n_threads)
    t0 = n_steps - truncate
    _workspaces.__dict__[hs.dtype] = _bptt_deltas(act, writable(hs), transposed(wh), writable(grad_hs), t0, delta,
                                                  _step_product(hs), n_threads, _gemm_workspace(hs.dtype),
                                                  no_bias(hs.dtype))
    flat_h = writable(hs).reshape(m * n_steps, n)
    flat_d = delta.reshape(m * n_steps, n)
    saved = None
    if t0 == 0 and m > 1:
        saved = kept_copy(delta[1:, 0], "first deltas")
        delta[1:, 0] = 0
    gemm(flat_h[:-1].T, flat_d[1:], dwh, 1.0, 0.0, n_threads)
    if saved is not None:
        delta[1:, 0] = saved


@_jit
def _max_abs_diff(x, y):
    """max |x - y| over flat arrays, infinity if a difference is NaN."""
    r = 0.0
    for i in range(x.shape[0]):
        d = abs(np.float64(x[i]) - np.float64(y[i]))
        if d != d:
            return np.inf
        if d > r:
            r = d
    return r


@numba.njit(cache=True, nogil=True, parallel=True)
def _fixed_point_forward(act, x_proj, wh, tol, max_iter, h, scratch, n_threads):
    m, n = x_proj.shape
    set_threads(region_threads(2 * m * n * n, FIXED_POINT_PARALLEL_MIN_FLOPS, n_threads))
    xf = x_proj.reshape(m * n)
    hf = h.reshape(m * n)
    sf = scratch.reshape(m * n)
    wf = wh.reshape(n * n)
    hf[:] = 0.0
    residual = np.inf
    it = 0
    while it < max_iter:
        it += 1
        for i in prange(m):
            off = i * n
            for j in range(n):
                sf[off + j] = xf[off + j]
            row_times_matrix(hf, off, wf, n, sf, off)
            activation_span(act, sf, off, sf, off, n)
        residual = _max_abs_diff(sf, hf)
        hf[:] = sf
        if residual <= tol:
            break
    return it, residual


@numba.njit(cache=True, nogil=True, parallel=True)
def _fixed_point_adjoint(act, h, wh_t, grad_h, tol, max_iter, delta, scratch, n_threads):
    m, n = h.shape
    set_threads(region_threads(2 * m * n * n, FIXED_POINT_PARALLEL_MIN_FLOPS, n_threads))
    hf = h.reshape(m * n)
    gf = grad_h.reshape(m * n)
    df = delta.reshape(m * n)
    vf = scratch[0].reshape(m * n)
    nf = scratch[1].reshape(m * n)
    wf = wh_t.reshape(n * n)
    vf[:] = gf
    residual = 0.0 if max_iter == 0 else np.inf
    it = 0
    while it < max_iter:
        it += 1
        for i in prange(m):
            off = i * n
            derivative_span(act, hf, hf, vf, df, off, n)  # u := v ⊙ D
            for j in range(n):
                nf[off + j] = gf[off + j]
            row_times_matrix(df, off, wf, n, nf, off)
        residual = _max_abs_diff(nf, vf)
        vf[:] = nf
        if residual <= tol:
            break
    for i in prange(m):
        derivative_span(act, hf, hf, vf, df, i * n, n)
    return it, residual


def fixed_point_forward(x_proj, wh, act, tol, max_iter, h, scratch, n_threads):
    """Relax h := act(x_proj + h·wh) from h = 0 until max|Δh| <= tol, at most max_iter updates.

    IN x_proj (m, n), wh (n, n); OUT h (m, n): the last iterate; scratch (m, n).
    Returns (iterations, residual).
    """
    if h.size == 0:
        h.fill(0)
        return (1 if max_iter > 0 else 0), 0.0
    it, residual = _fixed_point_forward(act, writable(x_proj), writable(wh), float(tol), int(max_iter), h,
                                        scratch, clamp_threads(n_threads))
    return int(it), float(residual)


def fixed_point_adjoint(h, wh, act, grad_h, tol, max_iter, delta, scratch, n_threads):
    """Solve v = g + (v ⊙ D)·whᵀ, D = act'(h), iterating from v = g; delta := v ⊙ D.

    IN h, grad_h (m, n), wh (n, n); OUT delta (m, n); scratch (2, m, n).
    Returns (iterations, residual max|Δv| of the last update).
    """
    if h.size == 0:
        return (1 if max_iter > 0 else 0), 0.0
    it, residual = _fixed_point_adjoint(act, writable(h), transposed(wh), writable(grad_h),
                                        float(tol), int(max_iter), delta, scratch, clamp_threads(n_threads))
    return int(it), float(residual)

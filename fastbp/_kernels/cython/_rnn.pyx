# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Recurrent kernels: the RNN time loop (forward and BPTT) and the fixed-point
relaxation with its Almeida-Pineda adjoint, float32 and float64."""
# Design: each kernel is one nogil call; every loop over time steps (or
# relaxation sweeps) runs in compiled code. A step is one call of the GEMM
# (gemm_nogil, threads split the rows of the batch; deterministic for any
# thread count) on strided views: in a (batch, T, hidden) C-contiguous
# sequence, the states of step t are a (batch, hidden) matrix with row stride
# T*hidden, so no step is copied. The forward adds h_{t-1}·Wh onto x_proj_t
# in place (beta = 1) and applies the activation in the GEMM epilogue.
# Backward: δ_t := grad_t + δ_{t+1}·Whᵀ (GEMM, beta = 1, on a row-major
# copy of Whᵀ made once per call: the unpacked GEMM would otherwise copy a
# transposed B on every step, ~20 % of an RNN training step at hidden 128),
# then δ_t ⊙= act'(h_t) row by row. dWh = Σ_t h_{t-1}ᵀ·δ_t
# is ONE GEMM after the loop over the batch*T - 1 rows of the flat arrays
# shifted by one row (row r of δ pairs with row r-1 of hs); the pairs that
# straddle two sequences (δ_{b,0} with h_{b-1,T-1}) are removed by zeroing
# δ_{b,0} for the GEMM and restoring it after. The GEMM sums in a fixed order,
# so dWh does not depend on the thread count either.
# Layout: every array C-contiguous; activations element-wise with the
# derivative taken from the output (registry.RECURRENT_ACTIVATIONS).

from cython.parallel cimport prange

from fastbp._kernels.cython._threads cimport backing_off
from cython cimport floating
from libc.math cimport INFINITY, fabs
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

from fastbp._kernels.cython._gemm cimport gemm_nogil
from fastbp._kernels.cython._activations cimport ACT_GELU, ACT_SOFTMAX, N_ACTIVATIONS, act_grad_row, act_row

# Below this many elements a row loop runs on the calling thread
# (blocking.PARALLEL_MIN_ELEMENTS, set by _configure).
cdef Py_ssize_t PARALLEL_MIN_ELEMENTS = 1 << 15


def _configure(Py_ssize_t parallel_min_elements):
    """Set blocking.PARALLEL_MIN_ELEMENTS."""
    global PARALLEL_MIN_ELEMENTS
    if parallel_min_elements < 1:
        raise ValueError(f"parallel_min_elements must be positive, got {parallel_min_elements}")
    PARALLEL_MIN_ELEMENTS = parallel_min_elements


def _thresholds():
    """(row loop threshold,) in use, for tests."""
    return (PARALLEL_MIN_ELEMENTS,)


cdef floating* _transposed_copy(const floating[:, ::1] a) except NULL:
    """A malloc'ed row-major copy of aᵀ (n, n); the caller frees it."""
    cdef Py_ssize_t n = a.shape[0], i, j
    cdef floating* t = <floating*>malloc(max(n * n, 1) * sizeof(floating))
    if t == NULL:
        raise MemoryError("cannot allocate the transposed recurrent weights")
    with nogil:
        for i in range(n):
            for j in range(n):
                t[j * n + i] = a[i, j]
    return t


def _check_act(int act):
    if act < 0 or act >= N_ACTIVATIONS or act == ACT_GELU or act == ACT_SOFTMAX:
        raise ValueError(f"activation id {act} cannot run in a recurrent kernel")


cdef void _act_rows(int act, const floating* src, floating* dst, Py_ssize_t m, Py_ssize_t n,
                    Py_ssize_t ld, int n_threads) noexcept nogil:
    """dst[i, :] := act(src[i, :]) for m rows of n values, row stride ld.  dst may be src."""
    cdef Py_ssize_t i
    if n_threads < 2 or m * n < PARALLEL_MIN_ELEMENTS or backing_off():
        for i in range(m):
            act_row(act, src + i * ld, dst + i * ld, n)
    else:
        for i in prange(m, schedule="static", num_threads=n_threads):
            act_row(act, src + i * ld, dst + i * ld, n)


cdef void _grad_rows(int act, const floating* a, floating* g, Py_ssize_t m, Py_ssize_t n,
                     Py_ssize_t ld, int n_threads) noexcept nogil:
    """g[i, :] ⊙= act'(from a[i, :]) for m rows of n values, row stride ld (in place)."""
    cdef Py_ssize_t i
    if n_threads < 2 or m * n < PARALLEL_MIN_ELEMENTS or backing_off():
        for i in range(m):
            act_grad_row(act, a + i * ld, a + i * ld, g + i * ld, g + i * ld, n)
    else:
        for i in prange(m, schedule="static", num_threads=n_threads):
            act_grad_row(act, a + i * ld, a + i * ld, g + i * ld, g + i * ld, n)


cdef void _copy_rows(const floating* src, floating* dst, Py_ssize_t m, Py_ssize_t n,
                     Py_ssize_t ld) noexcept nogil:
    cdef Py_ssize_t i
    if src == dst:
        return
    for i in range(m):
        memcpy(dst + i * ld, src + i * ld, n * sizeof(floating))


cdef double _max_abs_diff(const floating* x, const floating* y, Py_ssize_t size) noexcept nogil:
    """max |x - y| (infinity if any difference is NaN), an exact, order-free reduction."""
    cdef double r = 0, d
    cdef Py_ssize_t i
    for i in range(size):
        d = fabs(<double>x[i] - <double>y[i])
        if d != d:
            return INFINITY
        if d > r:
            r = d
    return r


def rnn_forward(const floating[:, :, ::1] x_proj, const floating[:, ::1] wh, int act,
                floating[:, :, ::1] hs, int n_threads):
    """hs[:, t] := act(x_proj[:, t] + hs[:, t-1]·wh), t = 0..T-1, from h_{-1} = 0.

    IN x_proj (batch, T, hidden), wh (hidden, hidden); OUT hs (batch, T, hidden), may be x_proj.
    """
    _check_act(act)
    cdef Py_ssize_t m = x_proj.shape[0], n_steps = x_proj.shape[1], n = x_proj.shape[2]
    if tuple(hs.shape)[:3] != (m, n_steps, n) or tuple(wh.shape)[:2] != (n, n):
        raise ValueError("rnn_forward: shapes of x_proj, wh, hs do not match")
    if m == 0 or n_steps == 0 or n == 0:
        return
    cdef Py_ssize_t ld = n_steps * n, t
    cdef const floating* px = &x_proj[0, 0, 0]
    cdef floating* ph = &hs[0, 0, 0]
    cdef int status = 0
    with nogil:
        _act_rows(act, px, ph, m, n, ld, n_threads)  # h_0 = act(x_proj_0): h_{-1} = 0
        for t in range(1, n_steps):
            _copy_rows(px + t * n, ph + t * n, m, n, ld)
            # h_t := act(h_t + h_{t-1}·wh), the activation in the GEMM epilogue
            status = gemm_nogil(m, n, n, <floating>1, ph + (t - 1) * n, ld, 1, &wh[0, 0], n, 1,
                                <floating>1, ph + t * n, ld, NULL, act, ph + t * n, ld, n_threads)
            if status != 0:
                break
    if status != 0:
        raise MemoryError("rnn_forward: cannot allocate the GEMM workspace")


def rnn_backward(const floating[:, :, ::1] hs, const floating[:, ::1] wh, int act,
                 const floating[:, :, ::1] grad_hs, Py_ssize_t truncate,
                 floating[:, :, ::1] delta, floating[:, ::1] dwh, int n_threads):
    """BPTT over the last ``truncate`` steps (t0 = T - truncate):
    δ_t := (grad_hs_t + δ_{t+1}·whᵀ) ⊙ act'(h_t) for t >= t0, δ_t := 0 for t < t0;
    dwh := Σ_{t>=1} h_{t-1}ᵀ·δ_t.

    IN hs, grad_hs (batch, T, hidden), wh (hidden, hidden);
    OUT delta (batch, T, hidden), may be grad_hs; OUT dwh (hidden, hidden).
    """
    _check_act(act)
    cdef Py_ssize_t m = hs.shape[0], n_steps = hs.shape[1], n = hs.shape[2]
    if tuple(grad_hs.shape)[:3] != (m, n_steps, n) or tuple(delta.shape)[:3] != (m, n_steps, n):
            raise ValueError("rnn_backward: grad_hs and delta must have the shape of hs")
    if tuple(wh.shape)[:2] != (n, n) or tuple(dwh.shape)[:2] != (n, n):
        raise ValueError("rnn_backward: wh and dwh must be (hidden, hidden)")
    if not 1 <= truncate <= max(n_steps, 1):
        raise ValueError(f"rnn_backward: truncate must lie in [1, {n_steps}], got {truncate}")
    if n == 0:
        return
    if m == 0 or n_steps == 0:
        dwh[:, :] = 0
        return
    cdef Py_ssize_t ld = n_steps * n, t, b, t0 = n_steps - truncate
    cdef const floating* ph = &hs[0, 0, 0]
    cdef const floating* pg = &grad_hs[0, 0, 0]
    cdef floating* pd = &delta[0, 0, 0]
    cdef floating* saved = NULL
    cdef int status = 0
    cdef floating* wh_t = _transposed_copy(wh)
    with nogil:
        # t = T-1 down to t0 (δ_T = 0)
        _copy_rows(pg + (n_steps - 1) * n, pd + (n_steps - 1) * n, m, n, ld)
        _grad_rows(act, ph + (n_steps - 1) * n, pd + (n_steps - 1) * n, m, n, ld, n_threads)
        for t in range(n_steps - 2, t0 - 1, -1):
            _copy_rows(pg + t * n, pd + t * n, m, n, ld)
            # δ_t := grad_t + δ_{t+1}·whᵀ
            status = gemm_nogil(m, n, n, <floating>1, pd + (t + 1) * n, ld, 1, wh_t, n, 1,
                                <floating>1, pd + t * n, ld, NULL, -1, NULL, 0, n_threads)
            if status != 0:
                break
            _grad_rows(act, ph + t * n, pd + t * n, m, n, ld, n_threads)
        for t in range(t0):
            for b in range(m):
                memset(pd + b * ld + t * n, 0, n * sizeof(floating))
        if status == 0:
            if n_steps == 1:
                memset(&dwh[0, 0], 0, n * n * sizeof(floating))
            else:
                # dwh := Σ_r hs_flat[r-1]ᵀ·δ_flat[r] over r = 1..batch*T-1, with δ_{b,0} (b >= 1)
                # zeroed meanwhile: those rows pair δ with the last state of the previous sequence.
                if t0 == 0 and m > 1:
                    saved = <floating*>malloc((m - 1) * n * sizeof(floating))
                    if saved == NULL:
                        status = -1
                    else:
                        for b in range(1, m):
                            memcpy(saved + (b - 1) * n, pd + b * ld, n * sizeof(floating))
                            memset(pd + b * ld, 0, n * sizeof(floating))
                if status == 0:
                    status = gemm_nogil(n, n, m * n_steps - 1, <floating>1, ph, 1, n, pd + n, n, 1,
                                        <floating>0, &dwh[0, 0], n, NULL, -1, NULL, 0, n_threads)
                if saved != NULL:
                    for b in range(1, m):
                        memcpy(pd + b * ld, saved + (b - 1) * n, n * sizeof(floating))
                    free(saved)
        free(wh_t)
    if status != 0:
        raise MemoryError("rnn_backward: cannot allocate a workspace")


def fixed_point_forward(const floating[:, ::1] x_proj, const floating[:, ::1] wh, int act,
                        double tol, Py_ssize_t max_iter, floating[:, ::1] h, floating[:, ::1] scratch,
                        int n_threads):
    """Relax h := act(x_proj + h·wh) from h = 0 until max|Δh| <= tol, at most max_iter updates.

    IN x_proj (m, n), wh (n, n); OUT h (m, n): the last iterate; scratch (m, n).
    Returns (iterations, residual).
    """
    _check_act(act)
    cdef Py_ssize_t m = x_proj.shape[0], n = x_proj.shape[1], it = 0, size = m * n
    if tuple(h.shape)[:2] != (m, n) or tuple(scratch.shape)[:2] != (m, n) or tuple(wh.shape)[:2] != (n, n):
        raise ValueError("fixed_point_forward: shapes of x_proj, wh, h, scratch do not match")
    h[:, :] = 0
    if size == 0:
        return (1 if max_iter > 0 else 0), 0.0
    cdef double residual = INFINITY
    cdef int status = 0
    cdef floating* ph = &h[0, 0]
    cdef floating* ps = &scratch[0, 0]
    with nogil:
        while it < max_iter:
            it += 1
            memcpy(ps, &x_proj[0, 0], size * sizeof(floating))
            status = gemm_nogil(m, n, n, <floating>1, ph, n, 1, &wh[0, 0], n, 1,
                                <floating>1, ps, n, NULL, act, ps, n, n_threads)
            if status != 0:
                break
            residual = _max_abs_diff(ps, ph, size)
            memcpy(ph, ps, size * sizeof(floating))
            if residual <= tol:
                break
    if status != 0:
        raise MemoryError("fixed_point_forward: cannot allocate the GEMM workspace")
    return it, residual


def fixed_point_adjoint(const floating[:, ::1] h, const floating[:, ::1] wh, int act,
                        const floating[:, ::1] grad_h, double tol, Py_ssize_t max_iter,
                        floating[:, ::1] delta, floating[:, :, ::1] scratch, int n_threads):
    """Solve v = g + (v ⊙ D)·whᵀ, D = act'(h), iterating from v = g; delta := v ⊙ D.

    IN h, grad_h (m, n), wh (n, n); OUT delta (m, n); scratch (2, m, n).
    Returns (iterations, residual max|Δv| of the last update).
    """
    _check_act(act)
    cdef Py_ssize_t m = h.shape[0], n = h.shape[1], it = 0, size = m * n
    if (tuple(grad_h.shape)[:2] != (m, n) or tuple(delta.shape)[:2] != (m, n)
            or tuple(scratch.shape)[:3] != (2, m, n) or tuple(wh.shape)[:2] != (n, n)):
        raise ValueError("fixed_point_adjoint: shapes of h, wh, grad_h, delta, scratch do not match")
    if size == 0:
        return (1 if max_iter > 0 else 0), 0.0
    cdef double residual = 0.0 if max_iter == 0 else INFINITY
    cdef int status = 0
    cdef floating* v = &scratch[0, 0, 0]
    cdef floating* new = &scratch[1, 0, 0]
    cdef floating* pd = &delta[0, 0]
    cdef floating* wh_t = _transposed_copy(wh)  # once, not on every sweep (see rnn_backward)
    with nogil:
        memcpy(v, &grad_h[0, 0], size * sizeof(floating))
        while it < max_iter:
            it += 1
            memcpy(pd, v, size * sizeof(floating))
            _grad_rows(act, &h[0, 0], pd, m, n, n, n_threads)  # u := v ⊙ D
            memcpy(new, &grad_h[0, 0], size * sizeof(floating))
            status = gemm_nogil(m, n, n, <floating>1, pd, n, 1, wh_t, n, 1,
                                <floating>1, new, n, NULL, -1, NULL, 0, n_threads)
            if status != 0:
                break
            residual = _max_abs_diff(new, v, size)
            memcpy(v, new, size * sizeof(floating))
            if residual <= tol:
                break
        memcpy(pd, v, size * sizeof(floating))
        _grad_rows(act, &h[0, 0], pd, m, n, n, n_threads)
        free(wh_t)
    if status != 0:
        raise MemoryError("fixed_point_adjoint: cannot allocate the GEMM workspace")
    return it, residual

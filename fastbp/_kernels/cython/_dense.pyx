# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Fused dense layer, forward and backward, float32 and float64."""
# Design: forward is one GEMM whose epilogue adds the bias and applies the
# activation to each micro-tile right after its last KC slice (softmax, being
# row-wise, gets the bias in the epilogue and one row pass afterwards).
# Backward follows scikit-learn's order: δ := grad_a ⊙ act'(a) (row-parallel),
# dw := xᵀ·δ and dx := δ·wᵀ through the same GEMM with transposed strides (no
# copies), db := Σ_rows δ per column block (parallel over column blocks, each
# column summed in row order in double). Nothing depends on the thread count.
# Layout: x and w have any strides; every other 2-D array is C-contiguous.

from cython.parallel cimport prange

from fastbp._kernels.cython._threads cimport backing_off
from cython cimport floating

from fastbp._kernels.cython._gemm cimport gemm_nogil
from fastbp._kernels.cython._activations cimport (
    ACT_IDENTITY, ACT_SOFTMAX, N_ACTIVATIONS,
    activation_backward_nogil, activation_forward_nogil,
)

# Columns of db summed by one task.
DEF DB_BLOCK = 128


cdef void _column_sums(const floating* g, Py_ssize_t m, Py_ssize_t n, Py_ssize_t block,
                       floating* db, bint accumulate) noexcept nogil:
    """db[j] := Σ_i g[i, j] (+ db[j]) for the columns of block ``block``, rows in order."""
    cdef double acc[DB_BLOCK]
    cdef Py_ssize_t i, j, j0 = block * DB_BLOCK
    cdef Py_ssize_t width = min(<Py_ssize_t>DB_BLOCK, n - j0)
    cdef const floating* row
    for j in range(width):
        acc[j] = 0.0
    for i in range(m):
        row = g + i * n + j0
        for j in range(width):
            acc[j] += row[j]
    for j in range(width):
        if accumulate:
            db[j0 + j] = <floating>acc[j] + db[j0 + j]
        else:
            db[j0 + j] = <floating>acc[j]


# The checks compare C integers and only build Python objects to raise: passing
# a typed memoryview to a Python-level function makes a new memoryview object
# (~0.5 us each, 4-8 per call, more than a small layer's arithmetic).
cdef inline int _check_act(int act) except -1:
    if act < 0 or act >= N_ACTIVATIONS:
        raise ValueError(f"unknown activation id {act}")
    return 0


cdef inline int _check_2d(str kernel, str name, Py_ssize_t rows, Py_ssize_t cols,
                          Py_ssize_t m, Py_ssize_t n) except -1:
    if rows != m or cols != n:
        raise ValueError(f"{kernel}: {name} has shape {(rows, cols)}, expected {(m, n)}")
    return 0


cdef inline int _check_1d(str kernel, str name, Py_ssize_t size, Py_ssize_t n) except -1:
    if size != n:
        raise ValueError(f"{kernel}: {name} has shape {(size,)}, expected {(n,)}")
    return 0


cdef int dense_forward_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                             const floating* x, Py_ssize_t rs_x, Py_ssize_t cs_x,
                             const floating* w, Py_ssize_t rs_w, Py_ssize_t cs_w,
                             const floating* bias, int act, floating* z, floating* a,
                             int n_threads) noexcept nogil:
    """z := x·w + bias; a := act(z).  z, a (m, n) C-contiguous, may be the same array. Returns 0 or -1."""
    cdef int epilogue_act = act
    cdef int status
    if m == 0 or n == 0:
        return 0
    if act == ACT_SOFTMAX or (act == ACT_IDENTITY and a == z):
        epilogue_act = -1
    status = gemm_nogil(m, n, k, <floating>1, x, rs_x, cs_x, w, rs_w, cs_w,
                        <floating>0, z, n, bias, epilogue_act, a, n, n_threads)
    if status == 0 and act == ACT_SOFTMAX:
        activation_forward_nogil(ACT_SOFTMAX, z, a, m, n, n_threads)
    return status


cdef int dense_backward_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                              const floating* x, Py_ssize_t rs_x, Py_ssize_t cs_x,
                              const floating* w, Py_ssize_t rs_w, Py_ssize_t cs_w,
                              const floating* z, const floating* a, const floating* grad_a, int act,
                              floating* grad_z, floating* dw, floating* db, floating* dx,
                              bint accumulate, int n_threads) noexcept nogil:
    """grad_z := grad_a ⊙ act'(z); dw := xᵀ·grad_z (+ dw); db := Σ_rows grad_z (+ db);
    dx := grad_z·wᵀ unless dx is NULL.  Returns 0 or -1."""
    cdef Py_ssize_t block, n_blocks = (n + DB_BLOCK - 1) // DB_BLOCK
    cdef floating beta = 1 if accumulate else 0
    cdef int status
    cdef Py_ssize_t i
    if m == 0 or n == 0:
        if not accumulate:
            for i in range(k * n):
                dw[i] = 0
            for i in range(n):
                db[i] = 0
        return 0
    activation_backward_nogil(act, z, a, grad_a, grad_z, m, n, n_threads)
    # dw := xᵀ·δ: x read through swapped strides
    status = gemm_nogil(k, n, m, <floating>1, x, cs_x, rs_x, grad_z, n, 1,
                        beta, dw, n, NULL, -1, NULL, 0, n_threads)
    if n_threads < 2 or n_blocks < 2 or m * n < 32768 or backing_off():
        for block in range(n_blocks):
            _column_sums(grad_z, m, n, block, db, accumulate)
    else:
        for block in prange(n_blocks, schedule="static", num_threads=n_threads):
            _column_sums(grad_z, m, n, block, db, accumulate)
    if status == 0 and dx != NULL and k > 0:
        # dx := δ·wᵀ: w read through swapped strides
        status = gemm_nogil(m, k, n, <floating>1, grad_z, n, 1, w, cs_w, rs_w,
                            <floating>0, dx, k, NULL, -1, NULL, 0, n_threads)
    return status


def dense_forward(const floating[:, :] x, const floating[:, :] w, const floating[::1] bias,
                  int act, floating[:, ::1] z, floating[:, ::1] a, int n_threads):
    """z := x·w + bias; a := act(z).

    IN x (m, k), w (k, n) any strides, bias (n,); OUT z, a (m, n) C-contiguous, may be the same array.
    """
    _check_act(act)
    cdef Py_ssize_t m = x.shape[0], k = x.shape[1], n = w.shape[1]
    _check_2d("dense_forward", "w", w.shape[0], w.shape[1], k, n)
    _check_1d("dense_forward", "bias", bias.shape[0], n)
    _check_2d("dense_forward", "z", z.shape[0], z.shape[1], m, n)
    _check_2d("dense_forward", "a", a.shape[0], a.shape[1], m, n)
    if m == 0 or n == 0:
        return
    cdef Py_ssize_t itemsize = sizeof(floating)
    cdef const floating* px = &x[0, 0] if k > 0 else NULL
    cdef const floating* pw = &w[0, 0] if k > 0 else NULL
    cdef int status
    with nogil:
        status = dense_forward_nogil(m, n, k, px, x.strides[0] // itemsize, x.strides[1] // itemsize,
                                     pw, w.strides[0] // itemsize, w.strides[1] // itemsize,
                                     &bias[0], act, &z[0, 0], &a[0, 0], n_threads)
    if status != 0:
        raise MemoryError("dense_forward: cannot allocate the GEMM workspace")


def dense_backward(const floating[:, :] x, const floating[:, :] w, const floating[:, ::1] z,
                   const floating[:, ::1] a, const floating[:, ::1] grad_a, int act,
                   floating[:, ::1] grad_z, floating[:, ::1] dw, floating[::1] db,
                   floating[:, ::1] dx, bint compute_dx, bint accumulate, int n_threads):
    """Backward pass of a dense layer.

    grad_z := grad_a ⊙ act'(z) (grad_z may alias grad_a);
    dw := xᵀ·grad_z (+ dw if accumulate); db := Σ_rows grad_z (+ db if accumulate);
    dx := grad_z·wᵀ when compute_dx (dx is not touched otherwise).
    IN x (m, k), w (k, n) any strides, z, a, grad_a (m, n) (z read by gelu only);
    OUT grad_z (m, n), dw (k, n), db (n,), dx (m, k).
    """
    _check_act(act)
    cdef Py_ssize_t m = x.shape[0], k = x.shape[1], n = w.shape[1]
    _check_2d("dense_backward", "w", w.shape[0], w.shape[1], k, n)
    _check_2d("dense_backward", "z", z.shape[0], z.shape[1], m, n)
    _check_2d("dense_backward", "a", a.shape[0], a.shape[1], m, n)
    _check_2d("dense_backward", "grad_a", grad_a.shape[0], grad_a.shape[1], m, n)
    _check_2d("dense_backward", "grad_z", grad_z.shape[0], grad_z.shape[1], m, n)
    _check_2d("dense_backward", "dw", dw.shape[0], dw.shape[1], k, n)
    _check_1d("dense_backward", "db", db.shape[0], n)
    if compute_dx:
        _check_2d("dense_backward", "dx", dx.shape[0], dx.shape[1], m, k)
    if n == 0:
        return
    cdef Py_ssize_t itemsize = sizeof(floating)
    cdef const floating* px = &x[0, 0] if (k > 0 and m > 0) else NULL
    cdef const floating* pw = &w[0, 0] if k > 0 else NULL
    cdef floating* pdw = &dw[0, 0] if k > 0 else NULL
    cdef floating* pdx = &dx[0, 0] if (compute_dx and k > 0 and m > 0) else NULL
    cdef const floating* pz = &z[0, 0] if m > 0 else NULL
    cdef const floating* pa = &a[0, 0] if m > 0 else NULL
    cdef const floating* pg = &grad_a[0, 0] if m > 0 else NULL
    cdef floating* gz = &grad_z[0, 0] if m > 0 else NULL
    cdef int status
    with nogil:
        status = dense_backward_nogil(m, n, k, px, x.strides[0] // itemsize, x.strides[1] // itemsize,
                                      pw, w.strides[0] // itemsize, w.strides[1] // itemsize,
                                      pz, pa, pg, act, gz, pdw, &db[0], pdx, accumulate, n_threads)
    if status != 0:
        raise MemoryError("dense_backward: cannot allocate the GEMM workspace")

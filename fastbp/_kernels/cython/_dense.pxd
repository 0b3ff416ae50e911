# Pointer-level, nogil dense layer passes, shared by the dense_* kernels and
# the whole-network kernel (_mlp). x and w have element strides (rs, cs); every
# other array is C-contiguous. Each returns 0, or -1 when the GEMM workspace
# cannot be allocated. Results do not depend on n_threads, bit for bit.
from cython cimport floating

# z := x·w + bias; a := act(z). IN x (m, k), w (k, n), bias (n,); OUT z, a (m, n), may be the same.
cdef int dense_forward_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                             const floating* x, Py_ssize_t rs_x, Py_ssize_t cs_x,
                             const floating* w, Py_ssize_t rs_w, Py_ssize_t cs_w,
                             const floating* bias, int act, floating* z, floating* a,
                             int n_threads) noexcept nogil

# grad_z := grad_a ⊙ act'(z) (may alias grad_a); dw := xᵀ·grad_z (+ dw if accumulate);
# db := Σ_rows grad_z (+ db); dx := grad_z·wᵀ unless dx is NULL.
# IN x (m, k), w (k, n), z, a, grad_a (m, n); OUT grad_z (m, n), dw (k, n), db (n,), dx (m, k).
cdef int dense_backward_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                              const floating* x, Py_ssize_t rs_x, Py_ssize_t cs_x,
                              const floating* w, Py_ssize_t rs_w, Py_ssize_t cs_w,
                              const floating* z, const floating* a, const floating* grad_a, int act,
                              floating* grad_z, floating* dw, floating* db, floating* dx,
                              bint accumulate, int n_threads) noexcept nogil

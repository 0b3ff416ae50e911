# Pointer-level, nogil losses, shared by the loss kernels and the whole-network
# kernel (_mlp). Every array is C-contiguous.
from cython cimport floating
from libc.stdint cimport int64_t

# Loss ids, as in fastbp._kernels.registry.LOSS_KERNELS (checked at import by __init__).
cdef enum:
    LOSS_MSE = 0
    LOSS_SOFTMAX_CROSS_ENTROPY = 1
    LOSS_SOFTMAX_CROSS_ENTROPY_INDEX = 2
    LOSS_BINARY_CROSS_ENTROPY = 3
    N_LOSSES = 4

# value[0] := loss of output (m, n) against target (m, n) rows (labels NULL) or, for
# LOSS_SOFTMAX_CROSS_ENTROPY_INDEX, labels (m,) in [0, n) (target NULL); OUT grad (m, n)
# := d loss/d output. m, n >= 1. Returns 0, or -1 if the partial sums cannot be allocated.
cdef int loss_nogil(int loss, const floating* output, const floating* target, const int64_t* labels,
                    floating* grad, Py_ssize_t m, Py_ssize_t n, int n_threads,
                    double* value) noexcept nogil

# Raise ValueError naming kernel, the row and the label unless every labels[i] is in [0, n).
cdef int check_labels(str kernel, const int64_t* labels, Py_ssize_t m, Py_ssize_t n) except -1

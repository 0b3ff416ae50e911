# Pointer-level, nogil activation kernels on one row (contiguous, n values).
# The GEMM epilogue of dense_forward calls act_row on each finished micro-tile row.
from cython cimport floating

# Activation ids, as in fastbp._kernels.registry (checked at import by __init__).
cdef enum:
    ACT_IDENTITY = 0
    ACT_STEP = 1
    ACT_HARDTANH = 2
    ACT_SIGMOID = 3
    ACT_TANH = 4
    ACT_RELU = 5
    ACT_LEAKY_RELU = 6
    ACT_ELU = 7
    ACT_SOFTPLUS = 8
    ACT_GELU = 9
    ACT_SOFTMAX = 10
    N_ACTIVATIONS = 11

# a[j] := act(z[j]) element-wise (not softmax). IN z (n,); OUT a (n,), may be z.
cdef void act_row(int act, const floating* z, floating* a, Py_ssize_t n) noexcept nogil

# a := softmax(z). IN z (n,); OUT a (n,), may be z.
cdef void softmax_row(const floating* z, floating* a, Py_ssize_t n) noexcept nogil

# gz[j] := g[j]*act'(z[j]), from a except for gelu (from z); softmax: a*(g - Σ g*a).
# IN z, a, g (n,); OUT gz (n,), may be g.
cdef void act_grad_row(int act, const floating* z, const floating* a, const floating* g,
                       floating* gz, Py_ssize_t n) noexcept nogil

# Row-parallel drivers on C-contiguous (m, n) arrays.
cdef void activation_forward_nogil(int act, const floating* z, floating* a,
                                   Py_ssize_t m, Py_ssize_t n, int n_threads) noexcept nogil
cdef void activation_backward_nogil(int act, const floating* z, const floating* a,
                                    const floating* g, floating* gz,
                                    Py_ssize_t m, Py_ssize_t n, int n_threads) noexcept nogil

# float32 tanh, branch-free (tanh_rational.h: the one definition, also inlined by gated_rows.h).
cdef extern from "tanh_rational.h" nogil:
    float _tanh_rational "fastbp_tanh_rational"(float x)

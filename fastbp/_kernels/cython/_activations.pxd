# Pointer-level, nogil activation kernels on one row (contiguous, n values).
# The GEMM epilogue of dense_forward calls act_row on each finished micro-tile row.
from cython cimport floating
from libc.math cimport fabsf

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

# float32 tanh as a rational function (Eigen's odd degree-13 / even degree-6
# minimax fit on [-7.9053, 7.9053], clamped outside: |error| < 3.5e-7, at most
# 6 float32 ulp, measured on a 2.2M-point grid): branch-free, so the row loops vectorise, where a tanhf call per
# element costs ~20 ns and dominated an RNN's forward pass. NaN propagates (the
# clamp's comparisons are false for NaN); |x| < 4e-4 returns x itself.
cdef inline float _tanh_rational(float x) noexcept nogil:
    cdef float c = <float>7.90531110763549805
    cdef float v = -c if x < -c else x  # two single selects: a nested one is not if-converted
    v = c if v > c else v
    cdef float x2 = v * v
    cdef float p = x2 * <float>-2.76076847742355e-16 + <float>2.00018790482477e-13
    p = x2 * p + <float>-8.60467152213735e-11
    p = x2 * p + <float>5.12229709037114e-08
    p = x2 * p + <float>1.48572235717979e-05
    p = x2 * p + <float>6.37261928875436e-04
    p = x2 * p + <float>4.89352455891786e-03
    p = v * p
    cdef float q = x2 * <float>1.19825839466702e-06 + <float>1.18534705686654e-04
    q = x2 * q + <float>2.26843463243900e-03
    q = x2 * q + <float>4.89352518554385e-03
    cdef float r = p / q  # unconditionally: a division in a branch blocks if-conversion
    return x if fabsf(x) < <float>0.0004 else r

# Pointer-level, nogil GEMM driver (BLIS five loops around a register-blocked
# micro-kernel), shared by the gemm wrapper and the dense layer kernels.
from cython cimport floating

# C := alpha*A·B + beta*C on raw pointers with element strides (any sign, 0
# allowed) for A (m, k) and B (k, n), C row-major with row stride ldc.
# C is not read when beta == 0. k == 0 gives C := beta*C (0 when beta == 0).
# Epilogue, applied to each micro-tile right after its last KC slice:
#   if bias != NULL: C[i, j] += bias[j];
#   if act >= 0:     out[i, :] := act(C[i, :]) (element-wise activation id; out
#                    row stride ldo, out may be C).
# Results do not depend on n_threads, bit for bit.
# Returns 0, or -1 when the packing workspace cannot be allocated.
cdef int gemm_nogil(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                    const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                    const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b,
                    floating beta, floating* c, Py_ssize_t ldc,
                    const floating* bias, int act, floating* out, Py_ssize_t ldo,
                    int n_threads) noexcept nogil

# The same product, many times with one B (a recurrent weight, at every step): pack_b_once packs
# B (k, n) whole for A of m rows into the calling thread's second workspace, or returns NULL where
# that saves nothing (B read unpacked) or memory is short; gemm_packed_b multiplies by it (by b
# through gemm_nogil when packed is NULL), with gemm_nogil's tiles and KC slices: the same bits;
# release_packed_b gives it back. No bias or activation epilogue; instead, rows_done(ctx, i0, i1)
# (when not NULL) runs on each block of rows [i0, i1) of C as soon as the block is final, on the
# thread that computed it: a recurrent step's row pass, fused into its product (blocks are whole
# MR tiles; a row's pass must depend on that row of C alone).
ctypedef void (*rows_done_fn)(void* ctx, Py_ssize_t i0, Py_ssize_t i1) noexcept nogil
cdef floating* pack_b_once(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const floating* b, Py_ssize_t rs_b,
                           Py_ssize_t cs_b) noexcept nogil
cdef void release_packed_b(floating* packed, Py_ssize_t n, Py_ssize_t k) noexcept nogil
cdef int gemm_packed_b(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, floating alpha,
                       const floating* a, Py_ssize_t rs_a, Py_ssize_t cs_a,
                       const floating* b, Py_ssize_t rs_b, Py_ssize_t cs_b, const floating* packed,
                       floating beta, floating* c, Py_ssize_t ldc, int n_threads,
                       rows_done_fn rows_done, void* ctx) noexcept nogil

# Whether the GEMM runs its AVX-512 kernels (the CPU has them and FASTBP_CYTHON_ISA allows
# them): the one ISA choice that the convolution's gather and max pooling follow too.
cdef bint isa_is_avx512() noexcept nogil

/* Register-blocked GEMM micro-kernels of fastbp's Cython backend, and the
 * runtime choice between them.
 *
 * Design: one micro-kernel per (ISA, dtype). It multiplies a packed A
 * micro-panel (kc x MR, the MR values of one k adjacent) by a packed B
 * micro-panel (kc x NR, the NR values of one k adjacent) into MR x NR
 * accumulators held in vector registers, then updates the row-major tile
 *     C[0:MR, 0:NR] := alpha*acc + beta*C      (C is not read when beta == 0)
 * C's rows hold NR columns in registers and MR values of A are broadcast.
 * The tile update is `t = alpha*acc; C = fma(beta, C, t)`: with beta == 1
 * that is the exact sum C + t. Edge tiles (fewer than MR rows or NR columns)
 * run the same full kernel on a temporary tile, so every element of C goes
 * through the same arithmetic wherever it lies.
 *
 * Every function here is compiled for baseline x86-64 (or any other CPU);
 * the AVX2/AVX-512 ones carry a target attribute and are only called after
 * fastbp_detect_isa() found the instructions (CPUID, via __builtin_cpu_supports).
 */
#ifndef FASTBP_MICROKERNELS_H
#define FASTBP_MICROKERNELS_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <time.h>

/* Monotonic wall-clock time in seconds (the GEMM's busy-machine test). */
static double fastbp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define FASTBP_ISA_GENERIC 0
#define FASTBP_ISA_AVX2 1
#define FASTBP_ISA_AVX512 2

/* Micro-tile sizes (MR, NR) compiled here; the Python side asserts they
 * equal fastbp._kernels.blocking's table. */
#define FASTBP_AVX512_MR_S 12
#define FASTBP_AVX512_NR_S 32
#define FASTBP_AVX512_MR_D 12
#define FASTBP_AVX512_NR_D 16
#define FASTBP_AVX2_MR_S 6
#define FASTBP_AVX2_NR_S 16
#define FASTBP_AVX2_MR_D 6
#define FASTBP_AVX2_NR_D 8
#define FASTBP_GENERIC_MR_S 6
#define FASTBP_GENERIC_NR_S 16
#define FASTBP_GENERIC_MR_D 6
#define FASTBP_GENERIC_NR_D 8
#define FASTBP_MAX_TILE (12 * 32)  /* largest MR*NR, the temporary edge tile */

typedef void (*fastbp_ukr_s)(ptrdiff_t kc, const float *ap, const float *bp,
                             float *c, ptrdiff_t ldc, float alpha, float beta);
typedef void (*fastbp_ukr_d)(ptrdiff_t kc, const double *ap, const double *bp,
                             double *c, ptrdiff_t ldc, double alpha, double beta);

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define FASTBP_X86 1
#include <immintrin.h>
#include "register_transpose.h"
#else
#define FASTBP_X86 0
#endif

#ifdef _OPENMP
static int fastbp_openmp(void) { return 1; }
#else
static int fastbp_openmp(void) { return 0; }
#endif

/* ------------------------------------------------------------ generic C */
/* Same tile sizes as AVX2; plain loops the compiler may vectorise. */
#define FASTBP_GENERIC_UKR(NAME, T, MR, NR)                                      \
    static void NAME(ptrdiff_t kc, const T *ap, const T *bp, T *c,               \
                     ptrdiff_t ldc, T alpha, T beta)                             \
    {                                                                            \
        T acc[MR][NR];                                                           \
        ptrdiff_t p;                                                             \
        int i, j;                                                                \
        for (i = 0; i < MR; i++)                                                 \
            for (j = 0; j < NR; j++) acc[i][j] = 0;                              \
        for (p = 0; p < kc; p++) {                                               \
            for (i = 0; i < MR; i++) {                                           \
                T a = ap[i];                                                     \
                for (j = 0; j < NR; j++) acc[i][j] += a * bp[j];                 \
            }                                                                    \
            ap += MR;                                                            \
            bp += NR;                                                            \
        }                                                                        \
        for (i = 0; i < MR; i++) {                                               \
            T *ci = c + i * ldc;                                                 \
            if (beta == 0) {                                                     \
                for (j = 0; j < NR; j++) ci[j] = alpha * acc[i][j];              \
            } else {                                                             \
                for (j = 0; j < NR; j++) ci[j] = beta * ci[j] + alpha * acc[i][j]; \
            }                                                                    \
        }                                                                        \
    }

FASTBP_GENERIC_UKR(fastbp_ukr_s_generic, float, FASTBP_GENERIC_MR_S, FASTBP_GENERIC_NR_S)
FASTBP_GENERIC_UKR(fastbp_ukr_d_generic, double, FASTBP_GENERIC_MR_D, FASTBP_GENERIC_NR_D)

#if FASTBP_X86
#define FASTBP_TARGET_AVX512 __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma")))
#define FASTBP_TARGET_AVX2 __attribute__((target("avx2,fma")))

/* ------------------------------------------------------------ AVX-512 */
/* Row i of the tile is two zmm registers c<i>0, c<i>1 (float32: 2x16
 * columns; float64: 2x8). 24 accumulators + 2 B loads + 1 broadcast. */
#define FASTBP_ROWS12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define FASTBP_ROWS6(X) X(0) X(1) X(2) X(3) X(4) X(5)

FASTBP_TARGET_AVX512 static void
fastbp_ukr_s_avx512(ptrdiff_t kc, const float *ap, const float *bp, float *c,
                    ptrdiff_t ldc, float alpha, float beta)
{
#define DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
    FASTBP_ROWS12(DECL)
#undef DECL
#define PREFETCH_C(i) _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0); \
    _mm_prefetch((const char *)(c + i * ldc + 31), _MM_HINT_T0);
    FASTBP_ROWS12(PREFETCH_C)
#undef PREFETCH_C
    ptrdiff_t p;
    for (p = 0; p < kc; p++) {
        __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16), a;
        _mm_prefetch((const char *)(bp + 8 * 32), _MM_HINT_T0);
#define STEP(i) a = _mm512_set1_ps(ap[i]); \
        c##i##0 = _mm512_fmadd_ps(a, b0, c##i##0); c##i##1 = _mm512_fmadd_ps(a, b1, c##i##1);
        FASTBP_ROWS12(STEP)
#undef STEP
        ap += 12;
        bp += 32;
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    if (beta == 0.0f) {
#define STORE(i) _mm512_storeu_ps(c + i * ldc, _mm512_mul_ps(va, c##i##0)); \
        _mm512_storeu_ps(c + i * ldc + 16, _mm512_mul_ps(va, c##i##1));
        FASTBP_ROWS12(STORE)
#undef STORE
    } else {
#define STORE(i) _mm512_storeu_ps(c + i * ldc, _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + i * ldc), _mm512_mul_ps(va, c##i##0))); \
        _mm512_storeu_ps(c + i * ldc + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + i * ldc + 16), _mm512_mul_ps(va, c##i##1)));
        FASTBP_ROWS12(STORE)
#undef STORE
    }
}

FASTBP_TARGET_AVX512 static void
fastbp_ukr_d_avx512(ptrdiff_t kc, const double *ap, const double *bp, double *c,
                    ptrdiff_t ldc, double alpha, double beta)
{
#define DECL(i) __m512d c##i##0 = _mm512_setzero_pd(), c##i##1 = _mm512_setzero_pd();
    FASTBP_ROWS12(DECL)
#undef DECL
#define PREFETCH_C(i) _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0); \
    _mm_prefetch((const char *)(c + i * ldc + 15), _MM_HINT_T0);
    FASTBP_ROWS12(PREFETCH_C)
#undef PREFETCH_C
    ptrdiff_t p;
    for (p = 0; p < kc; p++) {
        __m512d b0 = _mm512_loadu_pd(bp), b1 = _mm512_loadu_pd(bp + 8), a;
        _mm_prefetch((const char *)(bp + 8 * 16), _MM_HINT_T0);
#define STEP(i) a = _mm512_set1_pd(ap[i]); \
        c##i##0 = _mm512_fmadd_pd(a, b0, c##i##0); c##i##1 = _mm512_fmadd_pd(a, b1, c##i##1);
        FASTBP_ROWS12(STEP)
#undef STEP
        ap += 12;
        bp += 16;
    }
    __m512d va = _mm512_set1_pd(alpha), vb = _mm512_set1_pd(beta);
    if (beta == 0.0) {
#define STORE(i) _mm512_storeu_pd(c + i * ldc, _mm512_mul_pd(va, c##i##0)); \
        _mm512_storeu_pd(c + i * ldc + 8, _mm512_mul_pd(va, c##i##1));
        FASTBP_ROWS12(STORE)
#undef STORE
    } else {
#define STORE(i) _mm512_storeu_pd(c + i * ldc, _mm512_fmadd_pd(vb, _mm512_loadu_pd(c + i * ldc), _mm512_mul_pd(va, c##i##0))); \
        _mm512_storeu_pd(c + i * ldc + 8, _mm512_fmadd_pd(vb, _mm512_loadu_pd(c + i * ldc + 8), _mm512_mul_pd(va, c##i##1)));
        FASTBP_ROWS12(STORE)
#undef STORE
    }
}

/* Short tiles: the first ROWS (4 or 8) rows of a 12-row packed A micro-panel
 * (stride 12), for the last tile of an m that is not a multiple of MR (batch
 * 64 is 5 x 12 + 4; 32 is 2 x 12 + 8): each element gets the 12-row kernel's
 * arithmetic (fma over p from 0, then alpha*acc [+ beta*C]), hence its bits,
 * for a third or two thirds of the work the full kernel spends on the tile.
 * The constant-bound row loops unroll, the accumulators stay in registers. */
#define FASTBP_SHORT_UKR(NAME, T, V, LANES, ROWS, ZERO, LOAD, SET1, FMA, MUL, STORE)   \
FASTBP_TARGET_AVX512 static void                                                       \
NAME(ptrdiff_t kc, const T *ap, const T *bp, T *c, ptrdiff_t ldc, T alpha, T beta)      \
{                                                                                      \
    V c0[ROWS], c1[ROWS], va = SET1(alpha), vb = SET1(beta);                           \
    ptrdiff_t p;                                                                       \
    int i;                                                                             \
    for (i = 0; i < ROWS; i++) { c0[i] = ZERO(); c1[i] = ZERO(); }                     \
    for (p = 0; p < kc; p++) {                                                         \
        V b0 = LOAD(bp), b1 = LOAD(bp + LANES);                                        \
        for (i = 0; i < ROWS; i++) {                                                   \
            V a = SET1(ap[i]);                                                         \
            c0[i] = FMA(a, b0, c0[i]);                                                 \
            c1[i] = FMA(a, b1, c1[i]);                                                 \
        }                                                                              \
        ap += 12;                                                                      \
        bp += 2 * LANES;                                                               \
    }                                                                                  \
    for (i = 0; i < ROWS; i++) {                                                       \
        if (beta == 0) {                                                               \
            STORE(c + i * ldc, MUL(va, c0[i]));                                        \
            STORE(c + i * ldc + LANES, MUL(va, c1[i]));                                \
        } else {                                                                       \
            STORE(c + i * ldc, FMA(vb, LOAD(c + i * ldc), MUL(va, c0[i])));            \
            STORE(c + i * ldc + LANES, FMA(vb, LOAD(c + i * ldc + LANES), MUL(va, c1[i]))); \
        }                                                                              \
    }                                                                                  \
}
FASTBP_SHORT_UKR(fastbp_ukr4_s_avx512, float, __m512, 16, 4, _mm512_setzero_ps, _mm512_loadu_ps,
                 _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_storeu_ps)
FASTBP_SHORT_UKR(fastbp_ukr8_s_avx512, float, __m512, 16, 8, _mm512_setzero_ps, _mm512_loadu_ps,
                 _mm512_set1_ps, _mm512_fmadd_ps, _mm512_mul_ps, _mm512_storeu_ps)
FASTBP_SHORT_UKR(fastbp_ukr4_d_avx512, double, __m512d, 8, 4, _mm512_setzero_pd, _mm512_loadu_pd,
                 _mm512_set1_pd, _mm512_fmadd_pd, _mm512_mul_pd, _mm512_storeu_pd)
FASTBP_SHORT_UKR(fastbp_ukr8_d_avx512, double, __m512d, 8, 8, _mm512_setzero_pd, _mm512_loadu_pd,
                 _mm512_set1_pd, _mm512_fmadd_pd, _mm512_mul_pd, _mm512_storeu_pd)

/* ------------------------------------------------------------ AVX-512, unpacked */
/* Small float32 products read A and B where they lie, without packing: below
 * about a million multiply-adds, packing both operands costs as much as the
 * arithmetic (32x64x32: 4.3 us packed). B must have unit column stride (its
 * rows are loaded as vectors, the last one masked); A has any strides (its
 * values are broadcast one by one). Tiles are 12 rows by 32 (or, for a last
 * column block of at most 16, 16) columns; rows past m re-read row 0 of the
 * tile and are not stored. Each element's arithmetic is the packed kernel's
 * for kc = k (acc = fma over p in order from 0, then alpha*acc [+ beta*C]), so
 * for k <= KC both paths give the same bits. */
/* alpha and beta are only needed after the k loop, but gcc 12 keeps them in
 * vector registers across it, and with 24 accumulators, two B vectors and the
 * broadcast that spills B's second vector: every other FMA then reads it from
 * the stack (a 12x32 tile over k = 432: 99 instead of 160 GFLOP/s on Sapphire
 * Rapids). Parking them in volatile locals sends them through memory. */
#define FASTBP_SCALARS_AT_END volatile float alpha_at_end = alpha, beta_at_end = beta;
#define FASTBP_DIRECT_TILE(NAME, NV)                                                        \
FASTBP_TARGET_AVX512 static void                                                           \
NAME(ptrdiff_t mr, ptrdiff_t k, const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a,             \
     const float *b, ptrdiff_t rs_b, __mmask16 m0, __mmask16 m1,                            \
     float *c, ptrdiff_t ldc, float alpha, float beta)                                      \
{                                                                                           \
    const float *r[12];                                                                     \
    FASTBP_SCALARS_AT_END                                                                   \
    int i;                                                                                  \
    for (i = 0; i < 12; i++) r[i] = a + (i < mr ? i : 0) * rs_a;                            \
    FASTBP_DIRECT_DECL##NV                                                                  \
    ptrdiff_t p;                                                                            \
    for (p = 0; p < k; p++) {                                                               \
        const ptrdiff_t o = p * cs_a;                                                       \
        __m512 va;                                                                          \
        FASTBP_DIRECT_LOADB##NV                                                             \
        FASTBP_ROWS12(FASTBP_DIRECT_STEP##NV)                                               \
        b += rs_b;                                                                          \
    }                                                                                       \
    alpha = alpha_at_end, beta = beta_at_end;                                               \
    __m512 valpha = _mm512_set1_ps(alpha), vbeta = _mm512_set1_ps(beta);                    \
    FASTBP_ROWS12(FASTBP_DIRECT_STORE##NV)                                                  \
}
#define FASTBP_DIRECT_DECL1 __m512 FASTBP_ROWS12(FASTBP_DIRECT_ZERO1) dummy1_ = _mm512_setzero_ps(); (void)dummy1_;
#define FASTBP_DIRECT_DECL2 __m512 FASTBP_ROWS12(FASTBP_DIRECT_ZERO2) dummy2_ = _mm512_setzero_ps(); (void)dummy2_;
#define FASTBP_DIRECT_ZERO1(i) c##i##0 = _mm512_setzero_ps(),
#define FASTBP_DIRECT_ZERO2(i) c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps(),
#define FASTBP_DIRECT_LOADB1 __m512 b0 = _mm512_maskz_loadu_ps(m0, b);
#define FASTBP_DIRECT_LOADB2 __m512 b0 = _mm512_maskz_loadu_ps(m0, b), b1 = _mm512_maskz_loadu_ps(m1, b + 16);
#define FASTBP_DIRECT_STEP1(i) va = _mm512_set1_ps(r[i][o]); c##i##0 = _mm512_fmadd_ps(va, b0, c##i##0);
#define FASTBP_DIRECT_STEP2(i) va = _mm512_set1_ps(r[i][o]); c##i##0 = _mm512_fmadd_ps(va, b0, c##i##0); \
    c##i##1 = _mm512_fmadd_ps(va, b1, c##i##1);
#define FASTBP_DIRECT_OUT(i, h, mask)                                                       \
    if (beta == 0.0f)                                                                       \
        _mm512_mask_storeu_ps(c + i * ldc + 16 * h, mask, _mm512_mul_ps(valpha, c##i##h));  \
    else                                                                                    \
        _mm512_mask_storeu_ps(c + i * ldc + 16 * h, mask, _mm512_fmadd_ps(                  \
            vbeta, _mm512_maskz_loadu_ps(mask, c + i * ldc + 16 * h), _mm512_mul_ps(valpha, c##i##h)));
#define FASTBP_DIRECT_STORE1(i) if (i < mr) { FASTBP_DIRECT_OUT(i, 0, m0) }
#define FASTBP_DIRECT_STORE2(i) if (i < mr) { FASTBP_DIRECT_OUT(i, 0, m0) FASTBP_DIRECT_OUT(i, 1, m1) }

FASTBP_DIRECT_TILE(fastbp_direct_tile16_s_avx512, 1)
FASTBP_DIRECT_TILE(fastbp_direct_tile32_s_avx512, 2)

/* C[0:m, 0:n] := alpha*A·B + beta*C (C not read when beta == 0), unpacked.
 * A (m, k) with element strides rs_a, cs_a; B (k, n) with row stride rs_b and
 * unit column stride; C row-major with row stride ldc. Serial. */
FASTBP_TARGET_AVX512 static void
fastbp_direct_s_avx512(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                       const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                       const float *b, ptrdiff_t rs_b, float beta, float *c, ptrdiff_t ldc)
{
    ptrdiff_t i, j, w, mr;
    for (j = 0; j < n; j += 32) {
        w = n - j < 32 ? n - j : 32;
        __mmask16 m0 = (__mmask16)(w >= 16 ? 0xFFFF : (1u << w) - 1);
        __mmask16 m1 = (__mmask16)(w >= 32 ? 0xFFFF : w > 16 ? (1u << (w - 16)) - 1 : 0);
        for (i = 0; i < m; i += 12) {
            mr = m - i < 12 ? m - i : 12;
            if (w <= 16)
                fastbp_direct_tile16_s_avx512(mr, k, a + i * rs_a, rs_a, cs_a, b + j, rs_b, m0, m1,
                                              c + i * ldc + j, ldc, alpha, beta);
            else
                fastbp_direct_tile32_s_avx512(mr, k, a + i * rs_a, rs_a, cs_a, b + j, rs_b, m0, m1,
                                              c + i * ldc + j, ldc, alpha, beta);
        }
    }
}

/* ------------------------------------------------------------ AVX-512 packing */
/* Transposing copy for the packing routines: dst[p*ld + i] := src[i*rs + p]
 * for i < rows (<= 16) and p < kc, lanes rows..nw-1 zero, nw <= 16 lanes
 * stored per p. 16x16 blocks are transposed in registers
 * (register_transpose.h), so a row-major A (or a column-major
 * B) is packed with vector loads and stores instead of one scalar store per
 * value (pack_a was ~9% of a 784-256-128-10 training step). Values are only
 * moved, so the packed panels are the same as the scalar loops'. */
FASTBP_TARGET_AVX512 static void
fastbp_pack_transpose_s_avx512(const float *src, ptrdiff_t rs, int rows, ptrdiff_t kc,
                               float *dst, ptrdiff_t ld, int nw)
{
    const __mmask16 store = (__mmask16)(nw >= 16 ? 0xFFFF : (1u << nw) - 1);
    __m512 r[16];
    ptrdiff_t p;
    int i, q;
    for (p = 0; p < kc; p += 16) {
        const int width = kc - p < 16 ? (int)(kc - p) : 16;
        const __mmask16 load = (__mmask16)(width == 16 ? 0xFFFF : (1u << width) - 1);
        for (i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(load, src + i * rs + p) : _mm512_setzero_ps();
        fastbp_transpose16_s_avx512(r);
        for (q = 0; q < width; q++)
            _mm512_mask_storeu_ps(dst + (p + q) * ld, store, r[q]);
    }
}

/* ------------------------------------------------------------ AVX2 + FMA */
/* Row i is two ymm registers: 12 accumulators, 6x16 floats or 6x8 doubles. */
FASTBP_TARGET_AVX2 static void
fastbp_ukr_s_avx2(ptrdiff_t kc, const float *ap, const float *bp, float *c,
                  ptrdiff_t ldc, float alpha, float beta)
{
#define DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
    FASTBP_ROWS6(DECL)
#undef DECL
    ptrdiff_t p;
    for (p = 0; p < kc; p++) {
        __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8), a;
#define STEP(i) a = _mm256_broadcast_ss(ap + i); \
        c##i##0 = _mm256_fmadd_ps(a, b0, c##i##0); c##i##1 = _mm256_fmadd_ps(a, b1, c##i##1);
        FASTBP_ROWS6(STEP)
#undef STEP
        ap += 6;
        bp += 16;
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (beta == 0.0f) {
#define STORE(i) _mm256_storeu_ps(c + i * ldc, _mm256_mul_ps(va, c##i##0)); \
        _mm256_storeu_ps(c + i * ldc + 8, _mm256_mul_ps(va, c##i##1));
        FASTBP_ROWS6(STORE)
#undef STORE
    } else {
#define STORE(i) _mm256_storeu_ps(c + i * ldc, _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + i * ldc), _mm256_mul_ps(va, c##i##0))); \
        _mm256_storeu_ps(c + i * ldc + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + i * ldc + 8), _mm256_mul_ps(va, c##i##1)));
        FASTBP_ROWS6(STORE)
#undef STORE
    }
}

FASTBP_TARGET_AVX2 static void
fastbp_ukr_d_avx2(ptrdiff_t kc, const double *ap, const double *bp, double *c,
                  ptrdiff_t ldc, double alpha, double beta)
{
#define DECL(i) __m256d c##i##0 = _mm256_setzero_pd(), c##i##1 = _mm256_setzero_pd();
    FASTBP_ROWS6(DECL)
#undef DECL
    ptrdiff_t p;
    for (p = 0; p < kc; p++) {
        __m256d b0 = _mm256_loadu_pd(bp), b1 = _mm256_loadu_pd(bp + 4), a;
#define STEP(i) a = _mm256_broadcast_sd(ap + i); \
        c##i##0 = _mm256_fmadd_pd(a, b0, c##i##0); c##i##1 = _mm256_fmadd_pd(a, b1, c##i##1);
        FASTBP_ROWS6(STEP)
#undef STEP
        ap += 6;
        bp += 8;
    }
    __m256d va = _mm256_set1_pd(alpha), vb = _mm256_set1_pd(beta);
    if (beta == 0.0) {
#define STORE(i) _mm256_storeu_pd(c + i * ldc, _mm256_mul_pd(va, c##i##0)); \
        _mm256_storeu_pd(c + i * ldc + 4, _mm256_mul_pd(va, c##i##1));
        FASTBP_ROWS6(STORE)
#undef STORE
    } else {
#define STORE(i) _mm256_storeu_pd(c + i * ldc, _mm256_fmadd_pd(vb, _mm256_loadu_pd(c + i * ldc), _mm256_mul_pd(va, c##i##0))); \
        _mm256_storeu_pd(c + i * ldc + 4, _mm256_fmadd_pd(vb, _mm256_loadu_pd(c + i * ldc + 4), _mm256_mul_pd(va, c##i##1)));
        FASTBP_ROWS6(STORE)
#undef STORE
    }
}
/* ------------------------------------------------------------ AVX2, unpacked */
/* The AVX-512 unpacked path's twin for AVX2: tiles of 6 rows by 16 (or, for a
 * last column block of at most 8, 8) columns, the packed 6x16 kernel's
 * arithmetic (fma over p in order from 0, then alpha*acc [+ beta*C]), so the
 * same bits; masks are lanes of -1 for _mm256_maskload_ps/maskstore_ps. */
#define FASTBP_DIRECT2_TILE(NAME, NV)                                                       \
FASTBP_TARGET_AVX2 static void                                                             \
NAME(ptrdiff_t mr, ptrdiff_t k, const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a,             \
     const float *b, ptrdiff_t rs_b, __m256i m0, __m256i m1,                                \
     float *c, ptrdiff_t ldc, float alpha, float beta)                                      \
{                                                                                           \
    const float *r[6];                                                                      \
    FASTBP_SCALARS_AT_END                                                                   \
    int i;                                                                                  \
    for (i = 0; i < 6; i++) r[i] = a + (i < mr ? i : 0) * rs_a;                             \
    FASTBP_DIRECT2_DECL##NV                                                                 \
    ptrdiff_t p;                                                                            \
    for (p = 0; p < k; p++) {                                                               \
        const ptrdiff_t o = p * cs_a;                                                       \
        __m256 va;                                                                          \
        FASTBP_DIRECT2_LOADB##NV                                                            \
        FASTBP_ROWS6(FASTBP_DIRECT2_STEP##NV)                                               \
        b += rs_b;                                                                          \
    }                                                                                       \
    alpha = alpha_at_end, beta = beta_at_end;                                               \
    __m256 valpha = _mm256_set1_ps(alpha), vbeta = _mm256_set1_ps(beta);                    \
    FASTBP_ROWS6(FASTBP_DIRECT2_STORE##NV)                                                  \
}
#define FASTBP_DIRECT2_DECL1 __m256 FASTBP_ROWS6(FASTBP_DIRECT2_ZERO1) dummy1_ = _mm256_setzero_ps(); (void)dummy1_;
#define FASTBP_DIRECT2_DECL2 __m256 FASTBP_ROWS6(FASTBP_DIRECT2_ZERO2) dummy2_ = _mm256_setzero_ps(); (void)dummy2_;
#define FASTBP_DIRECT2_ZERO1(i) c##i##0 = _mm256_setzero_ps(),
#define FASTBP_DIRECT2_ZERO2(i) c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps(),
#define FASTBP_DIRECT2_LOADB1 __m256 b0 = _mm256_maskload_ps(b, m0);
#define FASTBP_DIRECT2_LOADB2 __m256 b0 = _mm256_maskload_ps(b, m0), b1 = _mm256_maskload_ps(b + 8, m1);
#define FASTBP_DIRECT2_STEP1(i) va = _mm256_set1_ps(r[i][o]); c##i##0 = _mm256_fmadd_ps(va, b0, c##i##0);
#define FASTBP_DIRECT2_STEP2(i) va = _mm256_set1_ps(r[i][o]); c##i##0 = _mm256_fmadd_ps(va, b0, c##i##0); \
    c##i##1 = _mm256_fmadd_ps(va, b1, c##i##1);
#define FASTBP_DIRECT2_OUT(i, h, mask)                                                      \
    if (beta == 0.0f)                                                                       \
        _mm256_maskstore_ps(c + i * ldc + 8 * h, mask, _mm256_mul_ps(valpha, c##i##h));     \
    else                                                                                    \
        _mm256_maskstore_ps(c + i * ldc + 8 * h, mask, _mm256_fmadd_ps(                     \
            vbeta, _mm256_maskload_ps(c + i * ldc + 8 * h, mask), _mm256_mul_ps(valpha, c##i##h)));
#define FASTBP_DIRECT2_STORE1(i) if (i < mr) { FASTBP_DIRECT2_OUT(i, 0, m0) }
#define FASTBP_DIRECT2_STORE2(i) if (i < mr) { FASTBP_DIRECT2_OUT(i, 0, m0) FASTBP_DIRECT2_OUT(i, 1, m1) }

FASTBP_DIRECT2_TILE(fastbp_direct_tile8_s_avx2, 1)
FASTBP_DIRECT2_TILE(fastbp_direct_tile16_s_avx2, 2)

/* Lanes 0..w-1 set (w clamped to [0, 8]), as a maskload/maskstore mask. */
FASTBP_TARGET_AVX2 static inline __m256i fastbp_lanes_avx2(ptrdiff_t w)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(w < 0 ? 0 : w > 8 ? 8 : w)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* fastbp_direct_s_avx512's contract, on 6 x 16 tiles. */
FASTBP_TARGET_AVX2 static void
fastbp_direct_s_avx2(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                     const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                     const float *b, ptrdiff_t rs_b, float beta, float *c, ptrdiff_t ldc)
{
    ptrdiff_t i, j, w, mr;
    for (j = 0; j < n; j += 16) {
        w = n - j < 16 ? n - j : 16;
        __m256i m0 = fastbp_lanes_avx2(w), m1 = fastbp_lanes_avx2(w - 8);
        for (i = 0; i < m; i += 6) {
            mr = m - i < 6 ? m - i : 6;
            if (w <= 8)
                fastbp_direct_tile8_s_avx2(mr, k, a + i * rs_a, rs_a, cs_a, b + j, rs_b, m0, m1,
                                           c + i * ldc + j, ldc, alpha, beta);
            else
                fastbp_direct_tile16_s_avx2(mr, k, a + i * rs_a, rs_a, cs_a, b + j, rs_b, m0, m1,
                                            c + i * ldc + j, ldc, alpha, beta);
        }
    }
}

/* ------------------------------------------------------------ AVX2 packing */
/* fastbp_pack_transpose_s_avx512's contract for rows <= 8 and nw <= 8, with
 * 8x8 register transposes (unpack 32-bit, shuffle 64-bit, 128-bit permutes). */
FASTBP_TARGET_AVX2 static void
fastbp_pack_transpose8_s_avx2(const float *src, ptrdiff_t rs, int rows, ptrdiff_t kc,
                              float *dst, ptrdiff_t ld, int nw)
{
    const __m256i store = fastbp_lanes_avx2(nw);
    __m256 r[8], t[8], u[8];
    ptrdiff_t p;
    int i, q;
    for (p = 0; p < kc; p += 8) {
        const int width = kc - p < 8 ? (int)(kc - p) : 8;
        const __m256i load = fastbp_lanes_avx2(width);
        for (i = 0; i < 8; i++)
            r[i] = i < rows ? _mm256_maskload_ps(src + i * rs + p, load) : _mm256_setzero_ps();
        for (i = 0; i < 8; i += 2) {
            t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
            t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
        }
        for (i = 0; i < 8; i += 4) {  /* u[i + c]: columns c and c + 4 of rows i..i+3 */
            u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
            u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
            u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
            u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
        }
        for (i = 0; i < 4; i++) {
            r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
            r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
        }
        for (q = 0; q < width; q++)
            _mm256_maskstore_ps(dst + (p + q) * ld, store, r[q]);
    }
}

/* fastbp_pack_transpose_s_avx512's contract (rows, nw <= 16), in groups of 8 lanes. */
FASTBP_TARGET_AVX2 static void
fastbp_pack_transpose_s_avx2(const float *src, ptrdiff_t rs, int rows, ptrdiff_t kc,
                             float *dst, ptrdiff_t ld, int nw)
{
    int g;
    for (g = 0; g < nw; g += 8)
        fastbp_pack_transpose8_s_avx2(src + g * rs, rs, rows - g < 0 ? 0 : rows - g > 8 ? 8 : rows - g,
                                      kc, dst + g, ld, nw - g < 8 ? nw - g : 8);
}
#endif /* FASTBP_X86 */

/* ------------------------------------------------------------ dispatch */
/* The unpacked float32 product when isa has one (AVX-512, AVX2): returns 1 when
 * it computed C, 0 when the caller must take the packed path. */
static int fastbp_direct_s(int isa, ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, float alpha,
                           const float *a, ptrdiff_t rs_a, ptrdiff_t cs_a,
                           const float *b, ptrdiff_t rs_b, float beta, float *c, ptrdiff_t ldc)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512) {
        fastbp_direct_s_avx512(m, n, k, alpha, a, rs_a, cs_a, b, rs_b, beta, c, ldc);
        return 1;
    }
    if (isa == FASTBP_ISA_AVX2) {
        fastbp_direct_s_avx2(m, n, k, alpha, a, rs_a, cs_a, b, rs_b, beta, c, ldc);
        return 1;
    }
#endif
    (void)isa; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)rs_a; (void)cs_a;
    (void)b; (void)rs_b; (void)beta; (void)c; (void)ldc;
    return 0;
}

/* The best ISA this CPU (and OS) supports. */
static int fastbp_detect_isa(void)
{
#if FASTBP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("fma"))
        return FASTBP_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return FASTBP_ISA_AVX2;
#endif
    return FASTBP_ISA_GENERIC;
}

/* MR, NR of the micro-kernel for isa and dtype (double_ != 0 for float64). */
static void fastbp_tile(int isa, int double_, int *mr, int *nr)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512) {
        *mr = double_ ? FASTBP_AVX512_MR_D : FASTBP_AVX512_MR_S;
        *nr = double_ ? FASTBP_AVX512_NR_D : FASTBP_AVX512_NR_S;
        return;
    }
    if (isa == FASTBP_ISA_AVX2) {
        *mr = double_ ? FASTBP_AVX2_MR_D : FASTBP_AVX2_MR_S;
        *nr = double_ ? FASTBP_AVX2_NR_D : FASTBP_AVX2_NR_S;
        return;
    }
#endif
    *mr = double_ ? FASTBP_GENERIC_MR_D : FASTBP_GENERIC_MR_S;
    *nr = double_ ? FASTBP_GENERIC_NR_D : FASTBP_GENERIC_NR_S;
}

/* The transposing copy when isa has one (AVX-512, AVX2): returns 1 when it
 * packed, 0 when the caller must run its scalar loop. */
static int fastbp_pack_transpose_s(int isa, const float *src, ptrdiff_t rs, int rows, ptrdiff_t kc,
                                   float *dst, ptrdiff_t ld, int nw)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512) {
        fastbp_pack_transpose_s_avx512(src, rs, rows, kc, dst, ld, nw);
        return 1;
    }
    if (isa == FASTBP_ISA_AVX2) {
        fastbp_pack_transpose_s_avx2(src, rs, rows, kc, dst, ld, nw);
        return 1;
    }
#endif
    (void)isa; (void)src; (void)rs; (void)rows; (void)kc; (void)dst; (void)ld; (void)nw;
    return 0;
}

static fastbp_ukr_s fastbp_select_ukr_s(int isa)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512) return fastbp_ukr_s_avx512;
    if (isa == FASTBP_ISA_AVX2) return fastbp_ukr_s_avx2;
#endif
    (void)isa;
    return fastbp_ukr_s_generic;
}

/* The short-tile kernel for the first `rows` rows of a tile (see FASTBP_SHORT_UKR),
 * or NULL: then the full kernel runs on a temporary tile. */
static fastbp_ukr_s fastbp_select_short_ukr_s(int isa, int rows)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512 && rows <= 4) return fastbp_ukr4_s_avx512;
    if (isa == FASTBP_ISA_AVX512 && rows <= 8) return fastbp_ukr8_s_avx512;
#endif
    (void)isa; (void)rows;
    return NULL;
}

static fastbp_ukr_d fastbp_select_short_ukr_d(int isa, int rows)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512 && rows <= 4) return fastbp_ukr4_d_avx512;
    if (isa == FASTBP_ISA_AVX512 && rows <= 8) return fastbp_ukr8_d_avx512;
#endif
    (void)isa; (void)rows;
    return NULL;
}

static fastbp_ukr_d fastbp_select_ukr_d(int isa)
{
#if FASTBP_X86
    if (isa == FASTBP_ISA_AVX512) return fastbp_ukr_d_avx512;
    if (isa == FASTBP_ISA_AVX2) return fastbp_ukr_d_avx2;
#endif
    (void)isa;
    return fastbp_ukr_d_generic;
}

/* Edge tile: C[0:mr, 0:nr] through the full MR x NR kernel on a temporary
 * tile, so the arithmetic is that of an interior tile. */
#define FASTBP_EDGE(NAME, T, UKR_T)                                              \
    static void NAME(UKR_T ukr, int MR, int NR, int mr, int nr, ptrdiff_t kc,    \
                     const T *ap, const T *bp, T *c, ptrdiff_t ldc, T alpha,     \
                     T beta)                                                     \
    {                                                                            \
        T tile[FASTBP_MAX_TILE];                                                 \
        int i, j;                                                                \
        if (beta != 0) {                                                         \
            for (i = 0; i < mr; i++)                                             \
                for (j = 0; j < nr; j++) tile[i * NR + j] = c[i * ldc + j];      \
        }                                                                        \
        ukr(kc, ap, bp, tile, NR, alpha, beta);                                  \
        for (i = 0; i < mr; i++)                                                 \
            for (j = 0; j < nr; j++) c[i * ldc + j] = tile[i * NR + j];          \
    }

FASTBP_EDGE(fastbp_edge_s, float, fastbp_ukr_s)
FASTBP_EDGE(fastbp_edge_d, double, fastbp_ukr_d)

/* The GEMM's packing workspace, one per calling thread, grown on demand and
 * kept: after the first call of a given size a GEMM allocates nothing (a
 * malloc/free pair per call cost ~1 us at small sizes). A buffer over
 * FASTBP_WORKSPACE_KEEP bytes is not kept: fastbp_workspace_release frees it.
 * See thread_workspace.h. */
#include "thread_workspace.h"
#define FASTBP_WORKSPACE_KEEP ((size_t)64 << 20)
FASTBP_THREAD_WORKSPACE(fastbp_workspace, FASTBP_WORKSPACE_KEEP)
/* A second buffer per calling thread: a B packed once and multiplied many
 * times (a recurrent weight, at every step of a sequence) while the GEMM's own
 * workspace holds the A blocks of each product. */
FASTBP_THREAD_WORKSPACE(fastbp_packed_b_workspace, FASTBP_WORKSPACE_KEEP)

/* Whether any of n floats/doubles (given as their bits) is NaN or infinite:
 * (bits & exponent mask) + the exponent's lowest bit carries into the sign
 * bit exactly when the exponent is all ones; OR-ed over the array with no
 * early exit, so the loop vectorises. The AVX2 clone reads 2-4x more per cycle
 * than the baseline SSE2 build; the result is the same on every path. */
#include <stdint.h>
#define FASTBP_NONFINITE(NAME, UINT, EXP, LOW, SIGN, ATTR)                        \
    ATTR static int NAME(const UINT *bits, ptrdiff_t n)                          \
    {                                                                            \
        UINT acc = 0;                                                            \
        ptrdiff_t i;                                                             \
        for (i = 0; i < n; i++) acc |= (bits[i] & EXP) + LOW;                    \
        return (acc & SIGN) != 0;                                                \
    }
FASTBP_NONFINITE(fastbp_nonfinite_s_base, uint32_t, 0x7f800000u, 0x00800000u, 0x80000000u, )
FASTBP_NONFINITE(fastbp_nonfinite_d_base, uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull,
                 0x8000000000000000ull, )
#if FASTBP_X86
FASTBP_NONFINITE(fastbp_nonfinite_s_avx2, uint32_t, 0x7f800000u, 0x00800000u, 0x80000000u,
                 __attribute__((target("avx2"))))
FASTBP_NONFINITE(fastbp_nonfinite_d_avx2, uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull,
                 0x8000000000000000ull, __attribute__((target("avx2"))))
#endif

static int fastbp_has_avx2(void)
{
#if FASTBP_X86
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") ? 1 : 0;
    }
    return known;
#else
    return 0;
#endif
}

static int fastbp_nonfinite_s(const float *x, ptrdiff_t n)
{
#if FASTBP_X86
    if (fastbp_has_avx2()) return fastbp_nonfinite_s_avx2((const uint32_t *)x, n);
#endif
    return fastbp_nonfinite_s_base((const uint32_t *)x, n);
}

static int fastbp_nonfinite_d(const double *x, ptrdiff_t n)
{
#if FASTBP_X86
    if (fastbp_has_avx2()) return fastbp_nonfinite_d_avx2((const uint64_t *)x, n);
#endif
    return fastbp_nonfinite_d_base((const uint64_t *)x, n);
}

#endif /* FASTBP_MICROKERNELS_H */

/* The convolution's image-to-column gather: output pixels' receptive fields,
 * row after row, into a block of the GEMM's A.
 *
 * In C, not Cython, for three things: the geometry in registers (through a
 * struct pointer gcc reloaded it after every store), restrict pointers, and
 * copies of the short runs of few-channel images as one masked AVX-512 load
 * and store (memcpy's call, or a loop with its alias checks, cost more than
 * the copy: LeNet's first layer, one channel and a 5x5 kernel, copies runs of
 * 5 values, and the gather took 2.6x the GEMM's time). */
#ifndef FASTBP_CONV_GATHER_H
#define FASTBP_CONV_GATHER_H
#include <stddef.h>
#include <string.h>
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#include "register_transpose.h"
#define FASTBP_GATHER_AVX512 1
#else
#define FASTBP_GATHER_AVX512 0
#endif

/* A convolution's shape: images (n, h, w, c), kernel (kh, kw), outputs
 * (out_h, out_w), strides, top/left padding, dilations. */
typedef struct {
    ptrdiff_t h, w, c, kh, kw, out_h, out_w, sh, sw, pt, pl, dh, dw;
} fastbp_conv_shape;

static inline void fastbp_copy_values_s(float *restrict d, const float *restrict s, ptrdiff_t n,
                                        const float *end)
{
    (void)end;
    memcpy(d, s, (size_t)n * sizeof(float));
}
static inline void fastbp_copy_values_d(double *restrict d, const double *restrict s, ptrdiff_t n,
                                        const double *end)
{
    (void)end;
    memcpy(d, s, (size_t)n * sizeof(double));
}
static inline void fastbp_zero_values_s(float *d, ptrdiff_t n, const float *end)
{
    (void)end;
    memset(d, 0, (size_t)n * sizeof(float));
}
static inline void fastbp_zero_values_d(double *d, ptrdiff_t n, const double *end)
{
    (void)end;
    memset(d, 0, (size_t)n * sizeof(double));
}

#if FASTBP_GATHER_AVX512
#define FASTBP_GATHER_TARGET __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw")))
/* Copies and zeros of n values at d, on AVX-512. A vector stored whole may run
 * past the n values, up to ``end`` (the end of the rows this call writes): the
 * gather writes in increasing order, so what it overwrote is written again
 * after; only a store that would cross ``end`` is masked. Zen 4 takes a
 * masked store several times slower than a whole one (LeNet's first layer:
 * 37% of the gather's time in its masked stores), and runs of up to 8 float32
 * values are stored as 256-bit vectors, which cross fewer cache lines (the
 * gather's time -23%). Loads stay masked: they must not read past the image. */
FASTBP_GATHER_TARGET static inline void
fastbp_copy_values_avx512_s(float *restrict d, const float *restrict s, ptrdiff_t n, const float *end)
{
    if (n <= 8) {  /* a 256-bit store crosses fewer cache lines than a 512-bit one */
        const __mmask8 m = (__mmask8)((1u << n) - 1);
        const __m256 v = _mm256_maskz_loadu_ps(m, s);
        if (d + 8 <= end) _mm256_storeu_ps(d, v);
        else _mm256_mask_storeu_ps(d, m, v);
        return;
    }
    for (; n >= 16; n -= 16, d += 16, s += 16) _mm512_storeu_ps(d, _mm512_loadu_ps(s));
    if (n) {
        const __mmask16 m = (__mmask16)((1u << n) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(m, s);
        if (d + 16 <= end) _mm512_storeu_ps(d, v);
        else _mm512_mask_storeu_ps(d, m, v);
    }
}
FASTBP_GATHER_TARGET static inline void
fastbp_copy_values_avx512_d(double *restrict d, const double *restrict s, ptrdiff_t n, const double *end)
{
    if (n <= 4) {
        const __mmask8 m = (__mmask8)((1u << n) - 1);
        const __m256d v = _mm256_maskz_loadu_pd(m, s);
        if (d + 4 <= end) _mm256_storeu_pd(d, v);
        else _mm256_mask_storeu_pd(d, m, v);
        return;
    }
    for (; n >= 8; n -= 8, d += 8, s += 8) _mm512_storeu_pd(d, _mm512_loadu_pd(s));
    if (n) {
        const __mmask8 m = (__mmask8)((1u << n) - 1);
        const __m512d v = _mm512_maskz_loadu_pd(m, s);
        if (d + 8 <= end) _mm512_storeu_pd(d, v);
        else _mm512_mask_storeu_pd(d, m, v);
    }
}
FASTBP_GATHER_TARGET static inline void fastbp_zero_values_avx512_s(float *d, ptrdiff_t n, const float *end)
{
    for (; n >= 16; n -= 16, d += 16) _mm512_storeu_ps(d, _mm512_setzero_ps());
    if (n) {
        if (d + 16 <= end) _mm512_storeu_ps(d, _mm512_setzero_ps());
        else _mm512_mask_storeu_ps(d, (__mmask16)((1u << n) - 1), _mm512_setzero_ps());
    }
}
FASTBP_GATHER_TARGET static inline void fastbp_zero_values_avx512_d(double *d, ptrdiff_t n, const double *end)
{
    for (; n >= 8; n -= 8, d += 8) _mm512_storeu_pd(d, _mm512_setzero_pd());
    if (n) {
        if (d + 8 <= end) _mm512_storeu_pd(d, _mm512_setzero_pd());
        else _mm512_mask_storeu_pd(d, (__mmask8)((1u << n) - 1), _mm512_setzero_pd());
    }
}

/* Single-channel images (c = 1) at stride 1, dilation 1 (LeNet's first layer,
 * any grayscale input): the receptive fields of n <= 16 consecutive pixels of
 * one output row, all inside the image horizontally, are kh*kw shifted runs of
 * the image's rows, so each tap's n values are one vector load, and a register
 * transpose per 16 taps turns them into the pixels' rows (per pixel ~k/16
 * stores instead of kh masked loads and stores: LeNet's 28x28x1 -> 5x5 gather
 * took 45 cycles a pixel). Tap groups are stored last to first, each pixel's
 * in increasing order, so a whole store that runs into the next pixel's row is
 * written again after (see fastbp_copy_values_avx512_s). Returns n, or 0 where
 * this does not apply (the caller copies pixel by pixel). */
FASTBP_GATHER_TARGET static inline ptrdiff_t
fastbp_im2col_c1_group_avx512_s(const fastbp_conv_shape *g, const float *restrict image, ptrdiff_t oh,
                                ptrdiff_t ow, ptrdiff_t limit, float *restrict dst, const float *end)
{
    const ptrdiff_t k = g->kh * g->kw, iw0 = ow - g->pl;
    ptrdiff_t n = g->out_w - ow, group;
    if (g->c != 1 || g->sw != 1 || g->dw != 1 || iw0 < 0) return 0;
    if (n > limit) n = limit;
    if (n > 16) n = 16;
    if (n > g->w - g->kw - iw0 + 1) n = g->w - g->kw - iw0 + 1;  /* the last window inside the row */
    if (n < 4) return 0;
    {
        const __mmask16 lanes = (__mmask16)((1u << n) - 1);
        __m512 r[16];
        int i;
        for (group = (k - 1) / 16; group >= 0; group--) {
            const ptrdiff_t j0 = 16 * group, taps = k - j0 < 16 ? k - j0 : 16;
            ptrdiff_t p = j0 / g->kw, q = j0 - p * g->kw;  /* tap j0's kernel row and column */
            /* constant-bound loops, unrolled, so that r stays in registers */
#pragma GCC unroll 16
            for (i = 0; i < 16; i++) {
                const ptrdiff_t ih = oh * g->sh - g->pt + p * g->dh;
                r[i] = i < taps && ih >= 0 && ih < g->h
                    ? _mm512_maskz_loadu_ps(lanes, image + ih * g->w + iw0 + q)
                    : _mm512_setzero_ps();
                if (++q == g->kw) { q = 0; p++; }
            }
            fastbp_transpose16_s_avx512(r);  /* r[pix]: taps j0 .. j0+15 of pixel pix */
#pragma GCC unroll 16
            for (i = 0; i < 16; i++) {
                float *out = dst + i * k + j0;
                if (i >= n) break;
                if (out + 16 <= end) _mm512_storeu_ps(out, r[i]);
                else _mm512_mask_storeu_ps(out, (__mmask16)((1u << taps) - 1), r[i]);
            }
        }
    }
    return n;
}
#define FASTBP_C1_GROUP_AVX512_S(g, image, oh, ow, limit, dst, end) \
    fastbp_im2col_c1_group_avx512_s(g, image, oh, ow, limit, dst, end)
#else
#define FASTBP_GATHER_TARGET
#endif

/* dst[0 : r1-r0] := the receptive fields (kh*kw*c values each, in (kh, kw, c)
 * order) of output pixels r0 .. r1-1 of images x, zeros outside x. */
#define FASTBP_IM2COL_ROWS(NAME, T, ATTR, COPY, ZERO, GROUP)                                \
ATTR static void NAME(const fastbp_conv_shape *shape, const T *restrict x,                  \
                      ptrdiff_t r0, ptrdiff_t r1, T *restrict dst)                          \
{                                                                                           \
    const fastbp_conv_shape g = *shape;                                                     \
    const ptrdiff_t pix = g.out_h * g.out_w, span = g.kw * g.c, k = g.kh * span;            \
    ptrdiff_t img = r0 / pix, oh = (r0 % pix) / g.out_w, ow = r0 % g.out_w, r, p, q;        \
    const T *const end = dst + (r1 - r0) * k;                                               \
    for (r = r0; r < r1; r++, dst += k) {                                                   \
        const ptrdiff_t grouped = GROUP(&g, x + img * g.h * g.w * g.c, oh, ow, r1 - r, dst, end); \
        if (grouped) {  /* pixels r .. r+grouped-1, all in this output row */               \
            r += grouped - 1;                                                               \
            dst += (grouped - 1) * k;                                                       \
            ow += grouped - 1;                                                              \
            goto next_pixel;                                                                \
        }                                                                                   \
        const ptrdiff_t iw0 = ow * g.sw - g.pl;                                             \
        const int inside_w = g.dw == 1 && iw0 >= 0 && iw0 + g.kw <= g.w;                    \
        for (p = 0; p < g.kh; p++) {                                                        \
            const ptrdiff_t ih = oh * g.sh - g.pt + p * g.dh;                               \
            T *out = dst + p * span;                                                        \
            if (ih < 0 || ih >= g.h) { ZERO(out, span, end); continue; }                         \
            const T *src = x + (img * g.h + ih) * g.w * g.c;                                \
            if (inside_w) { COPY(out, src + iw0 * g.c, span, end); continue; }                   \
            for (q = 0; q < g.kw; q++) {                                                    \
                const ptrdiff_t iw = iw0 + q * g.dw;                                        \
                if (iw < 0 || iw >= g.w) ZERO(out + q * g.c, g.c, end);                     \
                else COPY(out + q * g.c, src + iw * g.c, g.c, end);                         \
            }                                                                               \
        }                                                                                   \
    next_pixel:                                                                             \
        if (++ow == g.out_w) {  /* the next pixel, without divisions */                     \
            ow = 0;                                                                         \
            if (++oh == g.out_h) { oh = 0; img++; }                                         \
        }                                                                                   \
    }                                                                                       \
}

/* No grouped path: every pixel is copied on its own. */
#define FASTBP_NO_GROUP(g, image, oh, ow, limit, dst, end) 0

FASTBP_IM2COL_ROWS(fastbp_im2col_rows_generic_s, float, , fastbp_copy_values_s, fastbp_zero_values_s,
                   FASTBP_NO_GROUP)
FASTBP_IM2COL_ROWS(fastbp_im2col_rows_generic_d, double, , fastbp_copy_values_d, fastbp_zero_values_d,
                   FASTBP_NO_GROUP)
#if FASTBP_GATHER_AVX512
FASTBP_IM2COL_ROWS(fastbp_im2col_rows_avx512_s, float, FASTBP_GATHER_TARGET, fastbp_copy_values_avx512_s,
                   fastbp_zero_values_avx512_s, FASTBP_C1_GROUP_AVX512_S)
FASTBP_IM2COL_ROWS(fastbp_im2col_rows_avx512_d, double, FASTBP_GATHER_TARGET, fastbp_copy_values_avx512_d,
                   fastbp_zero_values_avx512_d, FASTBP_NO_GROUP)
#endif

/* The gather, on AVX-512 when ``avx512`` (the CPU has it and fastbp's ISA choice allows it). */
static void fastbp_im2col_rows_s(int avx512, const fastbp_conv_shape *g, const float *x,
                                 ptrdiff_t r0, ptrdiff_t r1, float *dst)
{
#if FASTBP_GATHER_AVX512
    if (avx512) { fastbp_im2col_rows_avx512_s(g, x, r0, r1, dst); return; }
#endif
    (void)avx512;
    fastbp_im2col_rows_generic_s(g, x, r0, r1, dst);
}
static void fastbp_im2col_rows_d(int avx512, const fastbp_conv_shape *g, const double *x,
                                 ptrdiff_t r0, ptrdiff_t r1, double *dst)
{
#if FASTBP_GATHER_AVX512
    if (avx512) { fastbp_im2col_rows_avx512_d(g, x, r0, r1, dst); return; }
#endif
    (void)avx512;
    fastbp_im2col_rows_generic_d(g, x, r0, r1, dst);
}
#endif

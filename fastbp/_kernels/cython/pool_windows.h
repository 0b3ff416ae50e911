/* Max pooling's inner loops: one output row's window maxima and arg-maxima.
 *
 * Written in C for what Cython cannot say: the pointers do not alias
 * (restrict), the running max is updated by selects, not branches (on random
 * data "is this value larger" is a coin toss), and the row is compiled for
 * AVX-512 and AVX2 beside the baseline x86-64 build, the loader picking the
 * CPU's best (gcc's target_clones), so that the channel loop runs in vectors
 * with the int64 arg-max blended beside it. torch's rule: a value wins when
 * it is larger or NaN; ties keep the earlier pixel in row-major scan order. */
#ifndef FASTBP_POOL_WINDOWS_H
#define FASTBP_POOL_WINDOWS_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <immintrin.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FASTBP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTBP_CLONES
#endif

/* Output row of max pooling: for ow in [0, out_w), o[ow*c : ow*c + c] and
 * idx[...] := max and arg-max of the image x (width ``width``, c channels per
 * pixel) over rows [hs, he) and columns [ow*sw - pl, ow*sw - pl + pw) clipped
 * to [0, width); the arg-max is row*width + column. An empty window gives
 * -inf at its first pixel. */
#define FASTBP_MAX_POOL_ROW(NAME, T)                                                        \
FASTBP_CLONES void NAME(const T *restrict x, ptrdiff_t width, ptrdiff_t c,                  \
                        ptrdiff_t hs, ptrdiff_t he, ptrdiff_t out_w, ptrdiff_t sw,          \
                        ptrdiff_t pl, ptrdiff_t pw, T *restrict o, int64_t *restrict idx)   \
{                                                                                           \
    ptrdiff_t ow, ih, iw, ch;                                                               \
    for (ow = 0; ow < out_w; ow++, o += c, idx += c) {                                      \
        const ptrdiff_t w0 = ow * sw - pl;                                                  \
        const ptrdiff_t ws = w0 > 0 ? w0 : 0, we = w0 + pw < width ? w0 + pw : width;       \
        const int64_t first = (int64_t)(hs * width + ws);                                   \
        if (he <= hs || we <= ws) {                                                         \
            for (ch = 0; ch < c; ch++) { o[ch] = -(T)INFINITY; idx[ch] = first; }           \
            continue;                                                                       \
        }                                                                                   \
        const T *restrict src = x + first * c;                                              \
        for (ch = 0; ch < c; ch++) { o[ch] = src[ch]; idx[ch] = first; }                    \
        for (ih = hs; ih < he; ih++) {                                                      \
            for (iw = (ih == hs ? ws + 1 : ws); iw < we; iw++) {                            \
                const int64_t pos = (int64_t)(ih * width + iw);                             \
                src = x + pos * c;                                                          \
                for (ch = 0; ch < c; ch++) {                                                \
                    const T v = src[ch];                                                    \
                    const int take = (v > o[ch]) | (v != v);                                \
                    o[ch] = take ? v : o[ch];                                               \
                    idx[ch] = take ? pos : idx[ch];                                         \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
}

static FASTBP_MAX_POOL_ROW(fastbp_max_pool_row_s, float)
static FASTBP_MAX_POOL_ROW(fastbp_max_pool_row_d, double)

#if defined(__GNUC__) && defined(__x86_64__)
#define FASTBP_POOL_NARROW 1
/* The row above for float32 images of fewer than 16 channels, which fill no
 * vector of the channel loop (gcc then runs it as scalar code with a branch
 * per value: ~3-4.5 ns per input value at 1-8 channels on Zen 4): a pixel's
 * channels are one masked AVX-512 vector, the arg-max two int64 vectors. */
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"))) static void
fastbp_max_pool_row_narrow_s(const float *restrict x, ptrdiff_t width, ptrdiff_t c,
                             ptrdiff_t hs, ptrdiff_t he, ptrdiff_t out_w, ptrdiff_t sw,
                             ptrdiff_t pl, ptrdiff_t pw, float *restrict o, int64_t *restrict idx)
{
    const __mmask16 lanes = (__mmask16)((1u << c) - 1);
    ptrdiff_t ow, ih, iw;
    for (ow = 0; ow < out_w; ow++, o += c, idx += c) {
        const ptrdiff_t w0 = ow * sw - pl;
        const ptrdiff_t ws = w0 > 0 ? w0 : 0, we = w0 + pw < width ? w0 + pw : width;
        const int64_t first = (int64_t)(hs * width + ws);
        __m512 best = _mm512_set1_ps(-INFINITY);
        __m512i at_lo = _mm512_set1_epi64(first), at_hi = at_lo;
        if (he > hs && we > ws) {
            best = _mm512_maskz_loadu_ps(lanes, x + first * c);
            for (ih = hs; ih < he; ih++) {
                for (iw = (ih == hs ? ws + 1 : ws); iw < we; iw++) {
                    const int64_t pos = (int64_t)(ih * width + iw);
                    const __m512 v = _mm512_maskz_loadu_ps(lanes, x + pos * c);
                    const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ)
                                           | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
                    const __m512i at = _mm512_set1_epi64(pos);
                    best = _mm512_mask_mov_ps(best, take, v);
                    at_lo = _mm512_mask_mov_epi64(at_lo, (__mmask8)take, at);
                    at_hi = _mm512_mask_mov_epi64(at_hi, (__mmask8)(take >> 8), at);
                }
            }
        }
        _mm512_mask_storeu_ps(o, lanes, best);
        _mm512_mask_storeu_epi64(idx, (__mmask8)lanes, at_lo);
        _mm512_mask_storeu_epi64(idx + 8, (__mmask8)(lanes >> 8), at_hi);
    }
}

#else
#define FASTBP_POOL_NARROW 0
static void fastbp_max_pool_row_narrow_s(const float *x, ptrdiff_t width, ptrdiff_t c, ptrdiff_t hs,
                                         ptrdiff_t he, ptrdiff_t out_w, ptrdiff_t sw, ptrdiff_t pl,
                                         ptrdiff_t pw, float *o, int64_t *idx)
{
    fastbp_max_pool_row_s(x, width, c, hs, he, out_w, sw, pl, pw, o, idx);
}
#endif
#endif

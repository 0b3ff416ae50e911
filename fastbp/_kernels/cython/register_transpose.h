/* A 16x16 float32 block transposed in AVX-512 registers, shared by the GEMM's
 * transposing pack (microkernels.h) and the convolution's single-channel
 * gather (conv_gather.h). Values are only moved. */
#ifndef FASTBP_REGISTER_TRANSPOSE_H
#define FASTBP_REGISTER_TRANSPOSE_H
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>

/* On return r[q] holds what was column q of the rows r[0..15]: unpack 32-bit,
 * unpack 64-bit, then two rounds of 128-bit shuffles. */
__attribute__((target("avx512f"), always_inline)) static inline void
fastbp_transpose16_s_avx512(__m512 r[16])
{
    __m512 t[16], u[16];
    int i;
    for (i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (i = 0; i < 16; i += 4) {
        __m512d a0 = _mm512_castps_pd(t[i]), a1 = _mm512_castps_pd(t[i + 1]);
        __m512d b0 = _mm512_castps_pd(t[i + 2]), b1 = _mm512_castps_pd(t[i + 3]);
        u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, b0));
        u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, b0));
        u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, b1));
        u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, b1));
    }
    /* u[4g + c] holds, in each 128-bit lane L, column 4L + c of rows 4g..4g+3 */
    for (i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(u[i], u[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(u[i + 8], u[i + 12], 0xdd);
    }
    for (i = 0; i < 4; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
}
#endif
#endif

/* Element-wise backward steps of the gated recurrent kernels (_gated.pyx): one row of one
 * step each. In C for `restrict`: the rows are read through six or more pointers, which
 * Cython cannot mark as non-overlapping, and GCC then leaves the loop scalar (the
 * run-time overlap checks it would need exceed its limit). The arguments never overlap:
 * gate/c_prev/tanh_c/hn/h_prev/grad are inputs, dh/carry per-row scratch, the gradients
 * rows of their own arrays. One instance per dtype: _s float, _d double. */
#ifndef FASTBP_GATED_ROWS_H
#define FASTBP_GATED_ROWS_H

#include <stddef.h>

/* LSTM: dgate := (dc⊙g⊙i(1-i), dc⊙c_prev⊙f(1-f), dc⊙i⊙(1-g²), dh⊙tanh(c)⊙o(1-o)) with
 * dc = dc_in + dh⊙o⊙(1 - tanh²c); dc := dc⊙f (the carry to step t-1).
 * IN gate (4n): i, f, g, o activated; c_prev, tanh_c, dh (n). IN/OUT dc (n). OUT dgate (4n). */
#define FASTBP_LSTM_GRAD_ROW(NAME, T)                                                         \
    static inline void NAME(const T *restrict gate, const T *restrict c_prev,                \
                            const T *restrict tanh_c, const T *restrict dh, T *restrict dc,  \
                            T *restrict dgate, ptrdiff_t n) {                                \
        for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T i = gate[j], f = gate[n + j], g = gate[2 * n + j], o = gate[3 * n + j];         \
            T tc = tanh_c[j], d = dh[j];                                                      \
            T dcj = dc[j] + d * o * (1 - tc * tc);                                            \
            dgate[j] = dcj * g * (i * (1 - i));                                               \
            dgate[n + j] = dcj * c_prev[j] * (f * (1 - f));                                   \
            dgate[2 * n + j] = dcj * i * (1 - g * g);                                         \
            dgate[3 * n + j] = d * tc * (o * (1 - o));                                        \
            dc[j] = dcj * f;                                                                  \
        }                                                                                     \
    }

/* GRU: dh = grad (+ carry + direct when has_carry: dghh_{t+1}·w_hhᵀ and dh_{t+1}⊙z_{t+1});
 * dan = dh⊙(1-z)⊙(1-n²); dar = dan⊙hn⊙r(1-r); daz = dh⊙(h_prev - n)⊙z(1-z);
 * dgate := (dar, daz, dan), dghh := (dar, daz, dan⊙r); direct := dh⊙z.
 * IN gate (3n): r, z, n activated; hn, h_prev, grad, carry (n). IN/OUT direct (n).
 * OUT dgate, dghh (3n). */
#define FASTBP_GRU_GRAD_ROW(NAME, T)                                                          \
    static inline void NAME(const T *restrict gate, const T *restrict hn,                    \
                            const T *restrict h_prev, const T *restrict grad,                \
                            const T *restrict carry, T *restrict direct, int has_carry,      \
                            T *restrict dgate, T *restrict dghh, ptrdiff_t n) {              \
        for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T r = gate[j], z = gate[n + j], c = gate[2 * n + j];                              \
            T dh = has_carry ? grad[j] + (carry[j] + direct[j]) : grad[j];                    \
            T dan = dh * (1 - z) * (1 - c * c);                                               \
            T dar = dan * hn[j] * (r * (1 - r));                                              \
            T daz = dh * (h_prev[j] - c) * (z * (1 - z));                                     \
            dgate[j] = dar;                                                                   \
            dgate[n + j] = daz;                                                               \
            dgate[2 * n + j] = dan;                                                           \
            dghh[j] = dar;                                                                    \
            dghh[n + j] = daz;                                                                \
            dghh[2 * n + j] = dan * r;                                                        \
            direct[j] = dh * z;                                                               \
        }                                                                                     \
    }

/* out[j] := Σ_i g[i·ld + j] for j in [j0, j0 + 64) ∩ [0, cols): one block of columns, each
 * summed in row order in double, so the result does not depend on how blocks are split
 * between threads. */
#define FASTBP_COLUMN_SUMS_BLOCK(NAME, T)                                                     \
    static inline void NAME(const T *restrict g, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t ld, \
                            ptrdiff_t j0, T *restrict out) {                                  \
        double acc[64];                                                                       \
        ptrdiff_t w = cols - j0 < 64 ? cols - j0 : 64;                                        \
        for (ptrdiff_t j = 0; j < w; j++) acc[j] = 0.0;                                       \
        for (ptrdiff_t i = 0; i < rows; i++) {                                                \
            const T *restrict row = g + i * ld + j0;                                          \
            for (ptrdiff_t j = 0; j < w; j++) acc[j] += (double)row[j];                       \
        }                                                                                     \
        for (ptrdiff_t j = 0; j < w; j++) out[j0 + j] = (T)acc[j];                            \
    }

FASTBP_LSTM_GRAD_ROW(fastbp_lstm_grad_row_s, float)
FASTBP_LSTM_GRAD_ROW(fastbp_lstm_grad_row_d, double)
FASTBP_GRU_GRAD_ROW(fastbp_gru_grad_row_s, float)
FASTBP_GRU_GRAD_ROW(fastbp_gru_grad_row_d, double)
FASTBP_COLUMN_SUMS_BLOCK(fastbp_column_sums_block_s, float)
FASTBP_COLUMN_SUMS_BLOCK(fastbp_column_sums_block_d, double)

#endif

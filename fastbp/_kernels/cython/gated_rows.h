/* Element-wise steps of the gated recurrent kernels (_gated.pyx): one row of one step each,
 * forward (gate nonlinearities and the state update) and backward (gate gradients).
 * In C for two reasons: `restrict` (a row is read through six or more pointers, which
 * Cython cannot mark as non-overlapping, and GCC then leaves the loop scalar), and ISA
 * clones (the extensions build for baseline x86-64; target_clones adds AVX-512 and AVX2
 * versions chosen at load time, as optimizer_steps.h does). setup.py compiles with
 * -ffp-contract=off and the functions use only +, -, *, / (and libm exp/tanh in
 * float64, not vectorised), so every clone rounds alike: the same bits on any ISA.
 * The arguments never overlap: gate/c_prev/hn/h_prev/grad are inputs, dh/carry per-row
 * scratch, the outputs rows of their own arrays. One instance per dtype: _s float, _d double.
 * Gates, float32: tanh is fastbp_tanh_rational, σ(x) = (1 + tanh(x/2))/2 (|error| < 2e-7),
 * both branch-free so the loops vectorise; float64: libm tanh and the two-branch sigmoid. */
#ifndef FASTBP_GATED_ROWS_H
#define FASTBP_GATED_ROWS_H

#include <math.h>
#include <stddef.h>

#include "tanh_rational.h"

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTBP_ROW_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FASTBP_ROW_CLONES
#endif

static inline float fastbp_gate_sigmoid_s(float x) { return 0.5f + 0.5f * fastbp_tanh_rational(0.5f * x); }
static inline double fastbp_gate_sigmoid_d(double x) {
    double e = exp(-fabs(x)); /* exp of a non-positive argument only */
    return x >= 0 ? 1 / (1 + e) : e / (1 + e);
}
#define fastbp_gate_tanh_s fastbp_tanh_rational
#define fastbp_gate_tanh_d tanh

/* LSTM forward: z (4n) = (i, f, g, o) pre-activations, activated in place;
 * c := f⊙c_prev + i⊙g; h := o⊙tanh(c).  IN c_prev (n); OUT c, h (n). */
#define FASTBP_LSTM_CELL_ROW(NAME, T, SIG, TANH)                                              \
    FASTBP_ROW_CLONES static void NAME(T *restrict z, const T *restrict c_prev,               \
                                       T *restrict c, T *restrict h, ptrdiff_t n) {           \
        for (ptrdiff_t j = 0; j < 2 * n; j++) z[j] = SIG(z[j]);                               \
        for (ptrdiff_t j = 2 * n; j < 3 * n; j++) z[j] = TANH(z[j]);                          \
        for (ptrdiff_t j = 3 * n; j < 4 * n; j++) z[j] = SIG(z[j]);                           \
        for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T cj = z[n + j] * c_prev[j] + z[j] * z[2 * n + j];                                \
            c[j] = cj;                                                                        \
            h[j] = z[3 * n + j] * TANH(cj);                                                   \
        }                                                                                     \
    }

/* GRU forward: gate (3n) = input projections (xr, xz, xn), rec (3n) = h_prev·w_hh;
 * gate := (r, z, n) activated; hn := rec_n + bias_hn; h := (1-z)⊙n + z⊙h_prev. */
#define FASTBP_GRU_CELL_ROW(NAME, T, SIG, TANH)                                               \
    FASTBP_ROW_CLONES static void NAME(T *restrict gate, const T *restrict rec,               \
                                       const T *restrict bias_hn, const T *restrict h_prev,   \
                                       T *restrict hn, T *restrict h, ptrdiff_t n) {          \
        for (ptrdiff_t j = 0; j < 2 * n; j++) gate[j] = SIG(gate[j] + rec[j]);                \
        for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T v = rec[2 * n + j] + bias_hn[j];                                                \
            hn[j] = v;                                                                        \
            T cand = TANH(gate[2 * n + j] + gate[j] * v);                                     \
            gate[2 * n + j] = cand;                                                           \
            T z = gate[n + j];                                                                \
            h[j] = (1 - z) * cand + z * h_prev[j];                                            \
        }                                                                                     \
    }

/* LSTM backward: dgate := (dc⊙g⊙i(1-i), dc⊙c_prev⊙f(1-f), dc⊙i⊙(1-g²), dh⊙tanh(c)⊙o(1-o))
 * with dc = dc_in + dh⊙o⊙(1 - tanh²c); dc := dc⊙f (the carry to step t-1).
 * IN gate (4n): i, f, g, o activated; c_prev, c, dh (n). IN/OUT dc (n). OUT dgate (4n). */
#define FASTBP_LSTM_GRAD_ROW(NAME, T, TANH)                                                   \
    FASTBP_ROW_CLONES static void NAME(const T *restrict gate, const T *restrict c_prev,      \
                                       const T *restrict c, const T *restrict dh,             \
                                       T *restrict dc, T *restrict dgate, ptrdiff_t n) {      \
        for (ptrdiff_t j = 0; j < n; j++) {                                                   \
            T i = gate[j], f = gate[n + j], g = gate[2 * n + j], o = gate[3 * n + j];         \
            T tc = TANH(c[j]), d = dh[j];                                                     \
            T dcj = dc[j] + d * o * (1 - tc * tc);                                            \
            dgate[j] = dcj * g * (i * (1 - i));                                               \
            dgate[n + j] = dcj * c_prev[j] * (f * (1 - f));                                   \
            dgate[2 * n + j] = dcj * i * (1 - g * g);                                         \
            dgate[3 * n + j] = d * tc * (o * (1 - o));                                        \
            dc[j] = dcj * f;                                                                  \
        }                                                                                     \
    }

/* GRU backward: dh = grad (+ carry + direct when has_carry: dghh_{t+1}·w_hhᵀ and dh_{t+1}⊙z_{t+1});
 * dan = dh⊙(1-z)⊙(1-n²); dar = dan⊙hn⊙r(1-r); daz = dh⊙(h_prev - n)⊙z(1-z);
 * dgate := (dar, daz, dan), dghh := (dar, daz, dan⊙r); direct := dh⊙z.
 * IN gate (3n): r, z, n activated; hn, h_prev, grad, carry (n). IN/OUT direct (n).
 * OUT dgate, dghh (3n). */
#define FASTBP_GRU_GRAD_ROW(NAME, T)                                                          \
    FASTBP_ROW_CLONES static void NAME(const T *restrict gate, const T *restrict hn,                    \
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
    FASTBP_ROW_CLONES static void NAME(const T *restrict g, ptrdiff_t rows, ptrdiff_t cols, ptrdiff_t ld, \
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

FASTBP_LSTM_CELL_ROW(fastbp_lstm_cell_row_s, float, fastbp_gate_sigmoid_s, fastbp_gate_tanh_s)
FASTBP_LSTM_CELL_ROW(fastbp_lstm_cell_row_d, double, fastbp_gate_sigmoid_d, fastbp_gate_tanh_d)
FASTBP_GRU_CELL_ROW(fastbp_gru_cell_row_s, float, fastbp_gate_sigmoid_s, fastbp_gate_tanh_s)
FASTBP_GRU_CELL_ROW(fastbp_gru_cell_row_d, double, fastbp_gate_sigmoid_d, fastbp_gate_tanh_d)
FASTBP_LSTM_GRAD_ROW(fastbp_lstm_grad_row_s, float, fastbp_gate_tanh_s)
FASTBP_LSTM_GRAD_ROW(fastbp_lstm_grad_row_d, double, fastbp_gate_tanh_d)
FASTBP_GRU_GRAD_ROW(fastbp_gru_grad_row_s, float)
FASTBP_GRU_GRAD_ROW(fastbp_gru_grad_row_d, double)
FASTBP_COLUMN_SUMS_BLOCK(fastbp_column_sums_block_s, float)
FASTBP_COLUMN_SUMS_BLOCK(fastbp_column_sums_block_d, double)

#endif

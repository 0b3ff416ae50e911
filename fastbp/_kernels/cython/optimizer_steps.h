/* Element-wise optimizer updates of fastbp's Cython backend, on a chunk
 * [0, n) of flat buffers, in C so that each loop carries ISA clones.
 *
 * Design: every update is one function with a `write` flag. With write == 0
 * it computes the new parameter and state values without storing them and
 * returns whether the gradient or any new value is NaN or infinite (the
 * exponent-bits test of all_finite, OR-ed over the chunk with no early exit,
 * so the loop vectorises); with write == 1 it stores them (and returns 0).
 * Both modes evaluate the same expressions, so the check sees exactly the
 * values the write stores. The extensions build for baseline x86-64 (SSE2);
 * target_clones adds AVX-512 and AVX2 versions chosen at load time (GCC's
 * ifunc), which run the sqrt and divide of RMSprop/Adam 4-8x wider. setup.py
 * compiles with -ffp-contract=off, so no clone fuses a multiply and an add:
 * every clone gives the NumPy reference's rounding.
 *
 * Elastic weight consolidation (fastbp.continual.EWC) rides on every step:
 * with f != NULL the penalty's gradient lam·F·(p - anchor) is added to g after
 * the weight decay, g += lam·(f·(p - a)), in the same pass (f == NULL: no
 * penalty). Each update is written once with an `ewc` flag and inlined twice,
 * with ewc 0 and 1, so the plain step keeps its vectorised loop.
 */
#ifndef FASTBP_OPTIMIZER_STEPS_H
#define FASTBP_OPTIMIZER_STEPS_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if (defined(__x86_64__) || defined(_M_X64)) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define FASTBP_STEP_CLONES __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define FASTBP_STEP_CLONES
#endif

/* The updates themselves, inlined into each entry point (and its clones) with ewc constant. */
#if defined(__GNUC__)
#define FASTBP_STEP_INLINE static inline __attribute__((always_inline))
#else
#define FASTBP_STEP_INLINE static inline
#endif
/* The buffers never overlap (fastbp.kernels checks it; a network's never do): with six of
 * them GCC would need more runtime alias checks than it versions a loop for, and would not
 * vectorise the penalised loops. */
#define FASTBP_RESTRICT __restrict

/* acc |= a value whose sign bit is set when x's exponent is all ones (NaN, inf). */
#define FASTBP_MARK(acc, x, UINT, EXP, LOW)                                   \
    do {                                                                      \
        UINT bits_;                                                           \
        memcpy(&bits_, &(x), sizeof bits_);                                   \
        (acc) |= (bits_ & (EXP)) + (LOW);                                     \
    } while (0)

#define FASTBP_OPTIMIZER_STEPS(SUFFIX, T, UINT, EXP, LOW, SIGN, SQRT)                          \
/* g = grad + wd·p; v := mu·v + g; p -= lr·(g + mu·v if nesterov else v) (v unused if mu == 0) */ \
FASTBP_STEP_INLINE int                                                                          \
fastbp_sgd_impl_##SUFFIX(T *FASTBP_RESTRICT p, const T *FASTBP_RESTRICT g,                      \
                         T *FASTBP_RESTRICT v, ptrdiff_t n, T lr, T mu, int nesterov, T wd,     \
                         const T *FASTBP_RESTRICT f, const T *FASTBP_RESTRICT a, T lam,         \
                         int ewc, int write)                                                    \
{                                                                                               \
    UINT acc = 0;                                                                               \
    ptrdiff_t i;                                                                                \
    for (i = 0; i < n; i++) {                                                                   \
        T gi = wd != 0 ? g[i] + wd * p[i] : g[i];                                               \
        if (ewc) gi = gi + lam * (f[i] * (p[i] - a[i]));                                        \
        T vi = 0;                                                                               \
        if (mu != 0) {                                                                          \
            vi = mu * v[i];                                                                     \
            vi = vi + gi;                                                                       \
            gi = nesterov ? gi + mu * vi : vi;                                                  \
        }                                                                                       \
        T pi = p[i] - lr * gi;                                                                  \
        if (write) {                                                                            \
            p[i] = pi;                                                                          \
            if (mu != 0) v[i] = vi;                                                             \
        } else {                                                                                \
            FASTBP_MARK(acc, g[i], UINT, EXP, LOW);                                             \
            FASTBP_MARK(acc, pi, UINT, EXP, LOW);                                               \
            FASTBP_MARK(acc, vi, UINT, EXP, LOW);                                               \
        }                                                                                       \
    }                                                                                           \
    return (acc & (SIGN)) != 0;                                                                 \
}                                                                                               \
                                                                                                \
/* g = grad + wd·p; s := rho·s + (1-rho)·g²; p -= lr·g / (√s + eps) */                         \
FASTBP_STEP_INLINE int                                                                          \
fastbp_rmsprop_impl_##SUFFIX(T *FASTBP_RESTRICT p, const T *FASTBP_RESTRICT g,                  \
                             T *FASTBP_RESTRICT s, ptrdiff_t n, T lr, T rho, T one_minus_rho,   \
                             T eps, T wd, const T *FASTBP_RESTRICT f,                           \
                             const T *FASTBP_RESTRICT a, T lam, int ewc, int write)             \
{                                                                                               \
    UINT acc = 0;                                                                               \
    ptrdiff_t i;                                                                                \
    for (i = 0; i < n; i++) {                                                                   \
        T gi = wd != 0 ? g[i] + wd * p[i] : g[i];                                               \
        if (ewc) gi = gi + lam * (f[i] * (p[i] - a[i]));                                        \
        T si = rho * s[i];                                                                      \
        si = si + one_minus_rho * gi * gi;                                                      \
        T pi = p[i] - lr * gi / (SQRT(si) + eps);                                               \
        if (write) {                                                                            \
            p[i] = pi;                                                                          \
            s[i] = si;                                                                          \
        } else {                                                                                \
            FASTBP_MARK(acc, g[i], UINT, EXP, LOW);                                             \
            FASTBP_MARK(acc, pi, UINT, EXP, LOW);                                               \
            FASTBP_MARK(acc, si, UINT, EXP, LOW);                                               \
        }                                                                                       \
    }                                                                                           \
    return (acc & (SIGN)) != 0;                                                                 \
}                                                                                               \
                                                                                                \
/* g = grad + wd·p; m := b1·m + (1-b1)·g; v := b2·v + (1-b2)·g²;                               \
 * p -= (step_size·m) / (√v / sqrt_bias2 + eps) */                                             \
FASTBP_STEP_INLINE int                                                                          \
fastbp_adam_impl_##SUFFIX(T *FASTBP_RESTRICT p, const T *FASTBP_RESTRICT g,                     \
                          T *FASTBP_RESTRICT m, T *FASTBP_RESTRICT v, ptrdiff_t n,              \
                          T step_size, T beta1,                                                 \
                          T one_minus_beta1, T beta2, T one_minus_beta2, T sqrt_bias2, T eps,   \
                          T wd,                                                                 \
                          const T *FASTBP_RESTRICT f, const T *FASTBP_RESTRICT a, T lam,        \
                          int ewc, int write)                                                   \
{                                                                                               \
    UINT acc = 0;                                                                               \
    ptrdiff_t i;                                                                                \
    for (i = 0; i < n; i++) {                                                                   \
        T gi = wd != 0 ? g[i] + wd * p[i] : g[i];                                               \
        if (ewc) gi = gi + lam * (f[i] * (p[i] - a[i]));                                        \
        T mi = beta1 * m[i];                                                                    \
        mi = mi + one_minus_beta1 * gi;                                                         \
        T vi = beta2 * v[i];                                                                    \
        vi = vi + one_minus_beta2 * gi * gi;                                                    \
        T denom = SQRT(vi) / sqrt_bias2 + eps;                                                  \
        T pi = p[i] - (step_size * mi) / denom;                                                 \
        if (write) {                                                                            \
            p[i] = pi;                                                                          \
            m[i] = mi;                                                                          \
            v[i] = vi;                                                                          \
        } else {                                                                                \
            FASTBP_MARK(acc, g[i], UINT, EXP, LOW);                                             \
            FASTBP_MARK(acc, pi, UINT, EXP, LOW);                                               \
            FASTBP_MARK(acc, mi, UINT, EXP, LOW);                                               \
            FASTBP_MARK(acc, vi, UINT, EXP, LOW);                                               \
        }                                                                                       \
    }                                                                                           \
    return (acc & (SIGN)) != 0;                                                                 \
}                                                                                               \
                                                                                                \
/* The entry points (f == NULL: no penalty). Each inlines its update with both flags            \
 * constant, so every loop is straight-line and vectorises (the plain one as before). */        \
FASTBP_STEP_CLONES static int                                                                   \
fastbp_sgd_##SUFFIX(T *p, const T *g, T *v, ptrdiff_t n, T lr, T mu, int nesterov, T wd,        \
                    const T *f, const T *a, T lam, int write)                                   \
{                                                                                               \
    const int ewc = f != NULL;                                                                  \
    if (ewc && write) return fastbp_sgd_impl_##SUFFIX(p, g, v, n, lr, mu, nesterov, wd, f, a,   \
        lam, 1, 1);                                                                             \
    if (ewc) return fastbp_sgd_impl_##SUFFIX(p, g, v, n, lr, mu, nesterov, wd, f, a, lam, 1,    \
        0);                                                                                     \
    if (write) return fastbp_sgd_impl_##SUFFIX(p, g, v, n, lr, mu, nesterov, wd, f, a, lam,     \
        0, 1);                                                                                  \
    return fastbp_sgd_impl_##SUFFIX(p, g, v, n, lr, mu, nesterov, wd, f, a, lam, 0, 0);         \
}                                                                                               \
                                                                                                \
FASTBP_STEP_CLONES static int                                                                   \
fastbp_rmsprop_##SUFFIX(T *p, const T *g, T *s, ptrdiff_t n, T lr, T rho, T one_minus_rho,      \
                        T eps, T wd, const T *f, const T *a, T lam, int write)                  \
{                                                                                               \
    const int ewc = f != NULL;                                                                  \
    if (ewc && write) return fastbp_rmsprop_impl_##SUFFIX(p, g, s, n, lr, rho, one_minus_rho,   \
        eps, wd, f, a, lam, 1, 1);                                                              \
    if (ewc) return fastbp_rmsprop_impl_##SUFFIX(p, g, s, n, lr, rho, one_minus_rho, eps, wd,   \
        f, a, lam, 1, 0);                                                                       \
    if (write) return fastbp_rmsprop_impl_##SUFFIX(p, g, s, n, lr, rho, one_minus_rho, eps,     \
        wd, f, a, lam, 0, 1);                                                                   \
    return fastbp_rmsprop_impl_##SUFFIX(p, g, s, n, lr, rho, one_minus_rho, eps, wd, f, a,      \
                                        lam, 0, 0);                                             \
}                                                                                               \
                                                                                                \
FASTBP_STEP_CLONES static int                                                                   \
fastbp_adam_##SUFFIX(T *p, const T *g, T *m, T *v, ptrdiff_t n, T step_size, T beta1,           \
                     T one_minus_beta1, T beta2, T one_minus_beta2, T sqrt_bias2, T eps, T wd,  \
                     const T *f, const T *a, T lam, int write)                                  \
{                                                                                               \
    const int ewc = f != NULL;                                                                  \
    if (ewc && write) return fastbp_adam_impl_##SUFFIX(p, g, m, v, n, step_size, beta1,         \
        one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps, wd, f, a, lam, 1, 1);         \
    if (ewc) return fastbp_adam_impl_##SUFFIX(p, g, m, v, n, step_size, beta1,                  \
        one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps, wd, f, a, lam, 1, 0);         \
    if (write) return fastbp_adam_impl_##SUFFIX(p, g, m, v, n, step_size, beta1,                \
        one_minus_beta1, beta2, one_minus_beta2, sqrt_bias2, eps, wd, f, a, lam, 0, 1);         \
    return fastbp_adam_impl_##SUFFIX(p, g, m, v, n, step_size, beta1, one_minus_beta1, beta2,   \
                                     one_minus_beta2, sqrt_bias2, eps, wd, f, a, lam, 0, 0);    \
}

FASTBP_OPTIMIZER_STEPS(s, float, uint32_t, 0x7f800000u, 0x00800000u, 0x80000000u, sqrtf)
FASTBP_OPTIMIZER_STEPS(d, double, uint64_t, 0x7ff0000000000000ull, 0x0010000000000000ull,
                       0x8000000000000000ull, sqrt)

#endif /* FASTBP_OPTIMIZER_STEPS_H */

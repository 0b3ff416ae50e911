/* float32 tanh as a rational function (Eigen's odd degree-13 / even degree-6 minimax fit on
 * [-7.9053, 7.9053], clamped outside: |error| < 3.5e-7, at most 6 float32 ulp, measured on a
 * 2.2M-point grid): branch-free, so the loops that call it vectorise, where a tanhf call per
 * element costs ~20 ns and dominated an RNN's forward pass. NaN propagates (the clamp's
 * comparisons are false for NaN); |x| < 4e-4 returns x itself. The one definition: the
 * activations (_activations.pxd) and the gated recurrent rows (gated_rows.h) inline it. */
#ifndef FASTBP_TANH_RATIONAL_H
#define FASTBP_TANH_RATIONAL_H

#include <math.h>

static inline float fastbp_tanh_rational(float x) {
    const float c = (float)7.90531110763549805; /* (float) of a double literal: Cython's rounding */
    float v = x < -c ? -c : x; /* two single selects: a nested one is not if-converted */
    v = v > c ? c : v;
    float x2 = v * v;
    float p = x2 * (float)-2.76076847742355e-16 + (float)2.00018790482477e-13;
    p = x2 * p + (float)-8.60467152213735e-11;
    p = x2 * p + (float)5.12229709037114e-08;
    p = x2 * p + (float)1.48572235717979e-05;
    p = x2 * p + (float)6.37261928875436e-04;
    p = x2 * p + (float)4.89352455891786e-03;
    p = v * p;
    float q = x2 * (float)1.19825839466702e-06 + (float)1.18534705686654e-04;
    q = x2 * q + (float)2.26843463243900e-03;
    q = x2 * q + (float)4.89352518554385e-03;
    float r = p / q; /* unconditionally: a division in a branch blocks if-conversion */
    return fabsf(x) < (float)0.0004 ? x : r;
}

#endif

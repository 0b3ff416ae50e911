"""Dense layer forward (fused GEMM + bias + activation) and backward.

Design: forward is one call of the GEMM driver whose epilogue adds the bias and
applies the activation to each micro-tile right after its last KC slice; only
softmax, being row-wise, takes a second pass over the rows of z. Backward in
scikit-learn's order: δ = grad_a ⊙ act'(z) (activation kernel), dw = xᵀ·δ and
dx = δ·wᵀ (the GEMM on transposed views: no copies), db = column sums of δ.

Determinism: db sums each column over the rows in row order (float64), split
over threads by column blocks only; the GEMMs are deterministic themselves.
"""

import numba
import numpy as np
from numba import prange

from .. import registry as R
from ._arrays import writable
from ._threads import BACKOFF, clamp_threads, set_threads
from .activations import _activation_backward, _activation_forward
from .gemm import NO_ACTIVATION, gemm, run_driver

from ..blocking import PARALLEL_MIN_ELEMENTS  # noqa: E402  (the one table)
COLUMN_BLOCK = 256  # columns of δ summed by one task


def dense_forward(x, w, bias, act, z, a, n_threads):
    """z := x·w + bias; a := act(z).  IN x (m, k), w (k, n) any strides, bias (n,); OUT z, a (m, n), may alias."""
    n_threads = clamp_threads(n_threads)
    bias = writable(bias)
    if x.shape[1] == 0:  # an empty product: z = bias
        z[...] = bias
        if act != R.IDENTITY or a is not z:
            _activation_forward(act, z, a, n_threads)
        return
    if act == R.SOFTMAX or (act == R.IDENTITY and a is z):
        epilogue_act, out = NO_ACTIVATION, z
    else:
        epilogue_act, out = act, a
    run_driver(x, w, z, out, bias, 1.0, 0.0, epilogue_act, n_threads)
    if act == R.SOFTMAX:
        _activation_forward(act, z, a, n_threads)


def _make_column_sums(PARALLEL):
    def _column_sums(delta, db, accumulate, n_threads):
        """db := Σ_rows delta (+ db if accumulate), each column summed in row order in float64.

        IN delta (m, n); IN/OUT db (n,).
        """
        m, n = delta.shape
        if PARALLEL:
            set_threads(n_threads)
        sums = np.zeros(n)
        for block in prange(-(-n // COLUMN_BLOCK)):
            lo = block * COLUMN_BLOCK
            hi = min(n, lo + COLUMN_BLOCK)
            # Views indexed from 0: no wraparound tests, so the j loops vectorise.
            acc, out = sums[lo:hi], db[lo:hi]
            for i in range(m):
                row = delta[i, lo:hi]
                for j in range(hi - lo):
                    acc[j] += row[j]
            if accumulate:
                for j in range(hi - lo):
                    out[j] = acc[j] + out[j]
            else:
                for j in range(hi - lo):
                    out[j] = acc[j]

    # Parallel and serial twins (see activations.py): a parallel region costs ~1.5 µs.
    return numba.njit(cache=True, nogil=True, parallel=PARALLEL, error_model="numpy")(_column_sums)


_column_sums_parallel = _make_column_sums(True)
_column_sums_serial = _make_column_sums(False)


def _column_sums(delta, db, accumulate, n_threads):
    """db := Σ_rows delta (+ db if accumulate), on threads from PARALLEL_MIN_ELEMENTS values."""
    if delta.size >= PARALLEL_MIN_ELEMENTS and not BACKOFF[0]:
        _column_sums_parallel(delta, db, accumulate, n_threads)
    else:
        _column_sums_serial(delta, db, accumulate, 1)


def _gemm_or_empty(a, b, c, beta, n_threads):
    """c := a·b + beta*c, also when a dimension is 0 (an empty sum gives beta*c)."""
    if c.size == 0:
        return
    if a.shape[1] == 0:
        if beta == 0.0:
            c.fill(0)
        else:
            c *= beta
        return
    gemm(a, b, c, 1.0, beta, n_threads)


def dense_backward(x, w, z, a, grad_a, act, grad_z, dw, db, dx, compute_dx, accumulate, n_threads):
    """grad_z := grad_a ⊙ act'(z); dw := xᵀ·grad_z (+dw); db := Σ_rows grad_z (+db); dx := grad_z·wᵀ.

    IN x (m, k), w (k, n), z, a, grad_a (m, n); OUT grad_z (m, n), may alias grad_a;
    IN/OUT dw (k, n), db (n,) (accumulated into when accumulate); OUT dx (m, k),
    untouched unless compute_dx.
    """
    n_threads = clamp_threads(n_threads)
    x, w = writable(x), writable(w)
    _activation_backward(act, writable(z), writable(a), writable(grad_a), grad_z, n_threads)
    _gemm_or_empty(x.T, grad_z, dw, 1.0 if accumulate else 0.0, n_threads)
    _column_sums(grad_z, db, bool(accumulate), n_threads)
    if compute_dx:
        _gemm_or_empty(grad_z, w.T, dx, 0.0, n_threads)

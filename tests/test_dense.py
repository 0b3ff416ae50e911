"""Fused dense forward and dense backward: vs the reference, finite differences, threads, accumulation."""

import numpy as np
import pytest

import fastbp
from fastbp import kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

# (n_samples, n_in, n_out): 1, primes, non-multiples of MR/NR/KC/MC, and k above KC.
SHAPES = [(1, 1, 1), (7, 13, 29), (32, 64, 10), (97, 300, 33), (150, 31, 130)]


def dense_reference(x, w, b, act):
    x64, w64, b64 = (v.astype(np.float64) for v in (x, w, b))
    z = np.empty((x.shape[0], w.shape[1]))
    a = np.empty_like(z)
    reference.dense_forward(x64, w64, b64, R.ACTIVATION_ID[act], z, a, 1)
    return z, a


def layer(rng, shape, dtype):
    m, k, n = shape
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    return x, w, b


def tol(dtype, k):
    return dict(rtol=(k + 10) * 4 * eps(dtype), atol=(k + 10) * 4 * eps(dtype))


@pytest.mark.parametrize("act", R.ACTIVATIONS)
def test_dense_forward_matches_reference(backend, dtype, rng, act):
    for shape in SHAPES:
        x, w, b = layer(rng, shape, dtype)
        z_out = np.empty((shape[0], shape[2]), dtype)
        a = kernels.dense_forward(x, w, b, act, preactivation_out=z_out)
        z_ref, a_ref = dense_reference(x, w, b, act)
        np.testing.assert_allclose(z_out, z_ref, **tol(dtype, shape[1]))
        np.testing.assert_allclose(a, a_ref, **tol(dtype, shape[1]))


def test_dense_forward_strided_inputs(backend, dtype, rng):
    x, w, b = layer(rng, (40, 50, 20), dtype)
    xf, wt = np.asfortranarray(x), np.ascontiguousarray(w.T).T  # F-ordered x, transposed-view w
    a = kernels.dense_forward(xf[::2], wt, b, "tanh")
    np.testing.assert_allclose(a, dense_reference(x[::2], w, b, "tanh")[1], **tol(dtype, 50))


def test_dense_forward_zero_inputs_gives_bias(backend, dtype):
    b = np.arange(3, dtype=dtype)
    a = kernels.dense_forward(np.ones((4, 0), dtype), np.ones((0, 3), dtype), b, "relu")
    np.testing.assert_array_equal(a, np.tile(b, (4, 1)))


def backward_reference(x, w, z, a, g, act):
    args = [v.astype(np.float64) for v in (x, w, z, a, g)]
    m, k = x.shape
    n = w.shape[1]
    delta, dw, db, dx = np.empty((m, n)), np.empty((k, n)), np.empty(n), np.empty((m, k))
    reference.dense_backward(*args[:5], R.ACTIVATION_ID[act], delta, dw, db, dx, True, False, 1)
    return dw, db, dx


@pytest.mark.parametrize("act", R.ACTIVATIONS)
def test_dense_backward_matches_reference(backend, dtype, rng, act):
    for shape in SHAPES:
        x, w, b = layer(rng, shape, dtype)
        z = np.empty((shape[0], shape[2]), dtype)
        a = kernels.dense_forward(x, w, b, act, preactivation_out=z)
        g = rng.standard_normal(a.shape).astype(dtype)
        dw, db, dx = kernels.dense_backward(x, w, a, g, act, preactivation=z)
        ref = backward_reference(x, w, z, a, g, act)
        k = max(shape)
        for got, expected, name in zip((dw, db, dx), ref, ("dw", "db", "dx")):
            scale = np.abs(expected).max() + 1
            np.testing.assert_allclose(got, expected, rtol=tol(dtype, k)["rtol"], atol=tol(dtype, k)["atol"] * scale,
                                       err_msg=f"{act} {shape} {name}")


@pytest.mark.parametrize("act", ["tanh", "gelu", "softmax", "softplus"])
def test_dense_gradients_match_finite_differences(backend, rng, act):
    x, w, b = layer(rng, (6, 5, 4), np.float64)
    g = rng.standard_normal((6, 4))

    def objective(x_, w_, b_):
        return float(np.sum(g * kernels.dense_forward(x_, w_, b_, act)))

    z = np.empty((6, 4))
    a = kernels.dense_forward(x, w, b, act, preactivation_out=z)
    dw, db, dx = kernels.dense_backward(x, w, a, g, act, preactivation=z)
    h = 1e-6
    for param, grad in ((x, dx), (w, dw), (b, db)):
        numeric = np.empty_like(param)
        for idx in np.ndindex(param.shape):
            saved = param[idx]
            param[idx] = saved + h
            up = objective(x, w, b)
            param[idx] = saved - h
            down = objective(x, w, b)
            param[idx] = saved
            numeric[idx] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_dense_backward_accumulates_and_skips_dx(backend, dtype, rng):
    x, w, b = layer(rng, (23, 17, 11), dtype)
    a = kernels.dense_forward(x, w, b, "relu")
    g = rng.standard_normal(a.shape).astype(dtype)
    dw1, db1, _ = kernels.dense_backward(x, w, a, g, "relu")
    dw, db = np.ones_like(dw1), np.ones_like(db1)
    dw_out, db_out, dx = kernels.dense_backward(x, w, a, g, "relu", dw_out=dw, db_out=db,
                                                compute_dx=False, accumulate=True)
    assert dx is None and dw_out is dw and db_out is db
    np.testing.assert_allclose(dw, dw1 + 1, **tol(dtype, 23))
    np.testing.assert_allclose(db, db1 + 1, **tol(dtype, 23))


def test_dense_backward_in_place_delta(backend, dtype, rng):
    x, w, b = layer(rng, (19, 8, 6), dtype)
    a = kernels.dense_forward(x, w, b, "sigmoid")
    g = rng.standard_normal(a.shape).astype(dtype)
    expected = kernels.dense_backward(x, w, a, g, "sigmoid")
    g_buf = g.copy()
    got = kernels.dense_backward(x, w, a, g_buf, "sigmoid", grad_preactivation_out=g_buf)
    np.testing.assert_allclose(g_buf, g * a * (1 - a), rtol=4 * eps(dtype), atol=4 * eps(dtype))
    for e, o in zip(expected, got):
        np.testing.assert_array_equal(e, o)


@pytest.mark.parametrize("shape", [(1, 1, 1), (257, 300, 130)])
def test_dense_bitwise_identical_for_1_and_2_threads(backend, dtype, rng, threads, shape):
    x, w, b = layer(rng, shape, dtype)
    results = []
    for n in (1, 2):
        threads(n)
        a = kernels.dense_forward(x, w, b, "gelu", preactivation_out=(z := np.empty((shape[0], shape[2]), dtype)))
        g = np.sin(a)
        results.append((a, *kernels.dense_backward(x, w, a, g, "gelu", preactivation=z)))
    for one, two in zip(*results):
        np.testing.assert_array_equal(one, two)


def test_dense_backends_agree(dtype, rng):
    x, w, b = layer(rng, (64, 100, 30), dtype)
    g = rng.standard_normal((64, 30)).astype(dtype)
    results = {}
    for name in ("cython", "numba"):
        with fastbp.backend(name):
            a = kernels.dense_forward(x, w, b, "elu")
            results[name] = (a, *kernels.dense_backward(x, w, a, g, "elu"))
    for c, n in zip(results["cython"], results["numba"]):
        np.testing.assert_allclose(c, n, **tol(dtype, 100))


def test_dense_backward_refuses_a_delta_partly_overlapping_grad_output(backend, dtype, rng):
    x = rng.standard_normal((4, 3)).astype(dtype)
    w = rng.standard_normal((3, 5)).astype(dtype)
    a = kernels.dense_forward(x, w, np.zeros(5, dtype), "tanh")
    base = rng.standard_normal(25).astype(dtype)
    grad_output, delta = base[:20].reshape(4, 5), base[5:25].reshape(4, 5)
    before = base.copy()
    with pytest.raises(ValueError, match="grad_preactivation_out must not overlap the inputs, "
                                         "but it partly overlaps grad_output"):
        kernels.dense_backward(x, w, a, grad_output, "tanh", grad_preactivation_out=delta)
    np.testing.assert_array_equal(base, before)
    # in place through another view object of the same memory: allowed, same result as a separate delta
    expected = kernels.dense_backward(x, w, a, grad_output.copy(), "tanh")
    got = kernels.dense_backward(x, w, a, grad_output, "tanh", grad_preactivation_out=base[:20].reshape(4, 5))
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(g, e)

"""Max, average and global average pooling: the reference, PyTorch, both backends, threads, bad input."""

import numpy as np
import pytest

import fastbp
from fastbp import _geometry, kernels
from fastbp._kernels import reference

from conftest import eps

# (n, h, w, c, pool_size, stride, padding): odd sizes, pools 1-4, strides 1-3,
# overlapping windows, padding forms, 1 to 64 channels, batch 1, LeNet's pools.
CASES = [
    (1, 5, 7, 1, 1, None, 0),
    (2, 7, 9, 3, 3, 2, 1),
    (1, 6, 6, 2, 2, None, 0),
    (3, 11, 8, 5, (3, 2), (1, 3), (1, 0)),
    (2, 9, 13, 64, 4, 3, (1, 2, 0, 3)),
    (1, 13, 13, 7, 3, 1, "same"),
    (64, 24, 24, 6, 2, None, 0),  # LeNet-5's first pool: parallel sizes
]


def images(rng, case, dtype):
    n, h, w, c = case[:4]
    return rng.standard_normal((n, h, w, c)).astype(dtype)


def pool_args(case):
    return dict(pool_size=case[4], stride=case[5], padding=case[6])


def reference_pools(x, grad, case, count_include_pad):
    shape, geometry = _geometry.pool2d("test", x.shape, **pool_args(case))
    out, argmax, dx = np.empty(shape, x.dtype), np.empty(shape, np.int64), np.empty_like(x)
    reference.max_pool2d_forward(x, geometry, out, argmax, 1)
    reference.max_pool2d_backward(grad, argmax, dx, 1)
    avg, avg_dx = np.empty(shape, x.dtype), np.empty_like(x)
    reference.avg_pool2d_forward(x, geometry, count_include_pad, avg, 1)
    reference.avg_pool2d_backward(grad, geometry, count_include_pad, avg_dx, 1)
    return out, argmax, dx, avg, avg_dx


def run_pools(x, grad, case, count_include_pad):
    args = pool_args(case)
    out, argmax = kernels.max_pool2d_forward(x, **args)
    dx = kernels.max_pool2d_backward(grad, argmax, x.shape)
    avg = kernels.avg_pool2d_forward(x, count_include_pad=count_include_pad, **args)
    avg_dx = kernels.avg_pool2d_backward(grad, x.shape, count_include_pad=count_include_pad, **args)
    return out, argmax, dx, avg, avg_dx


def out_shape(x, case):
    return _geometry.pool2d("test", x.shape, **pool_args(case))[0]


@pytest.mark.parametrize("n_threads", [1, 2])
def test_pools_match_reference(backend, dtype, rng, threads, n_threads):
    threads(n_threads)
    for i, case in enumerate(CASES):
        x = images(rng, case, dtype)
        if i % 2:  # ties: few distinct values
            x = np.round(x).astype(dtype)
        grad = rng.standard_normal(out_shape(x, case)).astype(dtype)
        got = run_pools(x, grad, case, count_include_pad=bool(i % 2))
        want = reference_pools(x, grad, case, count_include_pad=bool(i % 2))
        for one, two in zip(got[:3], want[:3]):  # max pooling: exact
            np.testing.assert_array_equal(one, two)
        for one, two in zip(got[3:], want[3:]):
            np.testing.assert_allclose(one, two, rtol=32 * eps(dtype), atol=32 * eps(dtype))
        g = kernels.global_avg_pool2d_forward(x)
        np.testing.assert_allclose(g, x.astype(np.float64).mean(axis=(1, 2)), rtol=8 * eps(dtype), atol=8 * eps(dtype))
        dg = kernels.global_avg_pool2d_backward(grad[:, 0, 0, :].copy(), x.shape)
        np.testing.assert_allclose(dg, np.broadcast_to(grad[:, :1, :1, :] / (x.shape[1] * x.shape[2]), x.shape),
                                   rtol=2 * eps(dtype), atol=0)


def test_pools_bitwise_same_for_any_thread_count(backend, dtype, rng, threads):
    for case in (CASES[1], CASES[4], CASES[6]):
        x = images(rng, case, dtype)
        grad = rng.standard_normal(out_shape(x, case)).astype(dtype)
        results = []
        for n_threads in (1, 2):
            threads(n_threads)
            results.append(run_pools(x, grad, case, True) + (kernels.global_avg_pool2d_forward(x),))
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two)


def test_backends_agree(dtype, rng):
    for case in CASES[1:5]:
        x = images(rng, case, dtype)
        grad = rng.standard_normal(out_shape(x, case)).astype(dtype)
        with fastbp.backend("cython"):
            ours = run_pools(x, grad, case, False)
        with fastbp.backend("numba"):
            theirs = run_pools(x, grad, case, False)
        for one, two in zip(ours, theirs):
            np.testing.assert_allclose(one, two, rtol=16 * eps(dtype), atol=16 * eps(dtype))


def test_reference_gradients_by_finite_differences(rng):
    case = (2, 7, 6, 3, 3, 2, 1)
    x = images(rng, case, np.float64)
    grad = rng.standard_normal(out_shape(x, case))
    for count_include_pad in (True, False):
        _, _, dx, _, avg_dx = reference_pools(x, grad, case, count_include_pad)
        for index, analytic in ((0, dx), (3, avg_dx)):
            def loss(x_):
                return float(np.sum(grad * reference_pools(x_, grad, case, count_include_pad)[index]))

            numeric = np.empty_like(x)
            h = 1e-6
            for i in np.ndindex(x.shape):
                old = x[i]
                x[i] = old + h
                up = loss(x)
                x[i] = old - h
                down = loss(x)
                x[i] = old
                numeric[i] = (up - down) / (2 * h)
            np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def test_hand_worked_example():
    # The 3 of the top row wins its tie with the 3 below it; the two 4s are in different windows.
    x = np.array([[1.0, 3.0, 2.0], [3.0, 0.0, 1.0], [4.0, 4.0, -1.0]]).reshape(1, 3, 3, 1)
    out, argmax = kernels.max_pool2d_forward(x, 2, stride=1)
    np.testing.assert_array_equal(out[0, :, :, 0], [[3, 3], [4, 4]])
    np.testing.assert_array_equal(argmax[0, :, :, 0], [[1, 1], [6, 7]])  # first maximum in scan order
    dx = kernels.max_pool2d_backward(np.ones_like(out), argmax, x.shape)
    np.testing.assert_array_equal(dx[0, :, :, 0], [[0, 2, 0], [0, 0, 0], [1, 1, 0]])
    np.testing.assert_array_equal(kernels.avg_pool2d_forward(x, 2, stride=1)[0, :, :, 0], [[1.75, 1.5], [2.75, 1]])
    np.testing.assert_array_equal(kernels.global_avg_pool2d_forward(x), [[17 / 9]])


@pytest.mark.parametrize("n_threads", [1, 2])
def test_matches_torch(backend, dtype, rng, threads, n_threads):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    threads(n_threads)
    rel = 1e-5 if dtype == np.float32 else 1e-10
    for i, case in enumerate(CASES):
        x = images(rng, case, dtype)
        if i % 2:
            x = np.round(x).astype(dtype)  # ties
        if i == 3:
            x[0, 0, 0, 0] = np.nan  # NaN propagates as in torch
        shape, (ph, pw, sh, sw, pt, pl) = _geometry.pool2d("test", x.shape, **pool_args(case))
        pb = (shape[1] - 1) * sh + ph - x.shape[1] - pt
        pr = (shape[2] - 1) * sw + pw - x.shape[2] - pl
        grad = rng.standard_normal(shape).astype(dtype)
        for count_include_pad in (True, False):
            out, argmax, dx, avg, avg_dx = run_pools(x, grad, case, count_include_pad)
            xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
            gt = torch.tensor(grad.transpose(0, 3, 1, 2).copy())
            symmetric = (pt, pl) == (pb, pr)
            if symmetric:  # torch pads only symmetrically
                mt, it = F.max_pool2d(xt, (ph, pw), (sh, sw), (pt, pl), return_indices=True)
                mt.backward(gt)
                np.testing.assert_array_equal(out, mt.detach().numpy().transpose(0, 2, 3, 1))
                np.testing.assert_array_equal(argmax, it.numpy().transpose(0, 2, 3, 1))
                np.testing.assert_array_equal(dx, xt.grad.numpy().transpose(0, 2, 3, 1))
                xt.grad = None
                at = F.avg_pool2d(xt, (ph, pw), (sh, sw), (pt, pl), count_include_pad=count_include_pad)
            else:  # explicit zero padding: the same as count_include_pad=True
                if not count_include_pad:
                    continue
                at = F.avg_pool2d(F.pad(xt, (pl, pr, pt, pb)), (ph, pw), (sh, sw))
            at.backward(gt)
            theirs = at.detach().numpy().transpose(0, 2, 3, 1)
            finite = np.isfinite(theirs)
            assert np.array_equal(finite, np.isfinite(avg))
            assert np.max(np.abs(avg - theirs)[finite]) <= rel * np.max(np.abs(theirs[finite]))
            if i != 3:
                theirs = xt.grad.numpy().transpose(0, 2, 3, 1)
                assert np.max(np.abs(avg_dx - theirs)) <= rel * np.max(np.abs(theirs))
        gt_ = F.adaptive_avg_pool2d(torch.tensor(x.transpose(0, 3, 1, 2).copy()), 1).numpy()[:, :, 0, 0]
        g = kernels.global_avg_pool2d_forward(x)
        finite = np.isfinite(gt_)
        assert np.array_equal(finite, np.isfinite(g))
        assert np.max(np.abs(g - gt_)[finite]) <= rel * max(np.max(np.abs(gt_[finite])), 1.0)


def test_out_aliasing_refused(rng):
    x = images(rng, CASES[1], np.float64)
    with pytest.raises(ValueError, match="out must not overlap"):
        kernels.avg_pool2d_forward(x, 1, out=x)
    out, argmax = kernels.max_pool2d_forward(x, 3, 2, 1)
    buf = np.zeros(x.size)
    grad = buf[:out.size].reshape(out.shape)
    with pytest.raises(ValueError, match="dx_out must not overlap"):
        kernels.max_pool2d_backward(grad, argmax, x.shape, dx_out=buf.reshape(x.shape))
    with pytest.raises(ValueError, match="out must not overlap"):
        kernels.global_avg_pool2d_forward(x, out=x.reshape(-1)[:6].reshape(2, 3))


@pytest.mark.parametrize("call, error, match", [
    (lambda x: kernels.max_pool2d_forward(x[0], 2), ValueError, r"x must be 4-D"),
    (lambda x: kernels.max_pool2d_forward(x, 10), ValueError, r"window 10x10.*larger than the padded image 7x9"),
    (lambda x: kernels.max_pool2d_forward(x, 2, stride=0), ValueError, r"stride must be positive"),
    (lambda x: kernels.avg_pool2d_forward(x, 2, padding=2), ValueError, r"must be smaller than the pool size"),
    (lambda x: kernels.avg_pool2d_forward(x, 0), ValueError, r"pool_size must be positive"),
    (lambda x: kernels.max_pool2d_forward(x.astype(np.int32), 2), TypeError, r"dtype float32 or float64"),
    (lambda x: kernels.max_pool2d_backward(np.ones((2, 3, 4, 3)), np.full((2, 3, 4, 3), 63), (2, 7, 9, 3)),
     ValueError, r"argmax values must lie in \[0, 63\)"),
    (lambda x: kernels.max_pool2d_backward(np.ones((2, 3, 4, 3)), np.zeros((2, 3, 4, 3), np.int32), (2, 7, 9, 3)),
     ValueError, r"argmax must be an int64 ndarray"),
    (lambda x: kernels.max_pool2d_backward(np.ones((2, 3, 4, 3)), np.zeros((2, 3, 4, 3), np.int64), (2, 7, 9, 4)),
     ValueError, r"differ in batch or channels"),
    (lambda x: kernels.avg_pool2d_backward(np.ones((2, 3, 3, 3)), (2, 7, 9, 3), 2), ValueError,
     r"grad_output must have shape \(2, 3, 4, 3\)"),
    (lambda x: kernels.global_avg_pool2d_backward(np.ones((2, 3)), (2, 7, 9)), ValueError, r"input_shape must be"),
])
def test_bad_input(rng, call, error, match):
    x = images(rng, CASES[1], np.float64)
    with pytest.raises(error, match=match):
        call(x)


@pytest.mark.parametrize("channels", [1, 5, 8, 15, 16, 20, 33])
def test_max_pool_nan_inf_and_ties_match_reference(backend, dtype, rng, channels):
    # Both compiled paths: a pixel's channels in one masked vector (float32, fewer
    # than 16 channels) and the channel loop (wider, or float64); torch's rules
    # on NaN (the last one wins), -inf windows (their first pixel) and ties.
    x = np.round(rng.standard_normal((2, 7, 9, channels))).astype(dtype)
    x[0, 0, 0, :] = np.nan  # one NaN in a window
    x[0, 2:4, 2:4, :] = np.nan  # a window of NaNs: the last one's position wins
    x[1, :3, :3, :] = -np.inf  # windows of -inf (3x3 with stride 2 reaches them twice)
    x[1, 4, 5, ::2] = np.inf
    for pool_size, stride, padding in ((2, None, 0), (3, 2, 1)):
        shape, geometry = _geometry.pool2d("test", x.shape, pool_size, stride, padding)
        want, want_at = np.empty(shape, dtype), np.empty(shape, np.int64)
        reference.max_pool2d_forward(x, geometry, want, want_at, 1)
        got, got_at = kernels.max_pool2d_forward(x, pool_size, stride=stride, padding=padding)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_at, want_at)

"""2-D convolution kernels: the NumPy reference, finite differences, PyTorch, both backends, threads, bad input."""

import numpy as np
import pytest

import fastbp
from fastbp import _geometry, kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

# (n, h, w, c_in, c_out, (kh, kw), stride, padding, dilation, activation): odd and prime
# sizes, strides 1-3, every padding form, dilation 1-2, 1x1 to 7x7, 1 to 64 channels,
# batch 1, the LeNet-5 and VGG shapes; one activation each, every family covered.
CASES = [
    (1, 7, 5, 1, 1, (1, 1), 1, "valid", 1, "identity"),
    (2, 9, 11, 3, 4, (3, 3), 1, "same", 1, "relu"),
    (1, 13, 10, 5, 7, (3, 2), 2, 1, 2, "tanh"),
    (3, 12, 12, 6, 16, (5, 5), 1, "valid", 1, "relu"),
    (1, 17, 15, 2, 3, (7, 7), 3, (2, 1, 3, 0), 1, "gelu"),
    (2, 8, 8, 64, 33, (1, 1), 1, 0, 1, "softmax"),
    (1, 11, 9, 4, 64, (2, 3), 3, "same", 1, "sigmoid"),
    (2, 10, 10, 32, 12, (3, 3), 2, (1, 2), 2, "leaky_relu"),
    (4, 16, 16, 32, 64, (3, 3), 1, "same", 1, "relu"),  # VGG block, parallel sizes
    # dx gathered (stride 1, >= 16 input channels) with dilation and uneven padding,
    # and scattered (col2im) where the padding exceeds the kernel's span.
    (1, 9, 7, 16, 5, (3, 4), 1, (2, 0, 1, 3), 2, "elu"),
    (1, 5, 5, 16, 3, (2, 2), 1, 2, 1, "softplus"),
    # one input channel at stride 1 (cython AVX-512 float32 gathers up to 16 pixels of a row
    # at once by register transposes): LeNet's first layer; padding, where the windows at
    # the borders take the pixel-by-pixel path; rows of more than 16 pixels with a
    # remainder; fewer than 16 taps; more than 32 (three tap groups and a part)
    (2, 28, 28, 1, 6, (5, 5), 1, "valid", 1, "relu"),
    (1, 21, 19, 1, 3, (3, 3), 1, "same", 1, "identity"),
    (1, 6, 37, 1, 2, (2, 6), 1, (1, 0, 2, 3), 1, "tanh"),
    (1, 9, 40, 1, 2, (7, 7), 1, "same", 1, "identity"),
]


def _shape_of(case):
    n, h, w, c_in, c_out, k = case[:6]
    return n, h, w, c_in, c_out, k


def operands(rng, case, dtype):
    n, h, w, c_in, c_out, (kh, kw) = _shape_of(case)
    x = rng.standard_normal((n, h, w, c_in)).astype(dtype)
    wt = (rng.standard_normal((kh, kw, c_in, c_out)) / np.sqrt(kh * kw * c_in)).astype(dtype)
    b = rng.standard_normal(c_out).astype(dtype)
    return x, wt, b


def geometry_args(case):
    stride, padding, dilation, act = case[6:]
    return dict(stride=stride, padding=padding, dilation=dilation), act


def reference_conv(x, w, b, grad, case, compute_backward=True):
    """Forward a, and dw, db, dx, of the NumPy reference in float64."""
    geo, act = geometry_args(case)
    shape, geometry = _geometry.conv2d(x.shape, w.shape, **geo)
    x64, w64, b64 = (v.astype(np.float64) for v in (x, w, b))
    z, a = np.empty(shape), np.empty(shape)
    reference.conv2d_forward(x64, w64, b64, geometry, R.ACTIVATION_ID[act], z, a, 1)
    if not compute_backward:
        return a
    dw, db, dx = np.empty(w.shape), np.empty(b.shape), np.empty(x.shape)
    reference.conv2d_backward(x64, w64, z, a, grad.astype(np.float64), R.ACTIVATION_ID[act], geometry,
                              np.empty(shape), dw, db, dx, True, False, 1)
    return a, dw, db, dx


def run_conv(x, w, b, grad, case):
    geo, act = geometry_args(case)
    z = np.empty(kernels.conv2d_forward(x, w, b, **geo).shape, x.dtype) if act == "gelu" else None
    a = kernels.conv2d_forward(x, w, b, activation=act, preactivation_out=z, **geo)
    dw, db, dx = kernels.conv2d_backward(x, w, a, grad, activation=act, preactivation=z, **geo)
    return a, dw, db, dx


def assert_close(got, want, dtype, terms):
    """Each value within (terms + 10)·4·eps of the largest magnitude of want (sums of ``terms`` products)."""
    scale = max(float(np.max(np.abs(want))), 1.0) if want.size else 1.0
    np.testing.assert_allclose(got, want, rtol=0, atol=(terms + 10) * 4 * eps(dtype) * scale)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_conv2d_matches_reference(backend, dtype, rng, threads, n_threads):
    threads(n_threads)
    for case in CASES:
        x, w, b = operands(rng, case, dtype)
        a_shape = kernels.conv2d_forward(x, w, b, **geometry_args(case)[0]).shape
        grad = rng.standard_normal(a_shape).astype(dtype)
        a, dw, db, dx = run_conv(x, w, b, grad, case)
        a_ref, dw_ref, db_ref, dx_ref = reference_conv(x, w, b, grad, case)
        k = w.shape[0] * w.shape[1] * w.shape[2]
        m = a.shape[0] * a.shape[1] * a.shape[2]
        assert_close(a, a_ref, dtype, k)
        assert_close(dw, dw_ref, dtype, m)
        assert_close(db, db_ref, dtype, m)
        assert_close(dx, dx_ref, dtype, w.shape[3] * k)


def test_conv2d_bitwise_same_for_any_thread_count(backend, dtype, rng, threads):
    # The last two have enough row blocks for forward to share whole blocks out among threads.
    for case in (CASES[3], CASES[5], CASES[8], CASES[9], (40, 28, 28, 1, 6, (5, 5), 1, "valid", 1, "relu"),
                 (16, 16, 16, 32, 64, (3, 3), 1, "same", 1, "relu")):
        x, w, b = operands(rng, case, dtype)
        grad = rng.standard_normal(kernels.conv2d_forward(x, w, b, **geometry_args(case)[0]).shape).astype(dtype)
        results = []
        for n_threads in (1, 2):
            threads(n_threads)
            results.append(run_conv(x, w, b, grad, case))
        for one, two in zip(*results):
            np.testing.assert_array_equal(one, two)


def test_backends_agree(dtype, rng):
    for case in CASES[1:6]:
        x, w, b = operands(rng, case, dtype)
        grad = rng.standard_normal(kernels.conv2d_forward(x, w, b, **geometry_args(case)[0]).shape).astype(dtype)
        with fastbp.backend("cython"):
            ours = run_conv(x, w, b, grad, case)
        with fastbp.backend("numba"):
            theirs = run_conv(x, w, b, grad, case)
        k = w.shape[0] * w.shape[1] * w.shape[2]
        for one, two in zip(ours, theirs):
            assert_close(one, two, dtype, k * 16)


def test_reference_gradients_by_finite_differences(rng):
    case = (2, 7, 6, 3, 4, (3, 2), 2, (1, 0, 1, 1), 2, "tanh")
    x, w, b = operands(rng, case, np.float64)
    geo, act = geometry_args(case)
    a = reference_conv(x, w, b, None, case, compute_backward=False)
    weights = rng.standard_normal(a.shape)  # loss = Σ weights ⊙ a
    _, dw, db, dx = reference_conv(x, w, b, weights, case)

    def loss(x_, w_, b_):
        return float(np.sum(weights * reference_conv(x_, w_, b_, None, case, compute_backward=False)))

    h = 1e-6
    for array, grad in ((w, dw), (b, db), (x, dx)):
        numeric = np.empty_like(array)
        for i in np.ndindex(array.shape):
            old = array[i]
            array[i] = old + h
            up = loss(x, w, b)
            array[i] = old - h
            down = loss(x, w, b)
            array[i] = old
            numeric[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


def test_hand_worked_example():
    # 1 image 3x3, 1 channel, 2x2 kernel of ones, stride 1, no padding: sums of 2x2 blocks.
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    w = np.ones((2, 2, 1, 1))
    a = kernels.conv2d_forward(x, w, np.array([0.5]))
    np.testing.assert_array_equal(a[0, :, :, 0], [[8.5, 12.5], [20.5, 24.5]])
    dw, db, dx = kernels.conv2d_backward(x, w, a, np.ones_like(a))
    np.testing.assert_array_equal(dw[:, :, 0, 0], [[8, 12], [20, 24]])
    np.testing.assert_array_equal(db, [4])
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 2, 1], [2, 4, 2], [1, 2, 1]])


TORCH_ACTIVATIONS = {
    "identity": lambda torch, z: z,
    "relu": lambda torch, z: torch.relu(z),
    "tanh": lambda torch, z: torch.tanh(z),
    "sigmoid": lambda torch, z: torch.sigmoid(z),
    "gelu": lambda torch, z: torch.nn.functional.gelu(z),
    "leaky_relu": lambda torch, z: torch.nn.functional.leaky_relu(z, R.LEAKY_RELU_SLOPE),
    "softmax": lambda torch, z: torch.softmax(z, dim=1),  # over the channels of each pixel
    "elu": lambda torch, z: torch.nn.functional.elu(z, R.ELU_ALPHA),
    "softplus": lambda torch, z: torch.nn.functional.softplus(z),
}


@pytest.mark.parametrize("n_threads", [1, 2])
def test_matches_torch(backend, dtype, rng, threads, n_threads):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    threads(n_threads)
    rel = 1e-5 if dtype == np.float32 else 1e-10
    for case in CASES:
        geo, act = geometry_args(case)
        x, w, b = operands(rng, case, dtype)
        shape, (sh, sw, pt, pl, dh, dw_) = _geometry.conv2d(x.shape, w.shape, **geo)
        grad = rng.standard_normal(shape).astype(dtype)
        a, dw, db, dx = run_conv(x, w, b, grad, case)
        xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
        wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        # torch pads symmetrically: pad explicitly to the kernels' (top, bottom, left, right).
        pb = (shape[1] - 1) * sh + dh * (w.shape[0] - 1) + 1 - x.shape[1] - pt
        pr = (shape[2] - 1) * sw + dw_ * (w.shape[1] - 1) + 1 - x.shape[2] - pl
        xp = F.pad(xt, (pl, max(pr, 0), pt, max(pb, 0)))
        zt = F.conv2d(xp, wt, bt, stride=(sh, sw), dilation=(dh, dw_))
        at = TORCH_ACTIVATIONS[act](torch, zt)
        at.backward(torch.tensor(grad.transpose(0, 3, 1, 2).copy()))
        for ours, theirs in ((a, at.detach().numpy().transpose(0, 2, 3, 1)),
                             (dw, wt.grad.numpy().transpose(2, 3, 1, 0)), (db, bt.grad.numpy()),
                             (dx, xt.grad.numpy().transpose(0, 2, 3, 1))):
            assert ours.shape == theirs.shape
            assert np.max(np.abs(ours - theirs)) <= rel * np.max(np.abs(theirs))


def test_same_padding_matches_torch_same(rng):
    torch = pytest.importorskip("torch")
    x, w, b = operands(rng, (1, 9, 8, 2, 3, (4, 3), 1, "same", 2, "identity"), np.float64)
    a = kernels.conv2d_forward(x, w, b, padding="same", dilation=2)
    zt = torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2).copy()),
                                    torch.tensor(w.transpose(3, 2, 0, 1).copy()), torch.tensor(b),
                                    padding="same", dilation=2)
    np.testing.assert_allclose(a, zt.numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12)


def test_accumulate_and_no_dx(backend, dtype, rng):
    case = CASES[2]
    x, w, b = operands(rng, case, dtype)
    geo, act = geometry_args(case)
    a = kernels.conv2d_forward(x, w, b, activation=act, **geo)
    grad = rng.standard_normal(a.shape).astype(dtype)
    dw, db, dx = kernels.conv2d_backward(x, w, a, grad, activation=act, **geo)
    dw2, db2 = np.ones_like(dw), np.ones_like(db)
    _, _, none = kernels.conv2d_backward(x, w, a, grad, activation=act, dw_out=dw2, db_out=db2,
                                         compute_dx=False, accumulate=True, **geo)
    assert none is None
    np.testing.assert_allclose(dw2, dw + 1, rtol=10 * eps(dtype), atol=10 * eps(dtype))
    np.testing.assert_allclose(db2, db + 1, rtol=10 * eps(dtype), atol=10 * eps(dtype))


def test_delta_in_place_and_out_buffers_reused(backend, dtype, rng):
    case = CASES[1]
    x, w, b = operands(rng, case, dtype)
    geo, act = geometry_args(case)
    out = np.full(kernels.conv2d_forward(x, w, b, **geo).shape, np.nan, dtype)
    a = kernels.conv2d_forward(x, w, b, activation=act, out=out, **geo)
    assert a is out
    grad = rng.standard_normal(a.shape).astype(dtype)
    expected = kernels.conv2d_backward(x, w, a, grad, activation=act, **geo)
    g = grad.copy()
    got = kernels.conv2d_backward(x, w, a, g, activation=act, grad_preactivation_out=g, **geo)
    for one, two in zip(got, expected):
        np.testing.assert_array_equal(one, two)


def test_out_aliasing_refused(rng):
    x, w, b = operands(rng, CASES[1], np.float64)
    a = kernels.conv2d_forward(x, w, b, padding="same")
    with pytest.raises(ValueError, match="preactivation_out must not overlap"):
        kernels.conv2d_forward(x, w, b, padding="same", out=a, preactivation_out=a)
    with pytest.raises(ValueError, match="dx_out must not overlap"):
        kernels.conv2d_backward(x, w, a, a.copy(), padding="same", dx_out=x)
    with pytest.raises(ValueError, match="dw_out must not overlap"):
        kernels.conv2d_backward(x, w, a, a.copy(), padding="same", dw_out=w)
    buf = np.zeros(2 * x.size)
    view = buf[:x.size].reshape(x.shape)
    view[...] = x
    with pytest.raises(ValueError, match="out must not overlap"):
        kernels.conv2d_forward(view, np.ones((1, 1, 3, 3)), np.zeros(3), out=buf[3:3 + x.size].reshape(x.shape))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(x=np.ones((9, 8, 3))), ValueError, r"x must be 4-D \(n_samples, height, width, channels\), got shape \(9, 8, 3\)"),
    (dict(w=np.ones((3, 3, 2, 4))), ValueError, r"w has shape \(3, 3, 2, 4\).*x has shape \(2, 9, 8, 3\) with 3 channels"),
    (dict(w=np.ones((3, 3, 4))), ValueError, r"w must be 4-D"),
    (dict(w=np.ones((10, 3, 3, 4))), ValueError, r"larger than the padded image 9x8"),
    (dict(w=np.ones((3, 3, 3, 4)), dilation=5), ValueError, r"window 3x3 \(spanning 11x11"),
    (dict(stride=0), ValueError, r"stride must be positive, got 0"),
    (dict(dilation=(1, 0)), ValueError, r"dilation must be positive"),
    (dict(padding=-1), ValueError, r"padding must not be negative"),
    (dict(padding="full"), ValueError, r"padding must be 'valid', 'same'"),
    (dict(stride=1.5), TypeError, r"stride must be a positive int"),
    (dict(b=np.ones(3)), ValueError, r"b must have shape \(4,\)"),
    (dict(w=np.ones((3, 3, 3, 4), np.float32)), TypeError, r"w has dtype float32"),
    (dict(x=np.ones((2, 9, 8, 3), np.int64)), TypeError, r"x must have dtype float32 or float64"),
    (dict(x=np.ones((2, 0, 8, 3))), ValueError, r"at least one pixel"),
    (dict(activation="swish"), ValueError, r"unknown activation 'swish'"),
])
def test_bad_input(kwargs, error, match):
    args = dict(x=np.ones((2, 9, 8, 3)), w=np.ones((3, 3, 3, 4)), b=np.ones(4))
    args.update(kwargs)
    out = np.full((2, 7, 6, 4), 7.0)
    with pytest.raises(error, match=match):
        kernels.conv2d_forward(args.pop("x"), args.pop("w"), args.pop("b"),
                               out=out if "x" not in kwargs and "w" not in kwargs else None, **args)
    assert np.all(out == 7.0)  # nothing written before the error


def test_backward_bad_input():
    x, w = np.ones((2, 9, 8, 3)), np.ones((3, 3, 3, 4))
    a = np.ones((2, 7, 6, 4))
    with pytest.raises(ValueError, match=r"grad_output must have shape \(2, 7, 6, 4\)"):
        kernels.conv2d_backward(x, w, a, np.ones((2, 7, 5, 4)))
    with pytest.raises(ValueError, match=r"output must have shape \(2, 4, 3, 4\)"):
        kernels.conv2d_backward(x, w, a, a, stride=2)
    with pytest.raises(ValueError, match="needs the preactivation"):
        kernels.conv2d_backward(x, w, a, a, activation="gelu")
    with pytest.raises(ValueError, match="accumulate=True needs dw_out"):
        kernels.conv2d_backward(x, w, a, a, accumulate=True)

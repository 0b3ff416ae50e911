"""Activations and their derivatives: vs the NumPy reference, finite differences, overflow, aliasing."""

import numpy as np
import pytest

from fastbp import kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

ACTIVATIONS = R.ACTIVATIONS
SHAPES = [(1, 1), (3, 7), (64, 33), (257, 130)]


def away_from_kinks(rng, shape):
    """Points at least 0.05 from every kink (0 and ±1), so finite differences are valid there."""
    z = rng.uniform(-3, 3, size=shape)
    for kink in (0.0, 1.0, -1.0):
        near = np.abs(z - kink) < 0.05
        z[near] += 0.1
    return z


def reference_forward(name, z):
    a = np.empty_like(z)
    reference.activation_forward(R.ACTIVATION_ID[name], z, a, 1)
    return a


def tolerance(dtype):
    return dict(rtol=50 * eps(dtype), atol=50 * eps(dtype))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_forward_matches_reference(backend, dtype, rng, name):
    for shape in SHAPES:
        z = (3 * rng.standard_normal(shape)).astype(dtype)
        a = kernels.activation(name, z)
        assert a.dtype == dtype and a.shape == shape
        np.testing.assert_allclose(a, reference_forward(name, z), **tolerance(dtype))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_matches_reference(backend, dtype, rng, name):
    for shape in SHAPES:
        z = (3 * rng.standard_normal(shape)).astype(dtype)
        g = rng.standard_normal(shape).astype(dtype)
        a = reference_forward(name, z)
        got = kernels.activation_grad(name, g, a, preactivation=z)
        expected = np.empty_like(z)
        reference.activation_backward(R.ACTIVATION_ID[name], z, a, g, expected, 1)
        np.testing.assert_allclose(got, expected, **tolerance(dtype))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_backward_matches_finite_differences(backend, rng, name):
    z = away_from_kinks(rng, (5, 9))
    g = rng.standard_normal(z.shape)
    a = kernels.activation(name, z)
    got = kernels.activation_grad(name, g, a, preactivation=z)
    h = 1e-6
    numeric = np.empty_like(z)
    for idx in np.ndindex(z.shape):  # d/dz_idx of Σ g ⊙ act(z): covers softmax's cross terms
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        numeric[idx] = np.sum(g * (kernels.activation(name, zp) - kernels.activation(name, zm))) / (2 * h)
    np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-8)


def test_float32_tanh_is_the_rational_function_on_both_backends():
    """float32 tanh is one function (tanh_rational.h, activations.tanh): within 4e-7 (7 ulp) of tanh,
    bitwise the same on both backends, NaN kept, saturating to ±1, identity below 4e-4."""
    import fastbp as fb

    grid = np.linspace(-12, 12, 2_400_001, dtype=np.float32)
    special = np.array([np.nan, np.inf, -np.inf, 3e-4, -3e-4, 1e-30, 0.0, 7.9053, 100.0], np.float32)
    z = np.concatenate([grid, special])[None, :]
    results = {}
    for name in fb.available_backends():
        with fb.backend(name):
            results[name] = kernels.activation("tanh", z)[0]
    a = next(iter(results.values()))
    np.testing.assert_allclose(a[:grid.size], np.tanh(grid.astype(np.float64)), rtol=0, atol=4e-7)
    assert np.isnan(a[grid.size]) and np.array_equal(a[grid.size + 1:grid.size + 3], [1, -1])
    np.testing.assert_array_equal(a[grid.size + 3:grid.size + 7], special[3:7])
    for name, other in results.items():
        np.testing.assert_array_equal(other, a, err_msg=name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_extreme_inputs_stay_finite(backend, dtype, name):
    z = np.array([[-1e4, -88.8, -20.0, -1e-30, 0.0, 1e-30, 20.0, 88.8, 1e4],
                  [1e4, 1e4, -1e4, -1e4, 0.0, 3.0, -3.0, 1e4, -1e4]], dtype)
    a = kernels.activation(name, z)
    assert np.all(np.isfinite(a)), a
    g = np.ones_like(z)
    assert np.all(np.isfinite(kernels.activation_grad(name, g, a, preactivation=z)))


def test_hand_worked_values(backend, dtype):
    z = np.array([[-2.0, 0.0, 0.5, 3.0]], dtype)
    expected = {
        "identity": [-2.0, 0.0, 0.5, 3.0],
        "step": [0.0, 0.0, 1.0, 1.0],
        "hardtanh": [-1.0, 0.0, 0.5, 1.0],
        "relu": [0.0, 0.0, 0.5, 3.0],
        "leaky_relu": [-0.02, 0.0, 0.5, 3.0],
        "sigmoid": [0.11920292202211755, 0.5, 0.6224593312018546, 0.9525741268224334],
        "tanh": [-0.9640275800758169, 0.0, 0.46211715726000974, 0.9950547536867305],
        "elu": [-0.8646647167633873, 0.0, 0.5, 3.0],
        "softplus": [0.1269280110429725, 0.6931471805599453, 0.9740769841801067, 3.048587351573742],
        "gelu": [-0.04550026389635842, 0.0, 0.3457312306370065, 2.99595030590511],
        "softmax": [0.005917695186492208, 0.043726181709362794, 0.07209228587072533, 0.8782638372334197],
    }
    assert set(expected) == set(ACTIVATIONS)
    for name, values in expected.items():
        np.testing.assert_allclose(kernels.activation(name, z)[0], values, rtol=4 * eps(dtype), atol=4 * eps(dtype),
                                   err_msg=name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_in_place_forward_and_backward(backend, dtype, rng, name):
    z = rng.standard_normal((17, 10)).astype(dtype)
    expected = kernels.activation(name, z)
    g = rng.standard_normal(z.shape).astype(dtype)
    expected_grad = kernels.activation_grad(name, g, expected, preactivation=z)
    buf = z.copy()
    assert kernels.activation(name, buf, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    if name not in R.NEEDS_PREACTIVATION:  # z may share a's buffer: the derivative reads a only
        g_buf = g.copy()
        assert kernels.activation_grad(name, g_buf, buf, out=g_buf) is g_buf
        np.testing.assert_array_equal(g_buf, expected_grad)


def test_softmax_rows_sum_to_one(backend, dtype, rng):
    z = (30 * rng.standard_normal((40, 13))).astype(dtype)
    np.testing.assert_allclose(kernels.activation("softmax", z).sum(axis=1), 1.0, rtol=20 * eps(dtype))


def test_gelu_derivative_needs_preactivation(backend):
    a = np.zeros((2, 2))
    with pytest.raises(ValueError, match="preactivation"):
        kernels.activation_grad("gelu", a, a)


def test_activation_bitwise_identical_for_1_and_2_threads(backend, dtype, rng, threads):
    z = (3 * rng.standard_normal((513, 129))).astype(dtype)
    g = rng.standard_normal(z.shape).astype(dtype)
    for name in ACTIVATIONS:
        threads(1)
        one = kernels.activation(name, z), kernels.activation_grad(name, g, kernels.activation(name, z), z)
        threads(2)
        two = kernels.activation(name, z), kernels.activation_grad(name, g, kernels.activation(name, z), z)
        np.testing.assert_array_equal(one[0], two[0], err_msg=name)
        np.testing.assert_array_equal(one[1], two[1], err_msg=name)


def test_torch_agrees_if_installed(backend, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z = 3 * rng.standard_normal((6, 8))
    torch_ops = {
        "identity": lambda t: t, "hardtanh": F.hardtanh, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
        "relu": F.relu, "leaky_relu": F.leaky_relu, "elu": F.elu, "softplus": F.softplus,
        "gelu": F.gelu, "softmax": lambda t: F.softmax(t, dim=1),
    }
    g = rng.standard_normal(z.shape)
    for name, op in torch_ops.items():
        t = torch.tensor(z, requires_grad=True)
        out = op(t)
        out.backward(torch.tensor(g))
        a = kernels.activation(name, z)
        np.testing.assert_allclose(a, out.detach().numpy(), rtol=1e-12, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(kernels.activation_grad(name, g, a, z), t.grad.numpy(), rtol=1e-9, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_out_partly_overlapping_an_input_is_refused(backend, dtype, name):
    base = np.linspace(-2, 2, 24).astype(dtype)
    z, out = base[:20].reshape(5, 4), base[4:24].reshape(5, 4)  # both C-contiguous, 16 elements shared
    before = base.copy()
    with pytest.raises(ValueError, match="out must not overlap the inputs, but it partly overlaps z"):
        kernels.activation(name, z, out=out)
    a = kernels.activation(name, np.linspace(-1, 1, 20).reshape(5, 4).astype(dtype))
    for grad_output, output, culprit in [(z, a, "but it partly overlaps grad_output"),
                                         (a.copy(), z, "but it overlaps output")]:
        with pytest.raises(ValueError, match=culprit):
            kernels.activation_grad(name, grad_output, output, preactivation=output, out=out)
    np.testing.assert_array_equal(base, before)  # refused before anything was written
    # exact aliasing, even through another view object of the same memory, stays allowed
    buf = base[:20].reshape(5, 4).copy()
    expected = kernels.activation(name, buf)
    kernels.activation(name, buf, out=buf.reshape(20).reshape(5, 4))
    np.testing.assert_array_equal(buf, expected)

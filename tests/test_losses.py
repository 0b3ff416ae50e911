"""Losses and their gradients: vs the NumPy reference, finite differences, PyTorch, extreme logits."""

import math

import numpy as np
import pytest

from fastbp import kernels
from fastbp._kernels import reference

from conftest import eps

SHAPES = [(1, 1), (1, 5), (7, 3), (128, 10), (61, 257)]


def make_target(name, rng, shape, dtype, as_indices=False):
    m, n = shape
    if name == "softmax_cross_entropy":
        if as_indices:
            return rng.integers(0, n, size=m)
        p = rng.random(shape) + 0.01
        return (p / p.sum(axis=1, keepdims=True)).astype(dtype)
    if name == "binary_cross_entropy":
        return rng.random(shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def reference_loss(name, output, target):
    grad = np.empty(output.shape, np.float64)
    kernel = name + "_index" if target.ndim == 1 else name
    value = getattr(reference, kernel)(output.astype(np.float64), target if target.ndim == 1 else
                                       target.astype(np.float64), grad, 1)
    return value, grad


CASES = [("mse", False), ("softmax_cross_entropy", False), ("softmax_cross_entropy", True),
         ("binary_cross_entropy", False)]
CASE_IDS = ["mse", "softmax_ce_probs", "softmax_ce_index", "bce"]


@pytest.mark.parametrize("name,as_indices", CASES, ids=CASE_IDS)
def test_loss_matches_reference(backend, dtype, rng, name, as_indices):
    for shape in SHAPES:
        output = (4 * rng.standard_normal(shape)).astype(dtype)
        target = make_target(name, rng, shape, dtype, as_indices)
        value, grad = kernels.loss_and_grad(name, output, target)
        ref_value, ref_grad = reference_loss(name, output, target)
        assert isinstance(value, float) and grad.dtype == dtype and grad.shape == shape
        assert value == pytest.approx(ref_value, rel=100 * eps(dtype), abs=100 * eps(dtype))
        scale = np.abs(ref_grad).max()
        np.testing.assert_allclose(grad, ref_grad, rtol=100 * eps(dtype), atol=100 * eps(dtype) * scale)
        assert kernels.loss(name, output, target) == value


@pytest.mark.parametrize("name,as_indices", CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(backend, rng, name, as_indices):
    output = 2 * rng.standard_normal((4, 5))
    target = make_target(name, rng, output.shape, np.float64, as_indices)
    _, grad = kernels.loss_and_grad(name, output, target)
    h = 1e-6
    numeric = np.empty_like(output)
    for idx in np.ndindex(output.shape):
        up, down = output.copy(), output.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (kernels.loss(name, up, target) - kernels.loss(name, down, target)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_hand_worked_values(backend, dtype):
    assert kernels.loss("mse", np.array([[1.0, 2.0]], dtype), np.array([[0.0, 4.0]], dtype)) == pytest.approx(2.5)
    logits = np.zeros((2, 2), dtype)
    assert kernels.loss("softmax_cross_entropy", logits, np.array([0, 1])) == pytest.approx(math.log(2))
    assert kernels.loss("binary_cross_entropy", logits, np.ones((2, 2), dtype)) == pytest.approx(math.log(2))
    _, grad = kernels.loss_and_grad("softmax_cross_entropy", logits, np.array([0, 1]))
    np.testing.assert_allclose(grad, [[-0.25, 0.25], [0.25, -0.25]])


def test_indices_and_one_hot_agree(backend, dtype, rng):
    output = rng.standard_normal((33, 6)).astype(dtype)
    labels = rng.integers(0, 6, size=33)
    one_hot = np.eye(6, dtype=dtype)[labels]
    v1, g1 = kernels.loss_and_grad("softmax_cross_entropy", output, labels)
    v2, g2 = kernels.loss_and_grad("softmax_cross_entropy", output, one_hot)
    assert v1 == pytest.approx(v2, rel=10 * eps(dtype))
    np.testing.assert_allclose(g1, g2, rtol=10 * eps(dtype), atol=10 * eps(dtype))


@pytest.mark.parametrize("name,as_indices", CASES, ids=CASE_IDS)
def test_extreme_logits_stay_finite(backend, dtype, rng, name, as_indices):
    output = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [88.0, -88.0, 1e-30]], dtype)
    target = make_target(name, rng, output.shape, dtype, as_indices)
    value, grad = kernels.loss_and_grad(name, output, target)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_loss_bitwise_identical_for_1_and_2_threads(backend, dtype, rng, threads):
    output = rng.standard_normal((1001, 37)).astype(dtype)
    for name, as_indices in CASES:
        target = make_target(name, rng, output.shape, dtype, as_indices)
        threads(1)
        v1, g1 = kernels.loss_and_grad(name, output, target)
        threads(2)
        v2, g2 = kernels.loss_and_grad(name, output, target)
        assert v1 == v2, name
        np.testing.assert_array_equal(g1, g2, err_msg=name)


def test_torch_agrees_if_installed(backend, rng):
    torch = pytest.importorskip("torch")
    output = 3 * rng.standard_normal((8, 5))
    for name, as_indices in CASES:
        target = make_target(name, rng, output.shape, np.float64, as_indices)
        t = torch.tensor(output, requires_grad=True)
        tt = torch.tensor(target)
        fn = {"mse": torch.nn.functional.mse_loss,
              "softmax_cross_entropy": torch.nn.functional.cross_entropy,
              "binary_cross_entropy": torch.nn.functional.binary_cross_entropy_with_logits}[name]
        value = fn(t, tt)
        value.backward()
        ours, grad = kernels.loss_and_grad(name, output, target)
        assert ours == pytest.approx(value.item(), rel=1e-12)
        np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_one_output_softmax_cross_entropy_is_plus_zero(backend, dtype):
    logits = np.array([[3.0], [-2.0], [0.5]], dtype)
    for target in (np.zeros(3, np.int64), np.ones((3, 1), dtype)):
        value, grad = kernels.loss_and_grad("softmax_cross_entropy", logits, target)
        assert value == 0.0 and math.copysign(1.0, value) == 1.0  # was -0.0
        np.testing.assert_array_equal(grad, 0.0)
    value, grads = kernels.mlp_loss_and_grad(np.ones((3, 2), dtype), np.zeros(3, np.int64),
                                             "softmax_cross_entropy", [2, 1], ["identity"], np.ones(3, dtype))
    assert value == 0.0 and math.copysign(1.0, value) == 1.0
    np.testing.assert_array_equal(grads, 0.0)
    torch = pytest.importorskip("torch")
    expected = torch.nn.functional.cross_entropy(torch.tensor(logits), torch.zeros(3, dtype=torch.long)).item()
    assert math.copysign(1.0, expected) == 1.0 and expected == value

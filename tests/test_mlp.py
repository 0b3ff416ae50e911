"""The whole-network kernel mlp_loss_and_grad: equal to the layer-by-layer kernels bit for bit,
to the reference, to finite differences, across threads and backends; and its bad input."""

import numpy as np
import pytest

import fastbp
from fastbp import kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

# (widths, activations, loss, target kind): every loss kernel, gelu (keeps z),
# softmax inside, one layer, and widths crossing the GEMM blocks (k > KC, n > NR).
NETWORKS = [
    ((5, 7, 3), ("relu", "identity"), "softmax_cross_entropy", "labels"),
    ((64, 32, 10), ("tanh", "identity"), "softmax_cross_entropy", "rows"),
    ((3, 4, 5, 2), ("gelu", "softmax", "sigmoid"), "mse", "rows"),
    ((9, 1), ("elu",), "binary_cross_entropy", "rows"),
    ((600, 67, 33, 17), ("gelu", "leaky_relu", "identity"), "softmax_cross_entropy", "labels"),
]


def problem(rng, widths, activations, loss, kind, m, dtype):
    """x, target and params (Glorot-scaled) for one network of NETWORKS."""
    x = rng.standard_normal((m, widths[0])).astype(dtype)
    if kind == "labels":
        target = rng.integers(0, widths[-1], m)
    elif loss == "softmax_cross_entropy":
        target = rng.dirichlet(np.ones(widths[-1]), m).astype(dtype)
    else:
        target = rng.random((m, widths[-1])).astype(dtype)
    params = np.concatenate([
        np.concatenate([rng.standard_normal(n_in * n_out) / np.sqrt(n_in), 0.1 * rng.standard_normal(n_out)])
        for n_in, n_out in zip(widths[:-1], widths[1:])]).astype(dtype)
    return x, target, params


def layer_by_layer(x, target, loss, widths, activations, params):
    """The same step through the per-layer public kernels of the current backend."""
    views, offset, inputs = [], 0, [x]
    for n_in, n_out, act in zip(widths[:-1], widths[1:], activations):
        w = params[offset:offset + n_in * n_out].reshape(n_in, n_out)
        b = params[offset + n_in * n_out:offset + n_in * n_out + n_out]
        offset += n_in * n_out + n_out
        z = np.empty((inputs[-1].shape[0], n_out), x.dtype)
        a = kernels.dense_forward(inputs[-1], w, b, act, preactivation_out=z)
        views.append((w, z, a))
        inputs.append(a)
    value, delta = kernels.loss_and_grad(loss, inputs[-1], target)
    grads, deltas = [], [None] * len(views)
    for l in range(len(views) - 1, -1, -1):
        w, z, a = views[l]
        dw, db, dx = kernels.dense_backward(inputs[l], w, a, delta, activations[l], preactivation=z,
                                            compute_dx=l > 0)
        grads[:0] = [dw.ravel(), db]
        deltas[l] = delta = dx
    return value, np.concatenate(grads), np.concatenate([a.ravel() for _, _, a in views])


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: "-".join(map(str, n[0])))
def test_mlp_equals_the_layer_by_layer_kernels_bitwise(backend, dtype, rng, network):
    for m in (1, 13, 130):
        x, target, params = problem(rng, *network, m, dtype)
        widths, activations, loss, _ = network
        value, grads = kernels.mlp_loss_and_grad(x, target, loss, widths, activations, params,
                                                 outputs_out=(outputs := np.full(m * sum(widths[1:]), np.nan, dtype)))
        expected_value, expected_grads, expected_outputs = layer_by_layer(x, target, loss, widths, activations, params)
        assert value == expected_value
        np.testing.assert_array_equal(grads, expected_grads)
        np.testing.assert_array_equal(outputs, expected_outputs)


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: "-".join(map(str, n[0])))
def test_mlp_matches_reference(backend, dtype, rng, network):
    widths, activations, loss, _ = network
    x, target, params = problem(rng, *network, 37, dtype)
    value, grads = kernels.mlp_loss_and_grad(x, target, loss, widths, activations, params)
    act_ids = np.array([R.ACTIVATION_ID[a] for a in activations], np.int64)
    _, (n_params, n_outputs, n_z) = reference.mlp_layout(widths, act_ids, 37)
    expected_grads, outputs, z, deltas = np.empty(n_params), np.empty(n_outputs), np.empty(n_z), np.empty(n_outputs)
    kernel = "softmax_cross_entropy_index" if target.ndim == 1 else loss
    expected = reference.mlp_loss_and_grad(
        x.astype(np.float64), target if target.ndim == 1 else target.astype(np.float64),
        R.LOSS_KERNEL_ID[kernel], np.array(widths, np.int64), act_ids, params.astype(np.float64),
        expected_grads, outputs, z, deltas, 1)
    k = max(widths)
    assert value == pytest.approx(expected, rel=k * 8 * eps(dtype), abs=k * 8 * eps(dtype))
    scale = np.abs(expected_grads).max()
    np.testing.assert_allclose(grads, expected_grads, rtol=k * 8 * eps(dtype), atol=k * 8 * eps(dtype) * scale)


@pytest.mark.parametrize("loss, kind", [("mse", "rows"), ("softmax_cross_entropy", "labels"),
                                        ("softmax_cross_entropy", "rows"), ("binary_cross_entropy", "rows")])
def test_mlp_gradients_match_finite_differences(backend, rng, loss, kind):
    widths, activations = (4, 5, 3, 3), ("gelu", "tanh", "identity")
    x, target, params = problem(rng, widths, activations, loss, kind, 6, np.float64)
    _, grads = kernels.mlp_loss_and_grad(x, target, loss, widths, activations, params)
    h = 1e-6
    numeric = np.empty_like(params)
    for i in range(params.size):
        saved = params[i]
        params[i] = saved + h
        up = kernels.mlp_loss_and_grad(x, target, loss, widths, activations, params)[0]
        params[i] = saved - h
        down = kernels.mlp_loss_and_grad(x, target, loss, widths, activations, params)[0]
        params[i] = saved
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(grads, numeric, rtol=1e-6, atol=1e-9)


def test_mlp_bitwise_identical_for_1_and_2_threads(backend, dtype, rng, threads):
    # large enough that the GEMMs, activations and loss all take their parallel paths
    network = ((300, 257, 130, 40), ("gelu", "relu", "identity"), "mse", "rows")
    x, target, params = problem(rng, *network, 257, dtype)
    results = []
    for n in (1, 2):
        threads(n)
        results.append(kernels.mlp_loss_and_grad(x, target, "mse", *network[:2], params))
    assert results[0][0] == results[1][0]
    np.testing.assert_array_equal(results[0][1], results[1][1])


def test_mlp_backends_agree(dtype, rng):
    network = NETWORKS[-1]
    x, target, params = problem(rng, *network, 70, dtype)
    results = {}
    for name in ("cython", "numba"):
        with fastbp.backend(name):
            results[name] = kernels.mlp_loss_and_grad(x, target, network[2], *network[:2], params)
    assert results["cython"][0] == pytest.approx(results["numba"][0], rel=1e3 * eps(dtype))
    np.testing.assert_allclose(results["cython"][1], results["numba"][1], rtol=1e3 * eps(dtype),
                               atol=1e3 * eps(dtype) * np.abs(results["numba"][1]).max())


def test_mlp_bad_input(backend, rng):
    widths, activations = (4, 5, 3), ("relu", "identity")
    x, target, params = problem(rng, widths, activations, "softmax_cross_entropy", "labels", 6, np.float64)
    good = dict(x=x, target=target, loss="softmax_cross_entropy", widths=widths, activations=activations,
                params=params)
    cases = [
        (dict(widths=(4, 0, 3)), ValueError, "widths"),
        (dict(widths=(4,), activations=()), ValueError, "widths"),
        (dict(activations=("relu",)), ValueError, "activations"),
        (dict(activations=("relu", "swish")), ValueError, "swish"),
        (dict(params=params[:-1]), ValueError, "params must have shape"),
        (dict(params=params.astype(np.float32)), TypeError, "dtype"),
        (dict(x=x[:, :3]), ValueError, "x must have shape"),
        (dict(target=target + 3), ValueError, r"\[0, 3\)"),
        (dict(target=target[:5]), ValueError, "labels"),
        (dict(loss="hinge"), ValueError, "hinge"),
        (dict(loss="mse"), ValueError, "target must have the shape"),
    ]
    for change, error, match in cases:
        with pytest.raises(error, match=match):
            kernels.mlp_loss_and_grad(**{**good, **change})
    grads = np.zeros_like(params)
    with pytest.raises(ValueError, match="grads_out must not overlap"):
        kernels.mlp_loss_and_grad(**good, grads_out=params)
    with pytest.raises(ValueError, match="outputs_out must have shape"):
        kernels.mlp_loss_and_grad(**good, grads_out=grads, outputs_out=np.empty(3))
    assert not grads.any()  # nothing was written before the error


def test_mlp_compiled_kernel_checks_sizes(backend, rng):
    """The backend kernel itself refuses inconsistent buffers (the public wrapper is not the only guard)."""
    module = fastbp._backend.backend_module()
    widths, acts = np.array([4, 5, 3], np.int64), np.array([R.RELU, R.IDENTITY], np.int64)
    x, labels = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    params, grads = np.zeros(43), np.zeros(43)
    outputs, deltas, z = np.zeros(48), np.zeros(48), np.zeros(0)
    args = [x, labels, R.SOFTMAX_CROSS_ENTROPY_INDEX, widths, acts, params, grads, outputs, z, deltas, 1]
    for index, bad, match in [(6, np.zeros(42), "grads"), (7, np.zeros(47), "outputs"),
                              (9, np.zeros(49), "deltas"), (8, np.zeros(30), "preactivations"),
                              (1, np.full(6, 3), r"\[0, 3\)"), (2, 9, "loss")]:
        with pytest.raises(ValueError, match=match):
            module.mlp_loss_and_grad(*args[:index], bad, *args[index + 1:])


def test_mlp_uint64_widths_beyond_int64_are_named(backend):
    widths = np.array([2, 2**64 - 1, 2], np.uint64)  # would wrap to -1 as int64
    with pytest.raises(ValueError, match=r"widths must be .* integers in \[1, 2\*\*63 - 1\], "
                                         r"got \[2, 18446744073709551615, 2\]"):
        kernels.mlp_loss_and_grad(np.ones((2, 2)), np.zeros((2, 2)), "mse", widths, ["identity"] * 2, np.zeros(12))

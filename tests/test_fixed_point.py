"""FixedPoint: relaxation and Almeida–Pineda adjoint vs the reference, finite differences,
BPTT unrolled to convergence, threads, non-convergence errors, the Network."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R


def contraction(rng, m, n, dtype, gain=0.5):
    x_proj = rng.standard_normal((m, n)).astype(dtype)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    grad = rng.standard_normal((m, n)).astype(dtype)
    return x_proj, (gain * q).astype(dtype), grad


# Lipschitz-1 (or less) activations: with ‖Wh‖₂ = 0.5 the relaxation contracts (step does not).
@pytest.mark.parametrize("act", [a for a in R.RECURRENT_ACTIVATIONS if a != "step"])
def test_kernels_match_reference(backend, rng, act):
    x_proj, wh, grad = contraction(rng, 5, 7, np.float64)
    a = R.ACTIVATION_ID[act]
    h_ref, delta_ref = np.empty_like(x_proj), np.empty_like(x_proj)
    it_ref, _ = reference.fixed_point_forward(x_proj, wh, a, 1e-10, 200, h_ref, np.empty_like(x_proj), 1)
    reference.fixed_point_adjoint(h_ref, wh, a, grad, 1e-10, 200, delta_ref, None, 1)
    h, it = kernels.fixed_point_forward(x_proj, wh, act, tol=1e-10, max_iter=200)
    delta, _ = kernels.fixed_point_adjoint(h, wh, grad, act, tol=1e-10, max_iter=200)
    assert it == it_ref
    np.testing.assert_allclose(h, h_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(delta, delta_ref, rtol=1e-12, atol=1e-12)


def test_float32(backend, rng):
    x_proj, wh, grad = contraction(rng, 6, 9, np.float32)
    h, _ = kernels.fixed_point_forward(x_proj, wh, "tanh", tol=1e-6)
    h64, _ = kernels.fixed_point_forward(x_proj.astype(np.float64), wh.astype(np.float64), "tanh", tol=1e-12)
    np.testing.assert_allclose(h, h64, atol=1e-5)
    np.testing.assert_allclose(h, np.tanh(x_proj + h @ wh), atol=2e-6)  # a fixed point


def test_adjoint_equals_bptt_unrolled_to_convergence(backend, rng):
    """The relaxation from h = 0 is an RNN fed x_proj at every step: BPTT through enough
    steps, with the loss on the last state only, converges to the Almeida–Pineda gradient."""
    x_proj, wh, grad = contraction(rng, 4, 6, np.float64)
    h, _ = kernels.fixed_point_forward(x_proj, wh, "tanh", tol=1e-14, max_iter=500)
    delta, _ = kernels.fixed_point_adjoint(h, wh, grad, "tanh", tol=1e-14, max_iter=500)
    n_steps = 80
    seq = np.repeat(x_proj[:, None], n_steps, axis=1)
    hs = kernels.rnn_forward(seq, wh, "tanh")
    grad_hs = np.zeros_like(hs)
    grad_hs[:, -1] = grad
    deltas, dwh_bptt = kernels.rnn_backward(hs, wh, grad_hs, "tanh")
    np.testing.assert_allclose(hs[:, -1], h, atol=1e-12)
    np.testing.assert_allclose(deltas.sum(axis=1), delta, rtol=1e-9, atol=1e-12)  # d loss / d x_proj
    np.testing.assert_allclose(dwh_bptt, h.T @ delta, rtol=1e-9, atol=1e-12)


def fixed_point_net(dtype, tol=1e-12, spectral_bound=0.8):
    return fb.Network([fb.Dense(3, 4, "tanh"), fb.FixedPoint(4, 6, tol=tol, max_iter=500,
                                                             spectral_bound=spectral_bound), fb.Dense(6, 2)],
                      loss="mse", dtype=dtype, seed=0)


def test_network_gradients_match_finite_differences(backend, rng):
    net = fixed_point_net(np.float64)  # tol 1e-12: the finite differences see the exact fixed point
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    errors = fb.gradcheck(net, X, y)
    assert {"layers.1.Wx", "layers.1.Wh", "layers.1.b"} <= set(errors)
    assert max(errors.values()) < 1e-5, errors  # also checks dx (layer 0 sits before the fixed point)


def test_float32_network_agrees_with_float64(backend, rng):
    net32, net64 = fixed_point_net(np.float32, tol=1e-6), fixed_point_net(np.float64)
    net64.params[...] = net32.params
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    for net in (net32, net64):
        net.forward(X)
        net.backward(y)
    np.testing.assert_allclose(net32.grads, net64.grads, rtol=1e-4, atol=1e-5)


def test_wh_starts_contracting(rng):
    net = fixed_point_net(np.float64)
    assert np.linalg.norm(net.layers[1].Wh, 2) == pytest.approx(0.5)


def test_results_do_not_depend_on_thread_count(backend, dtype, rng, threads):
    x_proj, wh, grad = contraction(rng, 150, 90, dtype)
    results = []
    for n in sorted({1, fb.get_num_threads(), 2 if fb.get_num_threads() >= 2 else 1}):
        threads(n)
        h, it = kernels.fixed_point_forward(x_proj, wh, "tanh", tol=1e-5)
        delta, it_adj = kernels.fixed_point_adjoint(h, wh, grad, "tanh", tol=1e-5)
        results.append((h, delta, it, it_adj))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0][0], other[0])
        np.testing.assert_array_equal(results[0][1], other[1])
        assert results[0][2:] == other[2:]


def test_non_convergence_is_an_error(backend, rng):
    net = fixed_point_net(np.float64, tol=1e-8, spectral_bound=None)  # the constraint off
    layer = net.layers[1]
    layer.Wh = -3.0 * np.eye(6)  # h = tanh(x - 3h): the fixed point repels, the iterates oscillate
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    with pytest.raises(fb.ConvergenceError, match=r"FixedPoint\(4, 6.*forward relaxation did not converge.*"
                                                  r"after 500 iterations"):
        net.forward(X)
    params = net.params.copy()
    with pytest.raises(fb.ConvergenceError):
        net.fit(X, y, verbose=0, epochs=1)
    np.testing.assert_array_equal(net.params, params)  # no update from a wrong gradient
    x_proj, wh, grad = contraction(rng, 3, 4, np.float64, gain=0.99)
    h, _ = kernels.fixed_point_forward(x_proj, wh, "identity", tol=1e-12, max_iter=10_000)
    with pytest.raises(fb.ConvergenceError, match=r"fixed_point_adjoint did not converge.*after 3 iterations"):
        kernels.fixed_point_adjoint(h, wh, grad, "identity", tol=1e-12, max_iter=3)


def test_save_load_round_trip(backend, tmp_path, rng):
    net = fixed_point_net(np.float32, tol=1e-6)
    net.save(tmp_path / "fp.npz")
    loaded = fb.load(tmp_path / "fp.npz")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in net.layers]
    X = rng.standard_normal((3, 3))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_bad_arguments():
    with pytest.raises(ValueError, match="tol must be a number > 0"):
        fb.FixedPoint(3, 4, tol=0)
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        fb.FixedPoint(3, 4, max_iter=0)
    with pytest.raises(ValueError, match="not available in a recurrent layer"):
        fb.FixedPoint(3, 4, "gelu")
    with pytest.raises(ValueError, match=r"wh must have shape \(4, 4\)"):
        kernels.fixed_point_forward(np.zeros((2, 4)), np.zeros((3, 3)))


def test_learns_xor(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float64)
    y = np.array([0, 1, 1, 0])
    net = fb.Network([fb.FixedPoint(2, 8, tol=1e-8, max_iter=300), fb.Dense(8, 2)],
                     loss="softmax_cross_entropy", dtype=np.float64, seed=0)
    net.fit(X, y, optimizer=fb.Adam(net, lr=0.01), epochs=200, batch_size=None, verbose=0)
    np.testing.assert_array_equal(net.predict_classes(X), y)


# ---------------------------------------------------------------- the spectral constraint
def test_constrained_gradient_matches_finite_differences(backend, rng):
    """Wh far outside the bound: the layer uses Wh·bound/σ(Wh), and dWh is the exact gradient through it."""
    net = fixed_point_net(np.float64)
    layer = net.layers[1]
    layer.Wh = 2.0 * rng.standard_normal((6, 6))
    assert np.linalg.norm(layer.Wh, 2) > 1.5
    np.testing.assert_allclose(np.linalg.norm(layer.effective_wh(), 2), 0.8, rtol=1e-12)
    X, y = rng.standard_normal((5, 3)), rng.standard_normal((5, 2))
    assert max(fb.gradcheck(net, X, y, eps=1e-5).values()) < 1e-6


def test_constraint_off_is_the_unconstrained_layer(rng):
    """spectral_bound=None uses Wh as it is; within the bound the constraint changes no bit."""
    a, b = fixed_point_net(np.float64), fixed_point_net(np.float64, spectral_bound=None)
    X = rng.standard_normal((5, 3))
    np.testing.assert_array_equal(a.predict(X), b.predict(X))  # Wh starts at spectral norm 0.5 < 0.8
    a.layers[1].Wh = b.layers[1].Wh = 0.3 * a.layers[1].Wh + 0.95 * np.eye(6)
    assert np.abs(a.predict(X) - b.predict(X)).max() > 1e-3


def test_default_layer_trains_200_epochs_with_adam(backend):
    """The issue's case: unconstrained, Adam walked Wh out of the contracting region (ConvergenceError)."""
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((64, 8)), rng.standard_normal((64, 4))
    net = fb.Network([fb.FixedPoint(8, 16), fb.Dense(16, 4)], dtype=np.float32, seed=0)
    history = net.fit(X, y, optimizer=fb.Adam(net, lr=1e-3), epochs=200, batch_size=16, verbose=0)
    assert len(history["loss"]) == 200 and history["loss"][-1] < history["loss"][0]
    assert np.linalg.norm(net.layers[0].effective_wh().astype(np.float64), 2) <= 0.8 * (1 + 1e-6)


def test_old_configs_load_unconstrained():
    layer = fb.layers.layer_from_config({"type": "FixedPoint", "n_in": 2, "n_hidden": 3, "activation": "tanh",
                                         "tol": 1e-6, "max_iter": 100, "init": "glorot_uniform"})
    assert layer.spectral_bound is None
    with pytest.raises(ValueError, match="spectral_bound"):
        fb.FixedPoint(2, 3, spectral_bound=1.5)

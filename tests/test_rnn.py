"""RNN: kernels vs the reference and an unrolled NumPy BPTT, finite differences,
truncation against its definition, threads, torch.nn.RNN, the Network, a learned task."""

import numpy as np
import pytest

import fastbp as fb
from fastbp import kernels
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

SHAPES = [(1, 1, 1), (5, 7, 6), (3, 2, 17)]  # (batch, time, hidden): 1x1, primes, a non-multiple of NR


def sequence(rng, shape, dtype, scale=1.0):
    m, t, n = shape
    x_proj = (scale * rng.standard_normal((m, t, n))).astype(dtype)
    wh = (rng.standard_normal((n, n)) / np.sqrt(n)).astype(dtype)
    grad = rng.standard_normal((m, t, n)).astype(dtype)
    return x_proj, wh, grad


def unrolled_bptt(x_proj, wh, act, grad_hs):
    """Naive BPTT in float64, one sample and one step at a time, from the definitions."""
    f = {"tanh": np.tanh, "sigmoid": lambda z: 1 / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0)}[act]
    df = {"tanh": lambda h: 1 - h * h, "sigmoid": lambda h: h * (1 - h), "relu": lambda h: (h > 0) * 1.0}[act]
    x_proj, wh, grad_hs = (v.astype(np.float64) for v in (x_proj, wh, grad_hs))
    m, n_steps, n = x_proj.shape
    hs = np.zeros((m, n_steps, n))
    delta = np.zeros_like(hs)
    dwh = np.zeros((n, n))
    for b in range(m):
        h = np.zeros(n)
        for t in range(n_steps):
            h = f(x_proj[b, t] + h @ wh)
            hs[b, t] = h
        carry = np.zeros(n)
        for t in reversed(range(n_steps)):
            delta[b, t] = (grad_hs[b, t] + carry) * df(hs[b, t])
            carry = wh @ delta[b, t]
            if t:
                dwh += np.outer(hs[b, t - 1], delta[b, t])
    return hs, delta, dwh


def tol(dtype, n_steps):
    return dict(rtol=200 * n_steps * eps(dtype), atol=200 * n_steps * eps(dtype))


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_kernels_match_unrolled_bptt(backend, dtype, rng, act):
    for shape in SHAPES:
        x_proj, wh, grad = sequence(rng, shape, dtype)
        hs = kernels.rnn_forward(x_proj, wh, act)
        delta, dwh = kernels.rnn_backward(hs, wh, grad, act)
        hs_ref, delta_ref, dwh_ref = unrolled_bptt(x_proj, wh, act, grad)
        np.testing.assert_allclose(hs, hs_ref, **tol(dtype, shape[1]))
        np.testing.assert_allclose(delta, delta_ref, **tol(dtype, shape[1]))
        np.testing.assert_allclose(dwh, dwh_ref, **tol(dtype, shape[0] * shape[1]))


@pytest.mark.parametrize("act", R.RECURRENT_ACTIVATIONS)
def test_kernels_match_reference_every_activation(backend, rng, act):
    shape = (4, 5, 9)
    x_proj, wh, grad = sequence(rng, shape, np.float64)
    a = R.ACTIVATION_ID[act]
    hs_ref, delta_ref, dwh_ref = np.empty_like(x_proj), np.empty_like(x_proj), np.empty_like(wh)
    reference.rnn_forward(x_proj, wh, a, hs_ref, 1)
    reference.rnn_backward(hs_ref, wh, a, grad, 3, delta_ref, dwh_ref, 1)
    hs = kernels.rnn_forward(x_proj, wh, act)
    delta, dwh = kernels.rnn_backward(hs, wh, grad, act, truncate=3)
    np.testing.assert_allclose(hs, hs_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(delta, delta_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dwh, dwh_ref, rtol=1e-12, atol=1e-12)


def test_in_place_forward_and_backward(backend, dtype, rng):
    x_proj, wh, grad = sequence(rng, (3, 4, 5), dtype)
    expected = kernels.rnn_forward(x_proj, wh)
    delta_expected, dwh_expected = kernels.rnn_backward(expected, wh, grad)
    buf = x_proj.copy()
    assert kernels.rnn_forward(buf, wh, out=buf) is buf
    np.testing.assert_array_equal(buf, expected)
    g = grad.copy()
    delta, dwh = kernels.rnn_backward(buf, wh, g, delta_out=g)
    assert np.shares_memory(delta, g)
    np.testing.assert_array_equal(delta, delta_expected)
    np.testing.assert_array_equal(dwh, dwh_expected)


def _loss_of(x_proj, wh, grad, act="tanh"):
    """L = Σ grad ⊙ hs: its gradients wrt x_proj and wh are delta and dwh."""
    return float(np.sum(grad * unrolled_bptt(x_proj, wh, act, grad)[0]))


def test_bptt_matches_finite_differences(backend, rng):
    x_proj, wh, grad = sequence(rng, (2, 5, 3), np.float64)
    delta, dwh = kernels.rnn_backward(kernels.rnn_forward(x_proj, wh), wh, grad)
    h = 1e-6
    for arr, analytic in ((x_proj, delta), (wh, dwh)):
        numerical = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = _loss_of(x_proj, wh, grad)
            arr[i] = saved - h
            down = _loss_of(x_proj, wh, grad)
            arr[i] = saved
            numerical[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8)


def _split_loss(x_late, wh_late, x_early, wh_early, grad, t0):
    """L = Σ grad ⊙ hs where the steps t < t0 use (x_early, wh_early) and the others (x_late, wh_late)."""
    m, n_steps, n = x_late.shape
    h = np.zeros((m, n))
    total = 0.0
    for t in range(n_steps):
        xp, w = (x_early, wh_early) if t < t0 else (x_late, wh_late)
        h = np.tanh(xp[:, t] + h @ w)
        total += float(np.sum(grad[:, t] * h))
    return total


@pytest.mark.parametrize("truncate", [1, 2, 4, 6, 50])
def test_truncated_bptt_is_its_definition(backend, rng, truncate):
    """Truncated BPTT = the exact gradient wrt the weights used by the last ``truncate`` steps only."""
    x_proj, wh, grad = sequence(rng, (2, 6, 3), np.float64)
    n_steps = x_proj.shape[1]
    t0 = max(n_steps - truncate, 0)
    delta, dwh = kernels.rnn_backward(kernels.rnn_forward(x_proj, wh), wh, grad, truncate=truncate)
    x_early, wh_early = x_proj.copy(), wh.copy()
    h = 1e-6
    for arr, analytic in ((x_proj, delta), (wh, dwh)):
        numerical = np.empty_like(arr)
        for i in np.ndindex(arr.shape):
            saved = arr[i]
            arr[i] = saved + h
            up = _split_loss(x_proj, wh, x_early, wh_early, grad, t0)
            arr[i] = saved - h
            down = _split_loss(x_proj, wh, x_early, wh_early, grad, t0)
            arr[i] = saved
            numerical[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(analytic, numerical, rtol=1e-6, atol=1e-8)
    assert not delta[:, :t0].any()


def test_results_do_not_depend_on_thread_count(backend, dtype, rng, threads):
    x_proj, wh, grad = sequence(rng, (70, 3, 70), dtype)  # large enough for every parallel path
    results = []
    for n in sorted({1, fb.get_num_threads(), 2 if fb.get_num_threads() >= 2 else 1}):
        threads(n)
        hs = kernels.rnn_forward(x_proj, wh, "tanh")
        results.append((hs,) + kernels.rnn_backward(hs, wh, grad, "tanh"))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_backends_agree(rng):
    x_proj, wh, grad = sequence(rng, (6, 5, 8), np.float32)
    out = {}
    for name in fb.available_backends():
        with fb.backend(name):
            hs = kernels.rnn_forward(x_proj, wh, "sigmoid")
            out[name] = (hs,) + kernels.rnn_backward(hs, wh, grad, "sigmoid", truncate=2)
    for a, b in zip(*out.values()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the layer in a Network
def seq_net(dtype, return_sequences, act="tanh", truncate=None, loss="mse", n_out=2):
    return fb.Network([fb.RNN(3, 5, act, return_sequences=return_sequences, truncate=truncate),
                       fb.Dense(5, n_out)], loss=loss, dtype=dtype, seed=0)


def test_thread_thresholds_are_the_blocking_table():
    """Both backends' recurrent row passes and fixed-point sweeps use blocking.py's thresholds (the
    Cython module receives its own at import through _configure; the Numba module imports them)."""
    from fastbp._kernels import blocking
    from fastbp._kernels.cython import _rnn
    from fastbp._kernels.numba import rnn as numba_rnn

    assert _rnn._thresholds() == (blocking.PARALLEL_MIN_ELEMENTS,)
    assert numba_rnn.RECURRENT_PARALLEL_MIN_ELEMENTS == blocking.RECURRENT_PARALLEL_MIN_ELEMENTS
    assert numba_rnn.FIXED_POINT_PARALLEL_MIN_FLOPS == blocking.FIXED_POINT_PARALLEL_MIN_FLOPS
    assert not hasattr(numba_rnn, "PARALLEL_MIN_ELEMENTS") and not hasattr(numba_rnn, "PARALLEL_MIN_FLOPS")
    with pytest.raises(ValueError, match="positive"):
        _rnn._configure(0)


@pytest.mark.parametrize("return_sequences", [False, True])
def test_network_gradients_match_finite_differences(backend, dtype, rng, return_sequences):
    net = seq_net(dtype, return_sequences)
    X = rng.standard_normal((4, 6, 3))
    y = rng.standard_normal((4, 6, 2) if return_sequences else (4, 2))
    errors = fb.gradcheck(net, X, y)
    assert set(errors) == {"layers.0.Wx", "layers.0.Wh", "layers.0.b", "layers.1.W", "layers.1.b"}
    assert max(errors.values()) < 1e-5, errors


def test_per_step_class_targets(backend, rng):
    net = seq_net(np.float64, True, loss="softmax_cross_entropy", n_out=3)
    X = rng.standard_normal((4, 5, 3))
    y = rng.integers(0, 3, (4, 5))
    assert max(fb.gradcheck(net, X, y).values()) < 1e-5
    assert net.predict(X).shape == (4, 5, 3) and net.predict_classes(X).shape == (4, 5)
    # the loss averages over batch and time: that of the flattened per-step outputs
    logits = net.forward(X).reshape(20, 3)
    assert net.evaluate(X, y) == pytest.approx(fb.kernels.loss("softmax_cross_entropy", logits, y.reshape(20)))


@pytest.mark.parametrize("act", ["tanh", "relu"])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_equals_torch_rnn(backend, act, return_sequences, rng):
    torch = pytest.importorskip("torch")
    net = seq_net(np.float64, return_sequences, act=act)
    rnn_layer, dense = net.layers
    X = rng.standard_normal((4, 6, 3))
    y = rng.standard_normal((4, 6, 2) if return_sequences else (4, 2))
    out = net.forward(X)
    loss = net.backward(y)

    rnn = torch.nn.RNN(3, 5, nonlinearity=act, batch_first=True).double()
    lin = torch.nn.Linear(5, 2).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(torch.from_numpy(rnn_layer.Wx.T.copy()))
        rnn.weight_hh_l0.copy_(torch.from_numpy(rnn_layer.Wh.T.copy()))
        rnn.bias_ih_l0.copy_(torch.from_numpy(rnn_layer.b.copy()))
        rnn.bias_hh_l0.zero_()
        lin.weight.copy_(torch.from_numpy(dense.W.T.copy()))
        lin.bias.copy_(torch.from_numpy(dense.b.copy()))
    states, _ = rnn(torch.from_numpy(X))
    t_out = lin(states if return_sequences else states[:, -1])
    t_loss = torch.nn.functional.mse_loss(t_out, torch.from_numpy(y))
    t_loss.backward()
    close = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(out, t_out.detach().numpy(), **close)
    assert loss == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(rnn_layer.dWx, rnn.weight_ih_l0.grad.numpy().T, **close)
    np.testing.assert_allclose(rnn_layer.dWh, rnn.weight_hh_l0.grad.numpy().T, **close)
    np.testing.assert_allclose(rnn_layer.db, rnn.bias_hh_l0.grad.numpy(), **close)


def test_truncate_in_the_layer(backend, rng):
    X = rng.standard_normal((3, 6, 3))
    y = rng.standard_normal((3, 2))
    full, cut = seq_net(np.float64, False), seq_net(np.float64, False, truncate=2)
    full.forward(X), cut.forward(X)
    full.backward(y), cut.backward(y)
    np.testing.assert_array_equal(full.layers[1].dW, cut.layers[1].dW)
    assert not np.allclose(full.layers[0].dWh, cut.layers[0].dWh)
    long = seq_net(np.float64, False, truncate=100)  # longer than the sequence: full BPTT
    long.forward(X), long.backward(y)
    np.testing.assert_array_equal(long.layers[0].dWh, full.layers[0].dWh)


def test_save_load_round_trip(backend, dtype, tmp_path, rng):
    net = seq_net(dtype, True, act="relu", truncate=3)
    path = tmp_path / "rnn.npz"
    net.save(path)
    loaded = fb.load(path)
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in net.layers]
    X = rng.standard_normal((2, 4, 3))
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_bad_input(backend):
    net = seq_net(np.float32, False)
    with pytest.raises(ValueError, match=r"must be 3-D of shape \(n_samples, n_steps, 3\).*got shape \(4, 3\)"):
        net.forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="empty.*at least one step"):
        net.forward(np.zeros((4, 0, 3)))
    with pytest.raises(ValueError, match="2 features per step but the network expects 3"):
        net.forward(np.zeros((4, 5, 2)))
    with pytest.raises(ValueError, match=r"must have shape \(4, 5\)"):
        seq_net(np.float32, True).fit(np.zeros((4, 5, 3)), np.zeros((4, 2)), verbose=0)
    with pytest.raises(ValueError, match="must be the first layer"):
        fb.Network([fb.Dense(3, 3), fb.RNN(3, 4)])
    with pytest.raises(ValueError, match="not available in a recurrent layer"):
        fb.RNN(3, 4, "softmax")
    with pytest.raises(ValueError, match="truncate must be >= 1"):
        fb.RNN(3, 4, truncate=0)
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"x_proj must be 3-D of shape \(batch, time, hidden\)"):
        kernels.rnn_forward(x, np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match=r"wh must have shape \(3, 3\)"):
        kernels.rnn_forward(x[None], np.zeros((4, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        kernels.rnn_forward(x[None], np.zeros((3, 3)))
    with pytest.raises(ValueError, match="cannot be used in a recurrent layer"):
        kernels.rnn_forward(x[None], np.zeros((3, 3), np.float32), "gelu")
    with pytest.raises(ValueError, match="truncate must be an integer >= 1"):
        kernels.rnn_backward(x[None], np.zeros((3, 3), np.float32), x[None], truncate=0)


# ---------------------------------------------------------------- learned end to end
def counting_task(n, n_steps, seed):
    """Binary sequences; the class is the number of ones (0..n_steps)."""
    X = np.random.default_rng(seed).integers(0, 2, (n, n_steps, 1)).astype(np.float32)
    return X, X.sum(axis=(1, 2)).astype(np.int64)


def test_learns_to_count_ones(backend):
    X, y = counting_task(1000, 8, 0)
    X_test, y_test = counting_task(300, 8, 1)
    net = fb.Network([fb.RNN(1, 16), fb.Dense(16, 9)], loss="softmax_cross_entropy", dtype=np.float32, seed=0)
    net.fit(X, y, optimizer=fb.Adam(net, lr=1e-2), epochs=30, batch_size=32, verbose=0)
    assert np.mean(net.predict_classes(X_test) == y_test) >= 0.95


def test_learns_next_value_of_a_noisy_sine(backend):
    """Per-step regression; the 'repeat the last value' baseline has MSE ~0.047 here."""
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 2 * np.pi, (200, 1))
    clean = np.sin(phase + 0.3 * np.arange(21))
    noisy = clean + 0.05 * rng.standard_normal(clean.shape)
    X, y = noisy[:, :-1, None], clean[:, 1:, None]
    net = fb.Network([fb.RNN(1, 16, return_sequences=True), fb.Dense(16, 1)], loss="mse", dtype=np.float64, seed=0)
    net.fit(X, y, optimizer=fb.Adam(net, lr=1e-2), epochs=30, batch_size=20, verbose=0)
    assert net.evaluate(X, y) < 0.02


def test_cli_sequence_task(backend, threads, tmp_path, capsys):  # threads: restores the count
    from fastbp.cli import main

    out = tmp_path / "seq.npz"
    assert main(["--task", "sequence", "--steps", "6", "--epochs", "8", "--backend", backend, "--threads", "1",
                 "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    accuracy = float(printed.split("test accuracy: ")[1].split("%")[0])
    assert accuracy >= 95.0, printed
    assert "samples/s" in printed and fb.load(out).layers[0].get_config()["type"] == "RNN"

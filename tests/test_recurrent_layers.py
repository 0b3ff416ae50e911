"""Recurrent layers in a Network: LSTM, GRU and RNN, stacked and bidirectional, against
torch.nn.LSTM/GRU/RNN; finite differences; every sequence length, loss and
return_sequences setting; save/load; threads; bad input."""

import numpy as np
import pytest

import fastbp as fb
from fastbp._backend import BACKENDS
from fastbp.gradcheck import gradcheck

KINDS = {"LSTM": fb.LSTM, "GRU": fb.GRU, "RNN": fb.RNN}


# ---------------------------------------------------------------- torch mapping
def _to_torch(layer, module, k):
    """Copy fastbp layer ``layer``'s parameters into layer ``k`` of torch ``module`` (the README's mapping)."""
    import torch

    n = layer.n_hidden
    for suffix in ("", "_reverse")[:layer.n_directions]:
        name = f"l{k}{suffix}"
        wx, wh, b = layer.param("Wx" + suffix), layer.param("Wh" + suffix), layer.param("b" + suffix)
        bias_hh = np.zeros_like(b)
        if isinstance(layer, fb.GRU):
            bias_hh[2 * n:] = layer.param("b_hn" + suffix)
        getattr(module, "weight_ih_" + name).data = torch.from_numpy(wx.T.copy())
        getattr(module, "weight_hh_" + name).data = torch.from_numpy(wh.T.copy())
        getattr(module, "bias_ih_" + name).data = torch.from_numpy(b.copy())
        getattr(module, "bias_hh_" + name).data = torch.from_numpy(bias_hh)


def _torch_grads(layer, module, k):
    """fastbp-shaped gradients of layer k of ``module``, by the same mapping."""
    n = layer.n_hidden
    grads = {}
    for suffix in ("", "_reverse")[:layer.n_directions]:
        name = f"l{k}{suffix}"
        grads["Wx" + suffix] = getattr(module, "weight_ih_" + name).grad.numpy().T
        grads["Wh" + suffix] = getattr(module, "weight_hh_" + name).grad.numpy().T
        grads["b" + suffix] = getattr(module, "bias_ih_" + name).grad.numpy()
        if isinstance(layer, fb.GRU):
            grads["b_hn" + suffix] = getattr(module, "bias_hh_" + name).grad.numpy()[2 * n:]
    return grads


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_stack_matches_torch(backend, kind, bidirectional, return_sequences):
    """Two stacked layers + Dense == torch's num_layers=2 module + Linear: outputs and every gradient."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    m, n_steps, n_in, n = 3, 5, 4, 6
    d = 2 if bidirectional else 1
    layers = [KINDS[kind](n_in, n, return_sequences=True, bidirectional=bidirectional),
              KINDS[kind](d * n, n, return_sequences=return_sequences, bidirectional=bidirectional),
              fb.Dense(d * n, 2)]
    net = fb.Network(layers, loss="mse", dtype=np.float64, seed=3)
    net.params[...] = rng.uniform(-0.5, 0.5, net.n_params)  # every bias non-zero
    X = rng.standard_normal((m, n_steps, n_in))
    y = rng.standard_normal((m, n_steps, 2) if return_sequences else (m, 2))
    out = net.forward(X)
    net.backward(y)

    module = getattr(torch.nn, kind)(n_in, n, num_layers=2, bidirectional=bidirectional, batch_first=True,
                                     dtype=torch.float64)
    for k in range(2):
        _to_torch(layers[k], module, k)
    linear = torch.nn.Linear(d * n, 2, dtype=torch.float64)
    linear.weight.data = torch.from_numpy(layers[2].W.T.copy())
    linear.bias.data = torch.from_numpy(layers[2].b.copy())
    seq, h_n = module(torch.from_numpy(X))
    if kind == "LSTM":
        h_n = h_n[0]
    if return_sequences:
        features = seq
    else:  # torch's h_n of the top layer's directions, and the same read off the sequence output
        features = torch.cat([h_n[-d + i] for i in range(d)], dim=1)
        ends = [seq[:, -1, :n]] + ([seq[:, 0, n:]] if bidirectional else [])
        torch.testing.assert_close(features, torch.cat(ends, dim=1), rtol=1e-12, atol=0)
    expected = linear(features)
    loss = torch.nn.functional.mse_loss(expected, torch.from_numpy(y))
    loss.backward()
    np.testing.assert_allclose(out, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    for k in range(2):
        for name, g in _torch_grads(layers[k], module, k).items():
            np.testing.assert_allclose(layers[k].grad(name), g, rtol=1e-10, atol=1e-12,
                                       err_msg=f"layer {k} d{name}")
    np.testing.assert_allclose(layers[2].dW, linear.weight.grad.numpy().T, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- finite differences, lengths, losses
LOSSES = {"mse": lambda rng, shape: rng.standard_normal(shape + (2,)),
          "softmax_cross_entropy": lambda rng, shape: rng.integers(0, 2, shape),
          "binary_cross_entropy": lambda rng, shape: rng.integers(0, 2, shape + (2,)).astype(float)}


@pytest.mark.parametrize("n_steps", [1, 2, 5])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("return_sequences", [False, True])
def test_every_length_loss_and_setting(backend, n_steps, loss, return_sequences):
    """LSTM (bidirectional) -> GRU -> Dense: finite differences for every length, loss and setting."""
    rng = np.random.default_rng(n_steps)
    net = fb.Network([fb.LSTM(2, 3, return_sequences=True, bidirectional=True),
                      fb.GRU(6, 3, return_sequences=return_sequences), fb.Dense(3, 2)],
                     loss=loss, dtype=np.float64, seed=0)
    X = rng.standard_normal((2, n_steps, 2))
    y = LOSSES[loss](rng, (2, n_steps) if return_sequences else (2,))
    out = net.forward(X)
    assert out.shape == ((2, n_steps, 2) if return_sequences else (2, 2))
    assert max(gradcheck(net, X, y, eps=1e-4, atol=1e-6, max_checks=12).values()) < 1e-5


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rnn_length_one_mse_sequence_output(backend, kind):
    """The issue's bug: length 1, return_sequences=True, MSE failed in backward on Cython."""
    net = fb.Network([KINDS[kind](1, 3, return_sequences=True), fb.Dense(3, 1)], loss="mse", dtype=np.float64,
                     seed=0)
    X = np.ones((4, 1, 1))
    net.forward(X)
    assert np.isfinite(net.backward(np.zeros((4, 1, 1))))
    assert max(gradcheck(net, X, np.zeros((4, 1, 1)), eps=1e-4).values()) < 1e-5


def test_truncated_bidirectional_gradcheck_of_the_definition(backend):
    """truncate=k: the reverse direction backpropagates through its own last k steps (the sequence's first k)."""
    rng = np.random.default_rng(0)
    net = fb.Network([fb.GRU(2, 3, truncate=2, bidirectional=True), fb.Dense(6, 1)], dtype=np.float64, seed=0)
    full = fb.Network([fb.GRU(2, 3, bidirectional=True), fb.Dense(6, 1)], dtype=np.float64, seed=0)
    X, y = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 1))
    net.forward(X), net.backward(y), full.forward(X), full.backward(y)
    np.testing.assert_allclose(net.grads, full.grads, rtol=1e-12)  # 2 steps: truncation at 2 is full BPTT


# ---------------------------------------------------------------- save/load, threads, backends
def _stack(dtype=np.float64):
    return fb.Network([fb.LSTM(3, 4, return_sequences=True, bidirectional=True), fb.RNN(8, 4, return_sequences=True),
                       fb.GRU(4, 5, truncate=3), fb.Dense(5, 2)], loss="softmax_cross_entropy", dtype=dtype, seed=0)


def test_save_load_round_trip(tmp_path):
    net = _stack()
    X = np.random.default_rng(0).standard_normal((3, 6, 3))
    net.save(tmp_path / "net.npz")
    loaded = fb.load(tmp_path / "net.npz")
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in net.layers]
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threads_bitwise_and_backends_agree(dtype, threads):
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((9, 7, 3)), rng.integers(0, 2, 9)
    results = {}
    for name in BACKENDS:
        for n_threads in (1, 2):
            threads(n_threads)
            with fb.backend(name):
                net = _stack(dtype)
                net.forward(X)
                net.backward(y)
                results[name, n_threads] = net.grads.copy()
        np.testing.assert_array_equal(results[name, 1], results[name, 2])
    first, *others = results.values()
    for other in others:
        np.testing.assert_allclose(other, first, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-6)


def test_trains():
    """A stack learns a per-step target: the loss falls."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 6, 2))
    y = np.cumsum(X[..., :1], axis=1) / 3
    net = fb.Network([fb.GRU(2, 8, return_sequences=True), fb.LSTM(8, 8, return_sequences=True),
                      fb.Dense(8, 1)], dtype=np.float64, seed=0)
    history = net.fit(X, y, optimizer=fb.Adam(net, lr=1e-2), epochs=30, batch_size=16, verbose=0)
    assert history["loss"][-1] < 0.2 * history["loss"][0]


# ---------------------------------------------------------------- bad input, chain rules
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_chain_rules(kind):
    cls = KINDS[kind]
    fb.Network([cls(2, 3, return_sequences=True), cls(3, 4, return_sequences=True), cls(4, 2)])  # any depth
    with pytest.raises(ValueError, match="time axis is lost"):
        fb.Network([cls(2, 3), cls(3, 2)])
    with pytest.raises(ValueError, match="time axis is lost"):
        fb.Network([cls(2, 3), fb.Dense(3, 3), cls(3, 2)])
    with pytest.raises(ValueError, match="time axis is lost"):
        fb.Network([fb.Dense(2, 3), cls(3, 2)])
    with pytest.raises(ValueError, match="do not chain"):
        fb.Network([cls(2, 3, bidirectional=True, return_sequences=True), cls(3, 2)])
    net = fb.Network([cls(2, 3, return_sequences=True), fb.Dense(3, 3), cls(3, 2)])  # Dense per step between
    assert net.forward(np.ones((2, 4, 2))).shape == (2, 2)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bad_input_changes_nothing(kind):
    net = fb.Network([KINDS[kind](2, 3, return_sequences=True), fb.Dense(3, 1)], seed=0)
    before = net.params.copy()
    for X, match in ((np.ones((4, 2)), "3-D"), (np.ones((4, 0, 2)), "empty"), (np.ones((0, 3, 2)), "empty"),
                     (np.ones((4, 3, 5)), "features")):
        with pytest.raises(ValueError, match=match):
            net.fit(X, np.ones((X.shape[0], 3, 1)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        net.fit(np.ones((4, 3, 2)), np.ones((4, 2, 1)), epochs=1, verbose=0)
    with pytest.raises((TypeError, ValueError)):
        KINDS[kind](2, 0)
    np.testing.assert_array_equal(net.params, before)


# ---------------------------------------------------------------- ONNX
@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_onnx_export_matches_predict(kind, bidirectional):
    """float32 only: onnxruntime's LSTM and GRU do not run in float64 (the float64 model is valid ONNX)."""
    ort = pytest.importorskip("onnxruntime")
    dtype = np.float32
    d = 2 if bidirectional else 1
    net = fb.Network([KINDS[kind](3, 4, return_sequences=True, bidirectional=bidirectional),
                      KINDS[kind](4 * d, 5, bidirectional=bidirectional), fb.Dense(5 * d, 2)],
                     loss="softmax_cross_entropy", dtype=dtype, seed=1)
    net.params[...] = np.random.default_rng(0).uniform(-0.5, 0.5, net.n_params)
    X = np.random.default_rng(1).standard_normal((3, 6, 3)).astype(dtype)
    session = ort.InferenceSession(net.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"X": X})[0], net.predict(X), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_truncation_is_torch_with_the_early_states_detached(backend, kind):
    """truncate=k: torch run over the first T-k steps without gradient, then k steps from that state."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    m, n_steps, n_in, n, k = 3, 6, 2, 4, 2
    net = fb.Network([KINDS[kind](n_in, n, truncate=k), fb.Dense(n, 1)], dtype=np.float64, seed=0)
    net.params[...] = rng.uniform(-0.5, 0.5, net.n_params)
    X, y = rng.standard_normal((m, n_steps, n_in)), rng.standard_normal((m, 1))
    net.forward(X)
    net.backward(y)
    layer = net.layers[0]
    module = getattr(torch.nn, kind)(n_in, n, batch_first=True, dtype=torch.float64)
    _to_torch(layer, module, 0)
    x = torch.from_numpy(X)
    with torch.no_grad():
        _, state = module(x[:, :n_steps - k])
    seq, _ = module(x[:, n_steps - k:], state)
    prediction = seq[:, -1] @ torch.from_numpy(net.layers[1].W) + torch.from_numpy(net.layers[1].b)
    torch.nn.functional.mse_loss(prediction, torch.from_numpy(y)).backward()
    for name, g in _torch_grads(layer, module, 0).items():
        np.testing.assert_allclose(layer.grad(name), g, rtol=1e-10, atol=1e-12, err_msg=f"d{name}")

"""Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool2D in a Network: equal to the validated kernels and to
torch, any position, both dtypes and backends, gradcheck, bitwise thread counts, save/load, copies,
ONNX export, and bad input refused before anything changes."""

import pickle

import numpy as np
import pytest

import fastbp as fb
from fastbp import kernels


def _images(n=6, h=7, w=5, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h, w, c)), rng.integers(0, 3, n)


def _cnn(dtype=np.float64, seed=0, act="tanh"):
    return fb.Network([fb.Conv2D(2, 3, 3, padding="same", activation=act),
                       fb.MaxPool2D(2),                                  # 7x5 -> 3x2
                       fb.Conv2D(3, 4, (2, 1), stride=(1, 2), padding=1, dilation=(1, 2), activation=act),
                       fb.AvgPool2D(2, stride=1),
                       fb.Flatten(), fb.Dense(4 * 3 * 1, 5, act), fb.Dense(5, 3)],
                      loss="softmax_cross_entropy", dtype=dtype, seed=seed)


def test_shapes_chain_through_the_image_layers():
    net = _cnn()
    assert net._output_shapes((6, 7, 5, 2)) == [(6, 7, 5, 3), (6, 3, 2, 3), (6, 4, 2, 4), (6, 3, 1, 4),
                                                 (6, 12), (6, 5), (6, 3)]


def test_conv_layer_is_the_validated_kernel(backend, dtype):
    X, _ = _images()
    X = X.astype(dtype)
    net = fb.Network([fb.Conv2D(2, 4, 3, stride=2, padding="same", dilation=1, activation="relu"),
                      fb.GlobalAvgPool2D(), fb.Dense(4, 3)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    conv = net.layers[0]
    expected = kernels.conv2d_forward(X, conv.W, conv.b, stride=2, padding="same", activation="relu")
    expected = kernels.global_avg_pool2d_forward(expected)
    expected = kernels.dense_forward(expected, net.layers[2].W, net.layers[2].b)
    np.testing.assert_array_equal(net.forward(X), expected)


def test_a_cnn_equals_torch(backend, dtype):
    torch = pytest.importorskip("torch")
    X, y = _images()
    X = X.astype(dtype)
    net = _cnn(dtype)
    loss = net.backward(y) if net.forward(X) is not None else None
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    t = lambda a: torch.tensor(np.ascontiguousarray(a), dtype=tdtype, requires_grad=True)  # noqa: E731
    c1, _, c2, _, _, d1, d2 = net.layers
    W1, b1, W2, b2 = t(c1.W.transpose(3, 2, 0, 1)), t(c1.b), t(c2.W.transpose(3, 2, 0, 1)), t(c2.b)
    V1, e1, V2, e2 = t(d1.W), t(d1.b), t(d2.W), t(d2.b)
    F = torch.nn.functional
    x = torch.tensor(X.transpose(0, 3, 1, 2).copy(), dtype=tdtype)
    h = torch.tanh(F.conv2d(x, W1, b1, padding="same"))
    h = F.max_pool2d(h, 2)
    h = torch.tanh(F.conv2d(F.pad(h, (1, 1, 1, 1)), W2, b2, stride=(1, 2), dilation=(1, 2)))
    h = F.avg_pool2d(h, 2, stride=1)
    h = h.permute(0, 2, 3, 1).flatten(1)
    out = torch.tanh(h @ V1 + e1) @ V2 + e2
    expected = F.cross_entropy(out, torch.tensor(y))
    expected.backward()
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    assert loss == pytest.approx(expected.item(), rel=tol["rtol"])
    np.testing.assert_allclose(c1.dW, W1.grad.numpy().transpose(2, 3, 1, 0), **tol)
    np.testing.assert_allclose(c2.dW, W2.grad.numpy().transpose(2, 3, 1, 0), **tol)
    np.testing.assert_allclose(c1.db, b1.grad.numpy(), **tol)
    np.testing.assert_allclose(d1.dW, V1.grad.numpy(), **tol)


def test_gradcheck_through_every_image_layer(backend):
    X, y = _images(4)
    assert max(fb.gradcheck(_cnn(), X, y).values()) < 1e-5  # max pooling: kinks near ties
    net = fb.Network([fb.AvgPool2D(2), fb.Conv2D(2, 3, 2, activation="tanh"), fb.GlobalAvgPool2D(), fb.Dense(3, 3)],
                     loss="softmax_cross_entropy", dtype=np.float64, seed=2)
    assert max(fb.gradcheck(net, X, y).values()) < 1e-6


def test_a_cnn_trains_with_the_same_bits_on_any_thread_count(backend, threads):
    X, y = _images(40, seed=3)
    results = []
    for n in (1, min(2, fb._backend._max_threads())):
        threads(n)
        net = _cnn(np.float32, act="relu")
        history = net.fit(X, y, optimizer=fb.SGD(net, lr=0.05, momentum=0.9), epochs=5, batch_size=8, verbose=0)
        results.append(net.params.copy())
    assert history["loss"][-1] < history["loss"][0]
    np.testing.assert_array_equal(results[0], results[1])


def test_a_cnn_saves_loads_and_copies(backend, tmp_path):
    X, y = _images()
    net = _cnn(np.float32)
    net.fit(X, y, epochs=2, verbose=0)
    loaded = fb.load(net.save(tmp_path / "cnn.npz"))
    assert [layer.get_config() for layer in loaded.layers] == [layer.get_config() for layer in net.layers]
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(clone.predict(X), net.predict(X))
    assert np.shares_memory(clone.layers[0].W, clone.params)


def test_a_cnn_exports_to_onnx(backend, dtype):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    X, _ = _images()
    X = X.astype(dtype)
    net = fb.Network([fb.Conv2D(2, 4, 3, padding="same", activation="relu"), fb.MaxPool2D(2),
                      fb.Conv2D(4, 3, 2, stride=2, padding=1, dilation=1, activation="tanh"), fb.AvgPool2D(1),
                      fb.Conv2D(3, 5, 1, activation="gelu"), fb.GlobalAvgPool2D(), fb.Dense(5, 3)],
                     loss="softmax_cross_entropy", dtype=dtype, seed=0)
    models = [net, fb.Network([fb.Conv2D(2, 3, 3, stride=2, padding="same"), fb.Flatten(), fb.Dense(36, 2)],
                              loss="mse", dtype=dtype, seed=0),
              fb.Network([fb.Conv2D(2, 3, (3, 2), dilation=(2, 3), padding="same"), fb.GlobalAvgPool2D(),
                          fb.Dense(3, 2)], loss="mse", dtype=dtype, seed=0)]
    for model in models:
        onnx_model = model.to_onnx()  # checked by onnx's full checker in both dtypes
        if dtype == np.float64:
            continue  # onnxruntime has no float64 Conv on the CPU
        session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"X": X})[0], model.predict(X), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="no ONNX form"):
        fb.Network([fb.Conv2D(2, 3, 3, stride=2, dilation=2, padding="same"), fb.Flatten(), fb.Dense(12, 2)],
                   loss="mse", dtype=dtype, seed=0).to_onnx()


@pytest.mark.parametrize("make,match", [
    (lambda: fb.Conv2D(2, 3, 3, stride=0), "Conv2D: stride must be positive"),
    (lambda: fb.Conv2D(2, 3, 3, dilation=0), "Conv2D: dilation must be positive"),
    (lambda: fb.Conv2D(2, 3, 0), "Conv2D: kernel_size must be positive"),
    (lambda: fb.Conv2D(0, 3, 3), "Conv2D: in_channels must be >= 1"),
    (lambda: fb.Conv2D(2, 3, 3, padding="full"), "Conv2D: padding must be"),
    (lambda: fb.MaxPool2D(0), "MaxPool2D: pool_size must be positive"),
    (lambda: fb.AvgPool2D(2, stride=0), "AvgPool2D: stride must be positive"),
])
def test_bad_layer_arguments(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_channels_that_do_not_chain_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"layer sizes do not chain: layer 1 MaxPool2D.* has 3 outputs but layer 2 "
                                         r"Conv2D\(4, "):
        fb.Network([fb.Conv2D(2, 3, 3), fb.MaxPool2D(2), fb.Conv2D(4, 2, 1), fb.GlobalAvgPool2D(), fb.Dense(2, 2)])


@pytest.mark.parametrize("X,match", [
    (np.zeros((4, 7, 5)), r"X must be 4-D .* got shape \(4, 7, 5\)"),
    (np.zeros((4, 7, 5, 3)), "X has 3 channels but the network expects 2"),
    (np.zeros((4, 2, 2, 2)), r"layer 0: Conv2D\(2, 3, kernel_size=3.* larger than the padded image 2x2"),
    (np.zeros((4, 3, 3, 2)), r"layer 1: MaxPool2D\(4.* larger than the padded image 1x1"),
])
def test_bad_images_are_refused_naming_the_layer_before_anything_changes(backend, X, match):
    net = fb.Network([fb.Conv2D(2, 3, 3), fb.MaxPool2D(4), fb.Flatten(), fb.Dense(3, 2)], loss="mse", seed=0)
    before = net.params.copy()
    with pytest.raises(ValueError, match=match):
        net.fit(X, np.zeros((4, 2)), epochs=1, verbose=0)
    with pytest.raises(ValueError, match=match):
        net.predict(X)
    np.testing.assert_array_equal(net.params, before)


def test_cnn_demo_trains_prints_and_saves_a_cnn(capsys, tmp_path, threads):
    """``python -m fastbp --task cnn``, one epoch (the 30-epoch run reaches 99.17%: see README)."""
    from fastbp import cli

    threads(1)
    out = tmp_path / "cnn.npz"
    assert cli.main(["--task", "cnn", "--epochs", "1", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy:" in printed and "(360 digits)" in printed and "samples/s" in printed
    accuracy = float(printed.split("test accuracy: ")[1].split("%")[0])
    assert accuracy > 50.0  # one epoch of a CNN is well above chance (10%)
    loaded = fb.load(out)
    assert isinstance(loaded.layers[0], fb.Conv2D) and loaded.n_inputs == 1


def test_bench_cnn_starts_every_system_from_the_same_network():
    """fastbp.bench cnn: fastbp and torch, from the same weights, compute the same loss and first-layer gradient."""
    torch = pytest.importorskip("torch")
    from fastbp.bench import cnn

    for name in cnn.NETWORKS:
        X, y = cnn.make_data(name)
        X, y = X[:8], y[:8]
        net = cnn.fastbp_network(name)
        net.forward(X)
        loss = net.backward(y)
        model = torch.nn.Sequential(*cnn.torch_network(name)).double()
        x = torch.tensor(X.transpose(0, 3, 1, 2).astype(np.float64))
        expected = torch.nn.functional.cross_entropy(model(x), torch.tensor(y))
        expected.backward()
        assert loss == pytest.approx(expected.item(), rel=1e-4)
        np.testing.assert_allclose(net.layers[0].dW, model[0].weight.grad.numpy().transpose(2, 3, 1, 0),
                                   rtol=1e-3, atol=1e-5)

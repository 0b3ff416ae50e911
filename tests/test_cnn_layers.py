"""Image layers in a Network: Flatten (and, with the convolution kernels, Conv2D and pooling):
any position, save/load, gradcheck, thread-count guarantee, ONNX export, bad input."""

import numpy as np
import pytest

import fastbp as fb


def _images(n=10, h=4, w=3, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, h, w, c)), rng.integers(0, 3, n)


def test_flatten_is_c_order_and_trains(backend, dtype):
    X, y = _images()
    net = fb.Network([fb.Flatten(), fb.Dense(24, 3)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    twin = fb.Network([fb.Dense(24, 3)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    twin.params[...] = net.params
    np.testing.assert_array_equal(net.forward(X), twin.forward(X.reshape(10, -1)))
    assert net.backward(y) == twin.backward(y)
    np.testing.assert_array_equal(net.grads, twin.grads)
    history = net.fit(X, y, epochs=20, batch_size=4, verbose=0)
    assert history["loss"][-1] < history["loss"][0]


def test_flatten_between_layers_gradchecks(backend):
    X, y = _images(6, 2, 2, 3)
    net = fb.Network([fb.Flatten(), fb.Dense(12, 5, "tanh"), fb.Flatten(), fb.Dense(5, 3)],
                     loss="softmax_cross_entropy", dtype=np.float64, seed=1)
    assert max(fb.gradcheck(net, X, y).values()) < 1e-6


def test_flatten_saves_and_loads(backend, tmp_path):
    X, _ = _images()
    net = fb.Network([fb.Flatten(), fb.Dense(24, 3)], loss="softmax_cross_entropy", seed=0)
    loaded = fb.load(net.save(tmp_path / "flat.npz"))
    assert isinstance(loaded.layers[0], fb.Flatten)
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))


def test_flatten_shape_mismatch_names_the_layer(backend):
    X, y = _images()
    net = fb.Network([fb.Flatten(), fb.Dense(20, 3)], loss="softmax_cross_entropy", seed=0)
    before = net.params.copy()
    with pytest.raises(ValueError, match=r"layer 1: Dense\(24, 3|layer 1: Dense\(20, 3.* got \(10, 24\)"):
        net.fit(X, y, epochs=1, verbose=0)
    np.testing.assert_array_equal(net.params, before)
    with pytest.raises(ValueError, match="X must be at least 2-D"):
        net.predict(np.zeros(5))


def test_flatten_first_cannot_fix_the_onnx_input_rank(backend):
    pytest.importorskip("onnx")
    net = fb.Network([fb.Flatten(), fb.Dense(24, 3)], loss="softmax_cross_entropy", seed=0)
    with pytest.raises(TypeError, match="takes input of any rank"):
        net.to_onnx()


def test_flatten_exports_to_onnx(backend):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 5)).astype(np.float32)
    net = fb.Network([fb.Dense(5, 4, "tanh"), fb.Flatten(), fb.Dense(4, 3)], loss="softmax_cross_entropy", seed=0)
    session = ort.InferenceSession(net.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"X": X})[0], net.predict(X), rtol=1e-5, atol=1e-6)

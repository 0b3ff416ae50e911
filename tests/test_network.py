"""Network: backprop vs finite differences and the reference, the classic tasks,
digits, update modes, reproducibility, threads, zero allocations per step."""

import tracemalloc
import types

import numpy as np
import pytest

import fastbp as fb
from fastbp import _training
from fastbp._kernels import reference
from fastbp._kernels import registry as R

from conftest import eps

LOSSES = R.LOSSES


def targets(loss, rng, n_samples, n_outputs, as_indices=True):
    if loss == "softmax_cross_entropy":
        if as_indices:
            return rng.integers(0, n_outputs, size=n_samples)
        p = rng.random((n_samples, n_outputs)) + 0.1
        return p / p.sum(axis=1, keepdims=True)
    if loss == "binary_cross_entropy":
        return rng.random((n_samples, n_outputs))
    return rng.standard_normal((n_samples, n_outputs))


def small_net(act, loss, dtype=np.float64, seed=0):
    # The output activation is tested with mse; the cross-entropies take logits.
    out_act = act if loss == "mse" else None
    return fb.Network([fb.Dense(4, 5, act), fb.Dense(5, 3, out_act)], loss=loss, dtype=dtype, seed=seed)


def randomize_biases(net, rng):
    for layer in net.layers:  # non-zero biases exercise db and move z off the kinks at 0
        layer.b[...] = 0.3 * rng.standard_normal(layer.b.shape)


# ------------------------------------------------------------ gradients
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", R.ACTIVATIONS)
def test_gradcheck_every_activation_and_loss(backend, act, loss):
    rng = np.random.default_rng(7)
    net = small_net(act, loss)
    randomize_biases(net, rng)
    X = rng.standard_normal((6, 4))
    errors = fb.gradcheck(net, X, targets(loss, rng, 6, 3))
    assert set(errors) == {"layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"}
    worst = max(errors.values())
    assert worst < 1e-5, errors


def test_gradcheck_of_a_float32_network_runs_in_float64(backend):
    rng = np.random.default_rng(3)
    net = small_net("tanh", "softmax_cross_entropy", dtype=np.float32)
    randomize_biases(net, rng)
    X, y = rng.standard_normal((6, 4)), rng.integers(0, 3, 6)
    before = net.params.copy()
    errors = fb.gradcheck(net, X, y)
    assert max(errors.values()) < 1e-5, errors  # float32 differences would give errors near 1
    np.testing.assert_array_equal(net.params, before)


def reference_backprop(net, X, y, loss):
    """Plain float64 backprop with the NumPy reference kernels: (loss, flat grads)."""
    activations, preacts, x = [], [], X
    for layer in net.layers:
        z = np.empty((x.shape[0], layer.n_out))
        a = np.empty_like(z)
        reference.dense_forward(x, layer.W.astype(np.float64), layer.b.astype(np.float64),
                                R.ACTIVATION_ID[layer.activation], z, a, 1)
        activations.append(a)
        preacts.append(z)
        x = a
    delta = np.empty_like(x)
    kernel = loss + "_index" if y.ndim == 1 else loss
    value = getattr(reference, kernel)(x, y, delta, 1)
    grads = []
    for i in range(len(net.layers) - 1, -1, -1):
        layer = net.layers[i]
        x_in = activations[i - 1] if i else X
        dw, db = np.empty((layer.n_in, layer.n_out)), np.empty(layer.n_out)
        dx = np.empty_like(x_in)
        reference.dense_backward(x_in, layer.W.astype(np.float64), preacts[i], activations[i], delta,
                                 R.ACTIVATION_ID[layer.activation], delta, dw, db, dx, True, False, 1)
        grads = [dw.ravel(), db] + grads
        delta = dx
    return value, np.concatenate(grads)


@pytest.mark.parametrize("loss", LOSSES)
def test_backward_matches_reference(backend, dtype, loss):
    rng = np.random.default_rng(3)
    net = fb.Network([fb.Dense(7, 13, "tanh"), fb.Dense(13, 11, "gelu"), fb.Dense(11, 3)],
                     loss=loss, dtype=dtype, seed=1)
    randomize_biases(net, rng)
    X = rng.standard_normal((9, 7))
    y = targets(loss, rng, 9, 3)
    out = net.forward(X)
    value = net.backward(y)
    ref_value, ref_grads = reference_backprop(net, X, y, loss)
    tol = 200 * eps(dtype)
    assert out.dtype == dtype and out.shape == (9, 3)
    assert value == pytest.approx(ref_value, rel=tol, abs=tol)
    np.testing.assert_allclose(net.grads, ref_grads, rtol=tol, atol=tol * np.abs(ref_grads).max())
    # every layer's dW/db are views of the flat gradient vector
    assert np.shares_memory(net.layers[1].dW, net.grads)


def test_probability_rows_and_indices_agree(backend):
    rng = np.random.default_rng(0)
    net = small_net("relu", "softmax_cross_entropy")
    X, labels = rng.standard_normal((8, 4)), rng.integers(0, 3, 8)
    net.forward(X)
    loss_idx, grads_idx = net.backward(labels), net.grads.copy()
    loss_rows = net.backward(np.eye(3)[labels])
    assert loss_rows == pytest.approx(loss_idx, rel=1e-12)
    np.testing.assert_allclose(net.grads, grads_idx, rtol=1e-12, atol=1e-15)
    net.forward(X)  # float labels with integral values are class indices too
    assert net.backward(labels.astype(np.float64)) == pytest.approx(loss_idx, rel=1e-12)


def test_predict_applies_the_loss_link(backend):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((5, 4))
    for loss in LOSSES:
        net = small_net("tanh", loss)
        raw = net.forward(X)
        proba = net.predict(X)
        if loss == "softmax_cross_entropy":
            expected = np.exp(raw) / np.exp(raw).sum(axis=1, keepdims=True)
        elif loss == "binary_cross_entropy":
            expected = 1 / (1 + np.exp(-raw))
        else:
            expected = raw
        np.testing.assert_allclose(proba, expected, rtol=1e-12)


def test_writing_weights_in_place_takes_effect(backend):
    net = small_net("identity", "mse")
    X = np.ones((2, 4))
    net.layers[0].W[...] = 0
    net.layers[0].b[...] = 1
    net.layers[1].W[...] = 0.5
    net.layers[1].b = np.array([0.0, 1.0, 2.0])  # assignment copies into the view
    np.testing.assert_array_equal(net.forward(X), [[2.5, 3.5, 4.5]] * 2)
    assert np.shares_memory(net.layers[1].b, net.params)


def test_inputs_in_any_layout_and_dtype_are_converted(backend, dtype):
    rng = np.random.default_rng(0)
    net = small_net("relu", "mse", dtype=dtype)
    X = rng.standard_normal((6, 8))
    expected = net.forward(np.ascontiguousarray(X[:, ::2]).astype(dtype))
    for variant in (X[:, ::2], np.asfortranarray(X[:, ::2]), X[:, ::2].tolist()):
        got = net.forward(variant)
        assert got.dtype == dtype
        np.testing.assert_allclose(got, expected, rtol=10 * eps(dtype), atol=10 * eps(dtype))
    assert net.forward(np.arange(8).reshape(2, 4)).dtype == dtype  # integers


# ------------------------------------------------------------ learning
def test_xor(backend):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([[0], [1], [1], [0]], dtype=np.float64)
    net = fb.Network([fb.Dense(2, 4, "tanh"), fb.Dense(4, 1)], loss="binary_cross_entropy",
                     dtype=np.float64, seed=0)
    history = net.fit(X, y, optimizer=fb.Adam(net, lr=0.05), epochs=400, batch_size=None, verbose=0)
    assert history["loss"][-1] < 0.05
    np.testing.assert_array_equal(net.predict_classes(X), y[:, 0])  # one output: one label per sample


def test_encoder_8_3_8(backend):
    """Rumelhart, Hinton & Williams (1986): eight one-hot patterns through three hidden units."""
    X = np.eye(8)
    net = fb.Network([fb.Dense(8, 3, "sigmoid"), fb.Dense(3, 8)], loss="softmax_cross_entropy",
                     dtype=np.float64, seed=0)
    net.fit(X, np.arange(8), optimizer=fb.Adam(net, lr=0.05), epochs=1500, batch_size=None, verbose=0)
    np.testing.assert_array_equal(net.predict_classes(X), np.arange(8))


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = datasets.load_digits(return_X_y=True)
    return model_selection.train_test_split(X / 16.0, y, test_size=0.2, stratify=y, random_state=0)


def test_digits(backend, digits):
    X_train, X_test, y_train, y_test = digits
    net = fb.Network([fb.Dense(64, 64, "relu"), fb.Dense(64, 10)], loss="softmax_cross_entropy",
                     dtype=np.float32, seed=0)
    history = net.fit(X_train, y_train, optimizer=fb.Adam(net, lr=3e-3), epochs=15, batch_size=32,
                      validation_data=(X_test, y_test), verbose=0)
    accuracy = np.mean(net.predict_classes(X_test) == y_test)
    assert accuracy >= 0.96
    assert history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert len(history["loss"]) == len(history["val_loss"]) == 15
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.parametrize("batch_size", [None, 1, 7, 64])
def test_update_modes_reduce_the_loss(backend, batch_size):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 3))
    y = X @ np.array([[1.0], [-2.0], [0.5]]) + 0.1
    net = fb.Network([fb.Dense(3, 1)], loss="mse", dtype=np.float64, seed=0)
    before = net.evaluate(X, y)
    steps = {None: 1, 1: 40, 7: 6, 64: 1}[batch_size]
    sgd = fb.SGD(net, lr=0.01 if batch_size == 1 else 0.1)
    history = net.fit(X, y, optimizer=sgd, epochs=30, batch_size=batch_size, verbose=0)
    assert net.evaluate(X, y) < 0.05 * before
    assert len(history["loss"]) == 30
    assert steps  # documents the number of steps per epoch each mode makes


def gelu_net(dtype=np.float32):
    return fb.Network([fb.Dense(4, 9, "gelu"), fb.Dense(9, 6, "relu"), fb.Dense(6, 3)],
                      loss="softmax_cross_entropy", dtype=dtype, seed=0)


@pytest.mark.parametrize("make", [lambda: small_net("tanh", "softmax_cross_entropy"), gelu_net],
                         ids=["tanh-float64", "gelu-relu-float32"])
def test_full_batch_is_plain_gradient_descent(backend, make):
    """batch_size=None: one step per epoch on the full gradient, equal to manual forward/backward/step
    (fit's whole-network kernel and the layer-by-layer passes give the same bits)."""
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((12, 4)), rng.integers(0, 3, 12)
    a, b = make(), make()
    a.fit(X, y, optimizer=fb.SGD(a, lr=0.1), epochs=3, batch_size=None, verbose=0)
    opt = fb.SGD(b, lr=0.1)
    for _ in range(3):
        b.forward(X)
        b.backward(y)
        opt.step()
    np.testing.assert_array_equal(a.params, b.params)


# ------------------------------------------------------------ reproducibility, threads, allocations
def train_digits_like(seed, n_threads=None):
    rng = np.random.default_rng(5)
    X, y = rng.random((150, 16)), rng.integers(0, 4, 150)
    net = fb.Network([fb.Dense(16, 24, "relu"), fb.Dense(24, 4)], loss="softmax_cross_entropy",
                     dtype=np.float32, seed=seed)
    net.fit(X, y, optimizer=fb.Adam(net, lr=1e-2), epochs=3, batch_size=16, verbose=0)
    return net.params.copy()


def test_seed_reproduces_the_run_bit_for_bit(backend):
    np.testing.assert_array_equal(train_digits_like(0), train_digits_like(0))
    assert not np.array_equal(train_digits_like(0), train_digits_like(1))


def test_same_weights_for_one_and_two_threads(backend, threads):
    threads(1)
    one = train_digits_like(0)
    threads(min(2, fb._backend._max_threads()))
    two = train_digits_like(0)
    np.testing.assert_array_equal(one, two)


def _kernels_without_allocations(monkeypatch, backend):
    """The backend's kernels, or no-op stand-ins when they are the (allocating) NumPy reference.

    The compiled kernels write into their outputs and allocate nothing, so with
    them the test covers the whole step; with the reference standing in for a
    backend, it covers the orchestration alone.
    """
    module = fb._backend.backend_module()
    if getattr(module.gemm, "__module__", None) != reference.__name__:
        return
    noop = types.SimpleNamespace(**{name: (lambda *args: None) for name in
                                    ("dense_forward", "dense_backward", "sgd_step", "rmsprop_step", "adam_step")})
    noop.softmax_cross_entropy_index = lambda *args: 0.5
    monkeypatch.setitem(fb._backend._modules, backend, noop)


def _traced_steps(step, sizes, warm_up):
    """(retained, peak) bytes that tracemalloc sees over 5 rounds of ``step(size)`` for each size,
    after ``warm_up`` untraced rounds (JIT dispatch, NumPy's small-block caches).

    CPython keeps up to 2000 freed tuples of each length (1 to 20) for reuse, and
    tracemalloc counts a kept tuple as allocated: a step whose calls free more
    argument tuples than they take (a Numba dispatcher call with 20 arguments,
    say) would look as if it allocated, up to ~400 kB, though nothing grows. So
    the free lists are filled before tracing.
    """
    for _ in range(warm_up):
        for size in sizes:
            step(size)
    held = [tuple(range(length)) for length in range(1, 21) for _ in range(2000)]
    del held
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for _ in range(5):
            for size in sizes:
                step(size)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return current - base, peak - base


def test_a_training_step_allocates_nothing(backend, dtype, monkeypatch):
    """After the first batch of each size, a step allocates no array.

    Every per-step buffer here is over 28 kB, and the step may only make
    transient Python objects (the compiled wrappers' memoryviews, JIT dispatch):
    its traced peak stays under 8 kB.
    """
    rng = np.random.default_rng(0)
    width = 128
    X, y = rng.random((256, width)).astype(dtype), rng.integers(0, width, 256)
    net = fb.Network([fb.Dense(width, width, "relu"), fb.Dense(width, width, "gelu"), fb.Dense(width, width)],
                     loss="softmax_cross_entropy", dtype=dtype, seed=0)
    optimizer = fb.Adam(net, lr=1e-3, clip_norm=1.0)
    net.fit(X, y, optimizer=optimizer, epochs=1, batch_size=100, verbose=0)  # makes the buffers
    _kernels_without_allocations(monkeypatch, backend)
    backend_module, n_threads = fb._backend.runtime()
    X, (y, loss_kernel) = net._check_X(X), net._check_y(y, 256)
    order = np.random.default_rng(1).permutation(256)
    sizes = (100, 56)  # a full batch and the last, smaller one
    smallest_buffer = 56 * width * dtype.itemsize

    gather_x, gather_y = net._gather  # fit's buffers of shuffled rows, as fit slices them
    np.take(X, order, axis=0, out=gather_x[:256], mode="clip")
    np.take(y, order, axis=0, out=gather_y[:256], mode="clip")

    def step(size):
        return _training.train_step(net, net._workspaces[(size, width)], gather_x[:size], gather_y[:size],
                                    loss_kernel, optimizer, backend_module, n_threads)

    retained, peak = _traced_steps(step, sizes, warm_up=20)
    assert retained < 1024
    assert peak < min(8192, smallest_buffer // 2), peak


def _traced_fit_steps(net, X, y, optimizer):
    """``_traced_steps`` of fit's training step on batches of 64 and 32 of X's first 96 samples,
    after one epoch of fit has made the buffers."""
    net.fit(X, y, optimizer=optimizer, epochs=1, batch_size=64, verbose=0)
    backend_module, n_threads = fb._backend.runtime()
    X, (y, loss_kernel) = net._check_X(X), net._check_y(y, 96)
    gather_x, gather_y = net._gather  # fit's buffers of rows, as fit slices them
    gather_x[:96], gather_y[:96] = X, y

    def step(size):
        return _training.train_step(net, net._workspace((size,) + X.shape[1:]), gather_x[:size], gather_y[:size],
                                    loss_kernel, optimizer, backend_module, n_threads)

    return _traced_steps(step, (64, 32), warm_up=10)


def test_a_convolutional_training_step_allocates_nothing(backend, dtype):
    """The same for a small CNN (conv, max-pool, average-pool, flatten, dense) with SGD and momentum.

    The compiled kernels keep their gather and packing workspaces per thread
    between calls, so after warm-up a step makes no array: every per-step buffer
    here is at least 8 kB, and the traced peak stays under 4 kB.
    """
    if getattr(fb._backend.backend_module().gemm, "__module__", None) == reference.__name__:
        pytest.skip("the NumPy reference allocates")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((96, 10, 9, 2)).astype(dtype), rng.integers(0, 64, 96)
    net = fb.Network([fb.Conv2D(2, 8, 3, padding="same", activation="relu"), fb.MaxPool2D(2),  # 10x9 -> 5x4
                      fb.Conv2D(8, 16, (3, 2), activation="tanh"), fb.AvgPool2D(2, stride=1),  # 3x3 -> 2x2
                      fb.Flatten(), fb.Dense(64, 64)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    retained, peak = _traced_fit_steps(net, X, y, fb.SGD(net, lr=1e-2, momentum=0.9))
    assert retained < 1024
    assert peak < 4096, peak


def test_a_recurrent_training_step_allocates_nothing(backend, dtype):
    """The same for stacked recurrent layers (bidirectional LSTM, truncated GRU, RNN) with Adam.

    Backpropagation through time reads w_hhᵀ, and the kernels keep its
    transposed copy, like their packing workspaces, per thread between calls:
    every per-step buffer here is at least 32 kB, and the traced peak (the
    layers' transient Python objects) stays under 8 kB. FixedPoint is left
    out: its spectral constraint takes an SVD of Wh on every step, which NumPy
    allocates.
    """
    if getattr(fb._backend.backend_module().gemm, "__module__", None) == reference.__name__:
        pytest.skip("the NumPy reference allocates")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((96, 8, 5)).astype(dtype), rng.integers(0, 16, 96)
    net = fb.Network([fb.LSTM(5, 32, return_sequences=True, bidirectional=True),
                      fb.GRU(64, 32, return_sequences=True, truncate=4), fb.RNN(32, 32),
                      fb.Dense(32, 16)], loss="softmax_cross_entropy", dtype=dtype, seed=0)
    retained, peak = _traced_fit_steps(net, X, y, fb.Adam(net, lr=1e-3))
    assert retained < 1024
    assert peak < 8192, peak


def test_fit_reuses_its_buffers_across_epochs(backend):
    rng = np.random.default_rng(0)
    X, y = rng.random((50, 4)), rng.integers(0, 3, 50)
    net = small_net("relu", "softmax_cross_entropy")
    net.fit(X, y, epochs=1, batch_size=16, verbose=0)
    buffers = {size: [id(a) for a in ws.activations] for size, ws in net._workspaces.items()}
    assert set(buffers) == {(16, 4), (2, 4)}
    net.fit(X, y, epochs=2, batch_size=16, verbose=0)
    assert {size: [id(a) for a in ws.activations] for size, ws in net._workspaces.items()} == buffers


def test_gathering_several_batches_at_once_changes_nothing(backend, monkeypatch):
    """fit gathers shuffled rows many batches per call; one batch per call gives the same bits."""
    rng = np.random.default_rng(3)
    X, y = rng.random((203, 6)).astype(np.float32), rng.integers(0, 3, 203)
    results = []
    for max_rows in (1, _training.GATHER_MAX_ROWS):
        monkeypatch.setattr(_training, "GATHER_MAX_ROWS", max_rows)
        net = fb.Network([fb.Dense(6, 5, "tanh"), fb.Dense(5, 3)], loss="softmax_cross_entropy",
                         dtype=np.float32, seed=4)
        assert _training.gather_rows(X, y, 10) == (10 if max_rows == 1 else 4090)
        history = net.fit(X, y, optimizer=fb.SGD(net, lr=0.1, momentum=0.9), epochs=3, batch_size=10, verbose=0)
        results.append((net.params.copy(), history["loss"]))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]
